import Foundation

/// Sends one message and decides what its outcome means, by the platform's error codes:
///
/// - token invalid or expired (40001, 40014, 42001): a token other than the failed one from the
///   broker (one refresh however many workers ask), and one more try;
/// - quota (45009): `deferred` until the quota resets;
/// - member unsubscribed or refusing (43004, 43101) and other refusals of the message itself
///   (bad openid, template or data): `refused`, never retried;
/// - network errors, HTTP 5xx and "system busy" (-1): `retry`, with backoff, by the caller.
public struct PushSender: Sendable {
    let client: WeChatClient
    let broker: AccessTokenBroker

    public init(client: WeChatClient, broker: AccessTokenBroker) {
        self.client = client
        self.broker = broker
    }

    public enum Outcome: Sendable, Equatable {
        case sent(messageID: Int64)
        case refused(code: Int, message: String)
        case deferred(reason: String)
        case retry(reason: String)

        /// The machine-readable reason a push did not go out, for metrics and the pushes view.
        public var reason: String? {
            switch self {
            case .sent: return nil
            case .refused(let code, _): return code == 43004 ? "unsubscribed" : code == 43101 ? "user_blocked" : "refused_\(code)"
            case .deferred: return "quota"
            case .retry: return "transient"
            }
        }
    }

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
        case .platform(let code, let message): return .refused(code: code, message: message)
        case .http(let status): return .retry(reason: "HTTP \(status)")
        case .network(let reason): return .retry(reason: "network: \(reason)")
        case .malformed(let reason): return .retry(reason: "malformed answer: \(reason)")
        }
    }
}
