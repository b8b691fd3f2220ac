import Foundation
import Hummingbird
import Synchronization

/// A stand-in for the WeChat official-account APIs FanFlow calls, with their request and answer
/// shapes: `GET /cgi-bin/token`, `POST /cgi-bin/stable_token`, `POST /cgi-bin/message/template/send`
/// and `POST /cgi-bin/message/custom/send` (errors as HTTP 200 with `errcode`/`errmsg`, as WeChat
/// answers them). Nothing here reaches the internet, so tests and demos point
/// `FANFLOW_WECHAT_API_BASE` at this.
///
/// Faults on demand, through `/fake/…` (not part of WeChat): queued error codes, HTTP 5xx and
/// latency; tokens expired (42001) or invalidated (40001) at once; a daily quota (45009); members
/// who unsubscribed (43004) or blocked messages (43101). `/fake/sent` and `/fake/stats` say what
/// arrived.
public final class FakeWeChat: Sendable {
    public struct Sent: Sendable {
        public let kind: String
        public let app: String
        public let toUser: String
        public let templateID: String?
        public let body: [String: any Sendable]
        public let msgID: Int64
        public let at: Date
    }

    struct Token {
        let app: String
        var expiresAt: Date
        var valid: Bool
    }

    struct Fault {
        var errcode: Int?
        var status: Int?
        var delayMilliseconds: Int
        var remaining: Int
        /// "token", "send" or "any".
        var scope: String
    }

    struct State {
        var apps: [String: String] = [:]
        var tokens: [String: Token] = [:]
        var current: [String: String] = [:]
        var faults: [Fault] = []
        var refusing: [String: Int] = [:]
        var quota: [String: Int] = [:]
        var used: [String: Int] = [:]
        var sent: [Sent] = []
        var tokenCalls = 0
        var stableCalls = 0
        var forcedRefreshes = 0
        var sendCalls = 0
        var nextMessageID: Int64 = 200_228_332
        var tokenLifetime: TimeInterval = 7200
    }

    private let state = Mutex(State())

    public init() {}

    /// An app the fake knows, with its secret.
    public func register(app: String, secret: String) {
        state.withLock { $0.apps[app] = secret }
    }

    public var sent: [Sent] { state.withLock { $0.sent } }
    public var forcedRefreshes: Int { state.withLock { $0.forcedRefreshes } }
    public var tokenIssues: Int { state.withLock { $0.tokenCalls + $0.stableCalls } }

