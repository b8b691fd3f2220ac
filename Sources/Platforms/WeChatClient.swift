import AsyncHTTPClient
import Contracts
import Foundation
import NIOCore

/// WeChat's official-account message APIs as FanFlow calls them: the stable access token, template
/// messages and customer-service (text) messages. The base URL is configurable
/// (`FANFLOW_WECHAT_API_BASE`), so tests and demos talk to `fanflow fake-platform` instead.
public struct WeChatClient: Sendable {
    public static let defaultBase = "https://api.weixin.qq.com"

    let http: HTTPClient
    let base: String
    let timeout: TimeAmount

    public init(http: HTTPClient, base: String = WeChatClient.defaultBase, timeout: TimeAmount = .seconds(5)) {
        self.http = http
        self.base = base.hasSuffix("/") ? String(base.dropLast()) : base
        self.timeout = timeout
    }

    /// What went wrong with a call; the outcome policy reads it.
    public enum Failure: Error, Sendable, Equatable, CustomStringConvertible {
        /// The platform answered with `errcode` and `errmsg`.
        case platform(code: Int, message: String)
        /// A status other than 200 (a gateway error in front of the API).
        case http(status: Int)
        /// No answer: connection refused or reset, timeout.
        case network(String)
        /// An answer that is not what the API documents.
        case malformed(String)

        public var description: String {
            switch self {
            case .platform(let code, let message): return "errcode \(code): \(message)"
            case .http(let status): return "HTTP \(status)"
            case .network(let reason): return "network: \(reason)"
            case .malformed(let reason): return "malformed answer: \(reason)"
            }
        }
    }

    public struct AccessToken: Sendable, Equatable {
        public let value: String
        public let expiresIn: Int
    }

    /// `POST /cgi-bin/stable_token`: the same token to every caller until it nears expiry, unless
    /// `forceRefresh` (which ends the previous one and is limited per day by the platform).
    public func stableToken(app: String, secret: String, forceRefresh: Bool) async throws(Failure) -> AccessToken {
        let body: JSONValue = .object(["grant_type": "client_credential", "appid": .string(app), "secret": .string(secret),
                                       "force_refresh": .bool(forceRefresh)])
        let answer = try await post("/cgi-bin/stable_token", body: body)
        // WeChat's tokens live 7,200 s; an expires_in past a week (Int64.max) would trap in the broker's `* 1000`.
        guard let token = answer["access_token"]?.string, let expiresIn = answer["expires_in"]?.int, (1...604_800).contains(expiresIn) else {
            throw .malformed("stable_token answer without access_token and an expires_in of 1-604800 seconds")
        }
        return AccessToken(value: token, expiresIn: Int(expiresIn))
    }

    /// A template message as `POST /cgi-bin/message/template/send` takes it.
    public struct TemplateMessage: Sendable, Equatable {
        public var toUser: String
        public var templateID: String
        public var url: String?
        public var miniProgram: (appID: String, pagePath: String)?
        public var data: [String: String]

        public init(toUser: String, templateID: String, url: String? = nil, miniProgram: (appID: String, pagePath: String)? = nil,
                    data: [String: String]) {
            self.toUser = toUser
            self.templateID = templateID
            self.url = url
            self.miniProgram = miniProgram
            self.data = data
        }

        public static func == (a: Self, b: Self) -> Bool {
            a.toUser == b.toUser && a.templateID == b.templateID && a.url == b.url && a.miniProgram?.appID == b.miniProgram?.appID
                && a.miniProgram?.pagePath == b.miniProgram?.pagePath && a.data == b.data
        }

        var json: JSONValue {
            var body: [String: JSONValue] = ["touser": .string(toUser), "template_id": .string(templateID),
                                             "data": .object(data.mapValues { .object(["value": .string($0)]) })]
            if let url { body["url"] = .string(url) }
            if let miniProgram { body["miniprogram"] = .object(["appid": .string(miniProgram.appID), "pagepath": .string(miniProgram.pagePath)]) }
            return .object(body)
        }
    }

    /// Sends a template message; the platform's message id.
    public func sendTemplate(accessToken: String, _ message: TemplateMessage) async throws(Failure) -> Int64 {
        let answer = try await post("/cgi-bin/message/template/send?access_token=\(Self.queryEscaped(accessToken))", body: message.json)
        return answer["msgid"]?.int ?? 0
    }

    /// Sends a customer-service text message (allowed within 48 hours of the member's last message).
    public func sendText(accessToken: String, toUser: String, content: String) async throws(Failure) {
        _ = try await post("/cgi-bin/message/custom/send?access_token=\(Self.queryEscaped(accessToken))",
                           body: .object(["touser": .string(toUser), "msgtype": "text", "text": .object(["content": .string(content)])]))
    }

    /// One call; an answer with a non-zero `errcode` is a `.platform` failure.
    func post(_ path: String, body: JSONValue) async throws(Failure) -> [String: JSONValue] {
        var request = HTTPClientRequest(url: base + path)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.body = .bytes(ByteBuffer(bytes: body.jsonBytes))
        let bytes: [UInt8]
        do { bytes = try await PlatformCall.bytes(request, http: http, timeout: timeout) } catch {
            switch error {
            case .http(let status): throw .http(status: status)
            case .network(let reason): throw .network(reason)
            }
        }
        guard case .object(let answer)? = try? JSONValue.parse(bytes) else {
            throw .malformed(String(decoding: bytes.prefix(200), as: UTF8.self))
        }
        if let code = answer["errcode"]?.int, code != 0 {
            throw .platform(code: Int(code), message: answer["errmsg"]?.string ?? "")
        }
        return answer
    }

    static func queryEscaped(_ text: String) -> String {
        text.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? text
    }
}
