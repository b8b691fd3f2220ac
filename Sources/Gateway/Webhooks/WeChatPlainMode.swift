import Foundation
import Hummingbird

/// Plain-mode WeChat callbacks: their body is not signed (only `token, timestamp, nonce` are).
extension Gateway {
    /// After the query's signature held: refuses plain mode for an app that can use safe mode when
    /// FANFLOW_WECHAT_REQUIRE_SAFE_MODE is set (403 `safe_mode_required`), and a second body under
    /// a `(timestamp, nonce)` already seen (403 `replayed`).
    func checkPlainMode(_ app: RegisteredApp, query: [String: String], body: [UInt8]) async throws(GatewayError) {
        if configuration.wechatRequireSafeMode, app.wechat != nil {
            throw GatewayError.forbidden("safe_mode_required",
                                         "this app has an EncodingAESKey: callbacks must use safe mode (encrypt_type=aes)")
        }
        guard let timestamp = query["timestamp"], let nonce = query["nonce"], timestamp.utf8.count <= 20, nonce.utf8.count <= 64 else {
            throw GatewayError.badRequest("malformed_query", "timestamp and nonce must be at most 20 and 64 characters")
        }
        let verdict: WeChatReplayGuard.Verdict
        do {
            verdict = try await replays.check(app: app.appID, timestamp: timestamp, nonce: nonce, body: body)
        } catch {
            // Like the dedupe store: with Redis down the callback is still taken (a platform's events
            // must not be lost to a cache outage), unchecked for replays, and counted.
            metrics.count(.replayCheckUnavailable)
            logger.warning("replay check unavailable; plain-mode callback accepted unchecked", metadata: ["app": "\(app.appID)", "error": "\(error)"])
            return
        }
        guard verdict != .replayed else {
            throw GatewayError.forbidden("replayed", "this timestamp and nonce came before with another body")
        }
    }
}