    /// The routes, on a router of the caller's (a test's or `fanflow fake-platform`'s).
    public func addRoutes<Context: RequestContext>(to router: Router<Context>) {
        router.get("/cgi-bin/token") { request, _ in
            if let fault = try await self.delay(scope: "token") { return fault }
            let query = request.uri.queryParameters
            let app = query["appid"].map(String.init) ?? "", secret = query["secret"].map(String.init) ?? ""
            guard query["grant_type"] == "client_credential" else { return Self.error(40002, "invalid grant_type") }
            return self.issue(app: app, secret: secret, force: true, stable: false)
        }
        router.post("/cgi-bin/stable_token") { request, _ in
            if let fault = try await self.delay(scope: "token") { return fault }
            let body = try await Self.json(request)
            guard body["grant_type"] as? String == "client_credential" else { return Self.error(40002, "invalid grant_type") }
            return self.issue(app: body["appid"] as? String ?? "", secret: body["secret"] as? String ?? "",
                              force: body["force_refresh"] as? Bool ?? false, stable: true)
        }
        router.post("/cgi-bin/message/template/send") { request, _ in
            try await self.send(request, kind: "template")
        }
        router.post("/cgi-bin/message/custom/send") { request, _ in
            try await self.send(request, kind: "custom")
        }

        // Control, not WeChat's.
        router.post("/fake/apps") { request, _ in
            let body = try await Self.json(request)
            guard let app = body["appid"] as? String, let secret = body["secret"] as? String else { return Self.error(-1, "appid and secret") }
            self.register(app: app, secret: secret)
            return Self.ok([:])
        }
        router.post("/fake/faults") { request, _ in
            let body = try await Self.json(request)
            let fault = Fault(errcode: body["errcode"] as? Int, status: body["status"] as? Int, delayMilliseconds: body["delayMs"] as? Int ?? 0,
                              remaining: body["times"] as? Int ?? 1, scope: body["scope"] as? String ?? "send")
            self.state.withLock { $0.faults.append(fault) }
            return Self.ok([:])
        }
        router.post("/fake/tokens/expire") { _, _ in
            self.expireTokens()
            return Self.ok([:])
        }
        router.post("/fake/tokens/invalidate") { _, _ in
            self.invalidateTokens()
            return Self.ok([:])
        }
        router.post("/fake/refusing") { request, _ in
            let body = try await Self.json(request)
            guard let openid = body["openid"] as? String, let code = body["errcode"] as? Int else { return Self.error(-1, "openid and errcode") }
            self.state.withLock { $0.refusing[openid] = code }
            return Self.ok([:])
        }
        router.post("/fake/quota") { request, _ in
            let body = try await Self.json(request)
            guard let app = body["appid"] as? String else { return Self.error(-1, "appid") }
            self.setQuota(app: app, limit: body["limit"] as? Int)
            return Self.ok([:])
        }
        router.get("/fake/stats") { _, _ in
            let stats = self.state.withLock { state -> [String: Any] in
                ["tokenCalls": state.tokenCalls, "stableCalls": state.stableCalls, "forcedRefreshes": state.forcedRefreshes,
                 "sendCalls": state.sendCalls, "sent": state.sent.count]
            }
            return Self.ok(stats)
        }
        router.get("/fake/sent") { _, _ in
            let sent = self.sent.map { message -> [String: Any] in
                ["kind": message.kind, "appid": message.app, "touser": message.toUser, "template_id": message.templateID ?? NSNull(),
                 "msgid": message.msgID, "at": message.at.timeIntervalSince1970, "body": message.body]
            }
            return Self.ok(["sent": sent])
        }
    }

    /// Every token issued so far answers 42001 from now on.
    public func expireTokens() {
        state.withLock { state in
            for key in state.tokens.keys { state.tokens[key]?.expiresAt = .distantPast }
        }
    }

    /// Every token issued so far answers 40001 from now on (as after a refresh somewhere else).
    public func invalidateTokens() {
        state.withLock { state in
            for key in state.tokens.keys { state.tokens[key]?.valid = false }
        }
    }

    /// Sends past `limit` today answer 45009; nil lifts the limit and resets the count.
    public func setQuota(app: String, limit: Int?) {
        state.withLock { state in
            state.quota[app] = limit
            if limit == nil { state.used[app] = 0 }
        }
    }

    public func inject(errcode: Int? = nil, status: Int? = nil, delayMilliseconds: Int = 0, times: Int = 1, scope: String = "send") {
        state.withLock { $0.faults.append(Fault(errcode: errcode, status: status, delayMilliseconds: delayMilliseconds, remaining: times, scope: scope)) }
    }

    public func refuse(openid: String, errcode: Int) {
        state.withLock { $0.refusing[openid] = errcode }
    }

    // MARK: - WeChat's behaviour

    private func issue(app: String, secret: String, force: Bool, stable: Bool) -> Response {
        state.withLock { state -> Response in
            if stable { state.stableCalls += 1 } else { state.tokenCalls += 1 }
            guard let expected = state.apps[app] else { return Self.error(40013, "invalid appid") }
            guard expected == secret else { return Self.error(40125, "invalid appsecret") }
            let now = Date()
            if stable, !force, let current = state.current[app], let token = state.tokens[current], token.valid, token.expiresAt > now {
                return Self.ok(["access_token": current, "expires_in": Int(token.expiresAt.timeIntervalSince(now))])
            }
            if stable, force {
                // A forced refresh of a stable token ends the one it replaces.
                state.forcedRefreshes += 1
                if let current = state.current[app] { state.tokens[current]?.valid = false }
            }
            let token = "ACCESS_TOKEN_" + UUID().uuidString.replacingOccurrences(of: "-", with: "")
            state.tokens[token] = Token(app: app, expiresAt: now.addingTimeInterval(state.tokenLifetime), valid: true)
            state.current[app] = token
            return Self.ok(["access_token": token, "expires_in": Int(state.tokenLifetime)])
        }
    }

