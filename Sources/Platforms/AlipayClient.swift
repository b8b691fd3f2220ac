import AsyncHTTPClient
import Contracts
import Foundation
import NIOCore

/// Alipay's service-window (生活号) template message, `alipay.open.public.message.single.send`,
/// through the OpenAPI gateway as Alipay documents it: a form POST of the common parameters and
/// `biz_content`, signed RSA2 with the app's private key, and an answer whose `sign` is checked with
/// Alipay's public key before FanFlow believes it. The base URL is configurable
/// (`FANFLOW_ALIPAY_API_BASE`), so tests and demos talk to `fanflow fake-platform` instead.
public struct AlipayClient: Sendable {
    public static let defaultBase = "https://openapi.alipay.com"
    static let method = "alipay.open.public.message.single.send"
    static let answerKey = "alipay_open_public_message_single_send_response"

    let http: HTTPClient
    let gateway: String
    let timeout: TimeAmount

    public init(http: HTTPClient, base: String = AlipayClient.defaultBase, timeout: TimeAmount = .seconds(5)) {
        self.http = http
        self.gateway = (base.hasSuffix("/") ? String(base.dropLast()) : base) + "/gateway.do"
        self.timeout = timeout
    }

    public enum Failure: Error, Sendable, Equatable, CustomStringConvertible {
        /// The gateway answered with a `code` other than 10000 (`sub_code` says what the business refused).
        case platform(code: String, message: String, subCode: String, subMessage: String)
        /// A status other than 200.
        case http(status: Int)
        /// No answer: connection refused or reset, timeout.
        case network(String)
        /// An answer that is not what the API documents.
        case malformed(String)
        /// An answer whose signature is missing or does not verify with Alipay's public key.
        case unverified(String)

        public var description: String {
            switch self {
            case .platform(let code, let message, let subCode, let subMessage): return "code \(code) \(message): \(subCode) \(subMessage)"
            case .http(let status): return "HTTP \(status)"
            case .network(let reason): return "network: \(reason)"
            case .malformed(let reason): return "malformed answer: \(reason)"
            case .unverified(let reason): return "unverified answer: \(reason)"
            }
        }
    }

    /// A template message as `biz_content` carries it: `to_user_id` and a template whose context
    /// holds each field as `{"value", "color"}`, the link as `url`, and the header colour and link
    /// text (fields named `head_color` and `action_name`, as plain strings).
    public struct TemplateMessage: Sendable, Equatable {
        public var toUser: String
        public var templateID: String
        public var url: String?
        public var fields: [String: String]

        public init(toUser: String, templateID: String, url: String? = nil, fields: [String: String]) {
            self.toUser = toUser
            self.templateID = templateID
            self.url = url
            self.fields = fields
        }

        static let plainFields: Set<String> = ["head_color", "action_name"]

        var bizContent: JSONValue {
            var context: [String: JSONValue] = ["head_color": .string(fields["head_color"] ?? "#108ee9")]
            for (name, value) in fields where !Self.plainFields.contains(name) {
                context[name] = .object(["value": .string(value), "color": "#333333"])
            }
            if let url {
                context["url"] = .string(url)
                context["action_name"] = .string(fields["action_name"] ?? "查看详情")
            }
            return .object(["to_user_id": .string(toUser),
                            "template": .object(["template_id": .string(templateID), "context": .object(context)])])
        }
    }

