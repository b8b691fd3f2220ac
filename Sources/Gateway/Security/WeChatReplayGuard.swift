@preconcurrency import Crypto
import Platforms
import RedisClient

/// Plain-mode WeChat callbacks sign only `(token, timestamp, nonce)`, not the body: whoever saw
/// one request could send any body with its query for the freshness window. Each `(app,
/// signature)` is remembered in Redis with a hash of its body (`SET NX`, expiring when the
/// timestamp leaves the window): WeChat's own retry of the same request (same body) passes on to
/// the dedupe store, the same signature with another body is refused. The key is the signature,
/// not `(timestamp, nonce)`: WeChat signs the three sorted and joined, so `T=1765000000,
/// N=4242424242` and `T=1765000000424, N=2424242` carry one signature, and a guard keyed on the
/// pair would take the second as new.
struct WeChatReplayGuard: Sendable {
    let redis: RedisPool
    /// The freshness window in seconds; a timestamp is accepted from `window` before now to
    /// `window` after, so a pair must be remembered for twice the window.
    let window: Int

    enum Verdict: Equatable { case first, sameRequest, replayed }

    /// `signature`: the verified one, lowercase hex (40 characters), so its key is bounded.
    /// `platform`: whose signature it is (`wechat`, `weibo`: Weibo signs its pushes the same way).
    func check(platform: String = "wechat", app: String, signature: String, body: [UInt8]) async throws -> Verdict {
        let digest = Bytes.hex(SHA256.hash(data: body))
        let key = "fanflow:\(platform):signature:\(app):\(signature)"
        let set = try await redis.connection.command(["SET", key, digest, "NX", "EX", String(2 * window)])
        if case .status = set { return .first }
        let stored = try await redis.connection.command(["GET", key])
        // Expired between the two calls: this request is the first of its pair again.
        guard let previous = stored.string else { return .first }
        return previous == digest ? .sameRequest : .replayed
    }
}
