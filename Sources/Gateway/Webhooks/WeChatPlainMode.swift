import Apps
import Foundation
import Hummingbird

/// Plain-mode WeChat callbacks: their body is not signed (only `token, timestamp, nonce` are).
extension Gateway {
    /// After the query's signature held: refuses plain mode for an app that can use safe mode when
    /// FANFLOW_WECHAT_REQUIRE_SAFE_MODE is set (403 `safe_mode_required`), and a second body under
    /// a signature already seen (403 `replayed`). The guard keys on the verified signature, not on
    /// `(timestamp, nonce)`: those are signed only as one joined string, so digits moved from one
    /// to the other give a new pair with the same signature.
    func checkPlainMode(_ app: RegisteredApp, signature: String, body: [UInt8]) async throws(GatewayError) {
        if configuration.wechatRequireSafeMode, app.wechat != nil {
            throw GatewayError.forbidden(.safeModeRequired,
                                         "this app has an EncodingAESKey: callbacks must use safe mode (encrypt_type=aes)")
        }
        try await refuseReplay(platform: "wechat", app: app.appID, signature: signature, body: body)
    }

    /// A body signed only through its query (WeChat plain mode, Weibo's pushes): a second body
    /// under a signature already seen is refused with 403 `replayed`.
    func refuseReplay(platform: String, app: String, signature: String, body: [UInt8]) async throws(GatewayError) {
        let verdict: WeChatReplayGuard.Verdict
        do {
            verdict = try await replays.check(platform: platform, app: app, signature: signature.lowercased(), body: body)
        } catch {
            // Like the dedupe store: with Redis down the callback is still taken (a platform's events
            // must not be lost to a cache outage), unchecked for replays, and counted.
            metrics.count(.replayCheckUnavailable)
            logger.warning("replay check unavailable; callback accepted unchecked",
                           metadata: ["platform": "\(platform)", "app": "\(app)", "error": "\(error)"])
            return
        }
        guard verdict != .replayed else {
            throw GatewayError.forbidden(.replayed, "this signature came before with another body")
        }
    }
}