    private func send(_ request: Request, kind: String) async throws -> Response {
        let token = request.uri.queryParameters["access_token"].map(String.init) ?? ""
        let body = try await Self.json(request)
        if let fault = try await delay(scope: "send") { return fault }
        return state.withLock { state -> Response in
            state.sendCalls += 1
            guard !token.isEmpty, let known = state.tokens[token] else {
                return Self.error(40001, "invalid credential, access_token is invalid or not latest")
            }
            guard known.valid else { return Self.error(40001, "invalid credential, access_token is invalid or not latest") }
            guard known.expiresAt > Date() else { return Self.error(42001, "access_token expired") }
            guard let toUser = body["touser"] as? String, !toUser.isEmpty else { return Self.error(40003, "invalid openid") }
            var templateID: String?
            if kind == "template" {
                guard let id = body["template_id"] as? String, !id.isEmpty else { return Self.error(40037, "invalid template_id") }
                guard let data = body["data"] as? [String: Any], data.values.allSatisfy({ ($0 as? [String: Any])?["value"] is String }) else {
                    return Self.error(47001, "data format error")
                }
                templateID = id
            } else {
                guard body["msgtype"] as? String == "text", (body["text"] as? [String: Any])?["content"] is String else {
                    return Self.error(47001, "data format error")
                }
            }
            if let code = state.refusing[toUser] {
                return Self.error(code, code == 43004 ? "require subscribe" : "user refuse to accept the msg")
            }
            if let limit = state.quota[known.app], state.used[known.app, default: 0] >= limit {
                return Self.error(45009, "reach max api daily quota limit")
            }
            state.used[known.app, default: 0] += 1
            state.nextMessageID += 1
            state.sent.append(Sent(kind: kind, app: known.app, toUser: toUser, templateID: templateID,
                                   body: body.mapValues { "\($0)" }, msgID: state.nextMessageID, at: Date()))
            return kind == "template" ? Self.ok(["errcode": 0, "errmsg": "ok", "msgid": state.nextMessageID])
                                      : Self.ok(["errcode": 0, "errmsg": "ok"])
        }
    }

    /// Applies the next queued fault of this scope: its latency, then its error, if any.
    @discardableResult
    private func delay(scope: String) async throws -> Response? {
        let fault = state.withLock { state -> Fault? in
            guard let index = state.faults.firstIndex(where: { $0.scope == scope || $0.scope == "any" }) else { return nil }
            let fault = state.faults[index]
            state.faults[index].remaining -= 1
            if state.faults[index].remaining <= 0 { state.faults.remove(at: index) }
            return fault
        }
        guard let fault else { return nil }
        if fault.delayMilliseconds > 0 { try await Task.sleep(for: .milliseconds(fault.delayMilliseconds)) }
        if let status = fault.status {
            return Response(status: .init(code: status), headers: [.contentType: "text/html"],
                            body: .init(byteBuffer: ByteBuffer(string: "<html><body>\(status)</body></html>")))
        }
        if let code = fault.errcode { return Self.error(code, "injected") }
        return nil
    }

    static func json(_ request: Request) async throws -> [String: Any] {
        let buffer = try await request.body.collect(upTo: 1 << 20)
        return (try? JSONSerialization.jsonObject(with: Data(buffer: buffer))) as? [String: Any] ?? [:]
    }

    static func ok(_ body: [String: Any]) -> Response {
        let data = (try? JSONSerialization.data(withJSONObject: body, options: [.sortedKeys])) ?? Data("{}".utf8)
        return Response(status: .ok, headers: [.contentType: "application/json; encoding=utf-8"], body: .init(byteBuffer: ByteBuffer(data: data)))
    }

    static func error(_ code: Int, _ message: String) -> Response {
        ok(["errcode": code, "errmsg": "\(message) rid: \(UUID().uuidString.prefix(8).lowercased())"])
    }
}
