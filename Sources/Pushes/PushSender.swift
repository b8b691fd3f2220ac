import Foundation
import Platforms
import Synchronization

/// Sends one message and decides what its outcome means, by the platform's error codes.
///
/// WeChat:
/// - token invalid or expired (40001, 40014, 42001): a token other than the failed one from the
///   broker (one refresh however many workers ask), and one more try;
/// - quota (45009): `deferred` until the quota resets;
/// - member unsubscribed or refusing (43004, 43101) and other refusals of the message itself
///   (bad openid, template or data): refused, never retried;
/// - network errors, HTTP 5xx and "system busy" (-1): `retry`, with backoff, by the caller.
///
/// Alipay (no token: every request is signed with the app's key):
/// - 10000: sent;
/// - 20000 (service unavailable), HTTP 5xx, network errors: `retry`;
/// - 40004 whose `sub_code` says the user does not follow the service window: refused as
///   unsubscribed; one that names a sending limit: `deferred` to the next day;
/// - every other code (bad arguments, permissions, an answer whose signature fails): refused.
public struct PushSender: Sendable {
    let client: WeChatClient
    let broker: AccessTokenBroker
    let alipay: AlipayClient?
    let alipayKeys: AlipayKeyring?

    public init(client: WeChatClient, broker: AccessTokenBroker, alipay: AlipayClient? = nil, alipayKeys: AlipayKeyring? = nil) {
        self.client = client
        self.broker = broker
        self.alipay = alipay
        self.alipayKeys = alipayKeys
    }

    public enum Outcome: Sendable, Equatable {
        case sent(messageID: Int64?)
        /// Not sent and never retried; `status` is the push's (``PushStatus/unsubscribed``,
        /// ``PushStatus/userBlock`` or ``PushStatus/refused``).
        case refused(status: PushStatus, detail: String)
        case deferred(reason: String)
        case retry(reason: String)
    }

    // MARK: WeChat

    static let tokenCodes: Set<Int> = [40001, 40014, 42001]

    public func sendTemplate(app: String, _ message: WeChatClient.TemplateMessage) async -> Outcome {
        await send(app: app) { token throws(WeChatClient.Failure) in try await client.sendTemplate(accessToken: token, message) }
    }

    public func sendText(app: String, toUser: String, content: String) async -> Outcome {
        await send(app: app) { token throws(WeChatClient.Failure) in
            try await client.sendText(accessToken: token, toUser: toUser, content: content)
            return 0
        }
    }

    func send(app: String, _ call: (String) async throws(WeChatClient.Failure) -> Int64) async -> Outcome {
        var token: String
        do { token = try await broker.token(app: app) } catch { return .retry(reason: "no access token: \(error)") }
        for attempt in 0..<2 {
            do {
                return .sent(messageID: try await call(token))
            } catch .platform(let code, let message) where Self.tokenCodes.contains(code) {
                guard attempt == 0 else { return .retry(reason: "token refused again after a refresh: errcode \(code): \(message)") }
                do { token = try await broker.refresh(app: app, replacing: token, force: code != 42001) } catch {
                    return .retry(reason: "token refresh failed: \(error)")
                }
            } catch {
                return Self.outcome(error)
            }
        }
        return .retry(reason: "unreachable")
    }

    static func outcome(_ failure: WeChatClient.Failure) -> Outcome {
        switch failure {
        case .platform(45009, let message): return .deferred(reason: "errcode 45009: \(message)")
        case .platform(-1, let message): return .retry(reason: "errcode -1: \(message)")
        case .platform(let code, let message):
            let status: PushStatus = code == 43004 ? .unsubscribed : code == 43101 ? .userBlock : .refused
            return .refused(status: status, detail: "errcode \(code): \(message)")
        case .http(let status): return .retry(reason: "HTTP \(status)")
        case .network(let reason): return .retry(reason: "network: \(reason)")
        case .malformed(let reason): return .retry(reason: "malformed answer: \(reason)")
        }
    }

    // MARK: Alipay

    public func sendAlipayTemplate(app: String, _ message: AlipayClient.TemplateMessage) async -> Outcome {
        guard let alipay, let alipayKeys else { return .refused(status: .refused, detail: "no Alipay client in this worker") }
        let keys: AlipayCrypto?
        do { keys = try await alipayKeys.keys(app: app) } catch { return .retry(reason: "the app's Alipay keys: \(error)") }
        guard let keys else { return .refused(status: .refused, detail: "Alipay app \(app) is not registered with its keys") }
        do {
            try await alipay.sendTemplate(app: app, keys: keys, message)
            return .sent(messageID: nil)
        } catch {
            return Self.outcome(error)
        }
    }

    static func outcome(_ failure: AlipayClient.Failure) -> Outcome {
        switch failure {
        case .platform(let code, _, let subCode, _) where code == "40004" && isUnfollowed(subCode):
            return .refused(status: .unsubscribed, detail: failure.description)
        case .platform(let code, _, let subCode, _) where code == "40004" && isLimit(subCode):
            return .deferred(reason: failure.description)
        case .platform(let code, _, _, _) where code == "20000":
            return .retry(reason: failure.description)
        case .platform, .unverified:
            return .refused(status: .refused, detail: failure.description)
        case .http(let status) where status >= 500:
            return .retry(reason: failure.description)
        case .http:
            return .refused(status: .refused, detail: failure.description)
        case .network, .malformed:
            return .retry(reason: failure.description)
        }
    }

    static func isUnfollowed(_ subCode: String) -> Bool {
        let code = subCode.uppercased()
        return code.contains("NOT_FOLLOW") || code.contains("UNFOLLOW") || code.contains("NOT-FOLLOW") || code.contains("USER_NOT_EXIST")
    }

    static func isLimit(_ subCode: String) -> Bool {
        let code = subCode.uppercased()
        return code.contains("LIMIT") || code.contains("EXCEED") || code.contains("QUOTA")
    }
}

/// Each Alipay app's keys, parsed from its registration once and kept for a minute: an RSA key
/// parse costs more than signing a request, and an operator's new keys show within the minute.
public final class AlipayKeyring: Sendable {
    let load: @Sendable (String) async throws -> AlipayCrypto?
    let lifetime: Duration
    private let cache = Mutex<[String: (keys: AlipayCrypto?, at: ContinuousClock.Instant)]>([:])

    public init(lifetime: Duration = .seconds(60), load: @escaping @Sendable (String) async throws -> AlipayCrypto?) {
        self.lifetime = lifetime
        self.load = load
    }

    func keys(app: String) async throws -> AlipayCrypto? {
        if let cached = cache.withLock({ $0[app] }), ContinuousClock.now - cached.at < lifetime { return cached.keys }
        let keys = try await load(app)
        cache.withLock { $0[app] = (keys, .now) }
        return keys
    }
}