    /// Sends a template message to an Alipay user (their `2088…` user id) of `app`.
    public func sendTemplate(app: String, keys: AlipayCrypto, _ message: TemplateMessage, at now: Date = Date()) async throws(Failure) {
        let parameters: [(name: String, value: String)] = [
            ("app_id", app), ("method", Self.method), ("format", "JSON"), ("charset", "utf-8"), ("sign_type", "RSA2"),
            ("timestamp", BeijingTime.seconds(now)), ("version", "1.0"),
            ("biz_content", String(decoding: message.bizContent.jsonBytes, as: UTF8.self)),
        ]
        let signature: String
        do {
            signature = try keys.sign(AlipayCrypto.signedContent(parameters.map { ($0.name, Array($0.value.utf8)) }))
        } catch {
            throw .malformed("could not sign the request: \(error)")
        }
        let form = (parameters + [("sign", signature)]).map { "\($0.name)=\(Self.formEscaped($0.value))" }.joined(separator: "&")
        var request = HTTPClientRequest(url: gateway)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded;charset=utf-8")
        request.body = .bytes(ByteBuffer(string: form))
        let bytes: [UInt8]
        do { bytes = try await PlatformCall.bytes(request, http: http, timeout: timeout) } catch {
            switch error {
            case .http(let status): throw .http(status: status)
            case .network(let reason): throw .network(reason)
            }
        }
        try Self.check(answer: bytes, keys: keys)
    }

    /// Reads the answer: its `sign` covers the exact text of the response object, as Alipay sent it.
    /// An unsigned error is believed (Alipay cannot sign for an app it does not know); an unsigned
    /// success is not. A request the gateway refused before the method ran (unknown app, bad
    /// signature) is answered under `error_response` instead.
    static func check(answer bytes: [UInt8], keys: AlipayCrypto) throws(Failure) {
        guard case .object(let answer)? = try? JSONValue.parse(bytes),
              let key = [answerKey, "error_response"].first(where: { answer[$0] != nil }), case .object(let body)? = answer[key] else {
            throw .malformed(String(decoding: bytes.prefix(200), as: UTF8.self))
        }
        let code = body["code"]?.string ?? ""
        if let sign = answer["sign"]?.string {
            guard let signed = signedText(in: bytes, key: key) else { throw .malformed("no \(key) object to verify") }
            let valid: Bool
            do { valid = try keys.verify(content: signed, signatureBase64: sign, signType: "RSA2") } catch {
                throw .unverified("\(error)")
            }
            guard valid else { throw .unverified("the signature does not verify with Alipay's public key") }
        } else if code == "10000" {
            throw .unverified("a success without a signature")
        }
        guard code == "10000" else {
            throw .platform(code: code, message: body["msg"]?.string ?? "", subCode: body["sub_code"]?.string ?? "",
                            subMessage: body["sub_msg"]?.string ?? "")
        }
    }

    /// The bytes of the JSON object under `"key":` in `bytes`, braces balanced outside strings.
    static func signedText(in bytes: [UInt8], key: String) -> [UInt8]? {
        let needle = Array("\"\(key)\"".utf8)
        guard needle.count <= bytes.count,
              let found = (0...(bytes.count - needle.count)).first(where: { bytes[$0..<($0 + needle.count)].elementsEqual(needle) }) else {
            return nil
        }
        var index = found + needle.count
        while index < bytes.count, bytes[index] == UInt8(ascii: " ") || bytes[index] == UInt8(ascii: ":") { index += 1 }
        guard index < bytes.count, bytes[index] == UInt8(ascii: "{") else { return nil }
        let start = index
        var depth = 0, inString = false, escaped = false
        while index < bytes.count {
            let byte = bytes[index]
            if inString {
                if escaped { escaped = false } else if byte == UInt8(ascii: "\\") { escaped = true } else if byte == UInt8(ascii: "\"") { inString = false }
            } else if byte == UInt8(ascii: "\"") {
                inString = true
            } else if byte == UInt8(ascii: "{") {
                depth += 1
            } else if byte == UInt8(ascii: "}") {
                depth -= 1
                if depth == 0 { return Array(bytes[start...index]) }
            }
            index += 1
        }
        return nil
    }

    /// ASCII letters, digits and `-._~`: `CharacterSet.alphanumerics` would let Chinese text through unescaped.
    static let unreserved = CharacterSet(charactersIn: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")

    /// `application/x-www-form-urlencoded` value: every byte but unreserved ASCII escaped as UTF-8.
    static func formEscaped(_ text: String) -> String {
        text.addingPercentEncoding(withAllowedCharacters: unreserved) ?? text
    }
}
