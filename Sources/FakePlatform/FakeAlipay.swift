@preconcurrency import _CryptoExtras
import Foundation
import Hummingbird
import Platforms
import Synchronization

/// A stand-in for Alipay's OpenAPI gateway (`POST /gateway.do`) as the push pool calls it: the
/// service-window template message `alipay.open.public.message.single.send`. Requests are form
/// posts whose RSA2 signature is checked with the app's public key; answers are signed with the
/// fake's own key, which plays Alipay's (register it as the app's `alipayPublicKey`). Errors come
/// in Alipay's shapes: `error_response` for a request the gateway refuses (unknown app, bad
/// signature, bad method or timestamp), and the method's response object with `code`, `msg`,
/// `sub_code`, `sub_msg` for a refused message.
///
/// Faults on demand, through `/fake/alipay/…` (not Alipay's): users whose messages are refused with
/// a given `sub_code`, queued 5xx statuses or gateway codes (20000), and what arrived.
public final class FakeAlipay: Sendable {
    public struct Sent: Sendable {
        public let app: String
        public let toUser: String
        public let templateID: String
        /// Each context field's `value` (and the plain `url`, `head_color`, `action_name`).
        public let context: [String: String]
        public let at: Date
    }

    struct Fault {
        var status: Int?
        var code: String?
        var subCode: String?
        var remaining: Int
    }

    struct State {
        var apps: [String: AlipayCrypto] = [:]
        var refusing: [String: (subCode: String, subMessage: String)] = [:]
        var faults: [Fault] = []
        var sent: [Sent] = []
        var calls = 0
    }

    static let method = "alipay.open.public.message.single.send"
    static let answerKey = "alipay_open_public_message_single_send_response"

    private let state = Mutex(State())
    private let privateKeyBase64: String
    /// Alipay's public key as this fake plays it (base64 DER): an app's `alipayPublicKey`.
    public let alipayPublicKey: String

    public init() throws {
        let key = try _RSA.Signing.PrivateKey(keySize: .bits2048)
        privateKeyBase64 = key.derRepresentation.base64EncodedString()
        alipayPublicKey = key.publicKey.derRepresentation.base64EncodedString()
    }

    /// An app the fake knows, with its public key (PEM or base64 DER), which checks its requests.
    public func register(app: String, publicKey: String) throws {
        // The roles turn around here: the fake verifies with the app's public key and signs with Alipay's.
        let crypto = try AlipayCrypto(alipayPublicKey: publicKey, appPrivateKey: privateKeyBase64)
        state.withLock { $0.apps[app] = crypto }
    }

    public var sent: [Sent] { state.withLock { $0.sent } }
    public var calls: Int { state.withLock { $0.calls } }

    /// Messages to `user` are refused with `subCode` (code 40004, Business Failed).
    public func refuse(user: String, subCode: String, subMessage: String = "refused") {
        state.withLock { $0.refusing[user] = (subCode, subMessage) }
    }

    /// The next `times` sends answer HTTP `status`, or the gateway's `code` (20000: service unavailable).
    public func inject(status: Int? = nil, code: String? = nil, subCode: String? = nil, times: Int = 1) {
        state.withLock { $0.faults.append(Fault(status: status, code: code, subCode: subCode, remaining: times)) }
    }

    public func addRoutes<Context: RequestContext>(to router: Router<Context>) {
        router.post("/gateway.do") { request, _ in
            let buffer = try await request.body.collect(upTo: 1 << 20)
            return self.gateway(Self.form(String(buffer: buffer)))
        }

        // Control, not Alipay's.
        router.get("/fake/alipay/public-key") { _, _ in
            FakeWeChat.ok(["alipayPublicKey": self.alipayPublicKey])
        }
        router.post("/fake/alipay/apps") { request, _ in
            let body = try await FakeWeChat.json(request)
            guard let app = body["appid"] as? String, let key = body["publicKey"] as? String else { return FakeWeChat.error(-1, "appid and publicKey") }
            do { try self.register(app: app, publicKey: key) } catch { return FakeWeChat.error(-1, "publicKey: \(error)") }
            return FakeWeChat.ok([:])
        }
        router.post("/fake/alipay/refusing") { request, _ in
            let body = try await FakeWeChat.json(request)
            guard let user = body["userId"] as? String, let subCode = body["subCode"] as? String else { return FakeWeChat.error(-1, "userId and subCode") }
            self.refuse(user: user, subCode: subCode, subMessage: body["subMsg"] as? String ?? "refused")
            return FakeWeChat.ok([:])
        }
        router.post("/fake/alipay/faults") { request, _ in
            let body = try await FakeWeChat.json(request)
            self.inject(status: body["status"] as? Int, code: body["code"] as? String, subCode: body["subCode"] as? String,
                        times: body["times"] as? Int ?? 1)
            return FakeWeChat.ok([:])
        }
        router.get("/fake/alipay/sent") { _, _ in
            FakeWeChat.ok(["sent": self.sent.map { ["appid": $0.app, "to_user_id": $0.toUser, "template_id": $0.templateID,
                                                    "context": $0.context, "at": $0.at.timeIntervalSince1970] as [String: Any] }])
        }
    }

    // MARK: - Alipay's behaviour

    func gateway(_ parameters: [String: String]) -> Response {
        state.withLock { state -> Response in
            state.calls += 1
            let app = parameters["app_id"] ?? ""
            guard let crypto = state.apps[app] else {
                return Self.gatewayError(code: "40002", "Invalid Arguments", "isv.invalid-app-id", "无效的AppID参数")
            }
            let content = AlipayCrypto.signedContent(parameters.map { ($0.key, Array($0.value.utf8)) })
            guard parameters["sign_type"] == "RSA2", let sign = parameters["sign"],
                  (try? crypto.verify(content: content, signatureBase64: sign, signType: "RSA2")) == true else {
                return Self.gatewayError(code: "40002", "Invalid Arguments", "isv.invalid-signature", "验签出错")
            }
            guard parameters["method"] == Self.method else {
                return Self.gatewayError(code: "40002", "Invalid Arguments", "isv.invalid-method", "不存在的方法名")
            }
            guard let timestamp = parameters["timestamp"], Self.isTimestamp(timestamp) else {
                return Self.gatewayError(code: "40002", "Invalid Arguments", "isv.invalid-timestamp", "非法的时间戳参数")
            }
            if let index = state.faults.indices.first {
                let fault = state.faults[index]
                state.faults[index].remaining -= 1
                if state.faults[index].remaining <= 0 { state.faults.remove(at: index) }
                if let status = fault.status {
                    return Response(status: .init(code: status), headers: [.contentType: "text/html"],
                                    body: .init(byteBuffer: ByteBuffer(string: "<html><body>\(status)</body></html>")))
                }
                return answer(["code": fault.code ?? "20000", "msg": "Service Currently Unavailable",
                               "sub_code": fault.subCode ?? "isp.unknow-error", "sub_msg": "系统繁忙"], crypto)
            }
            guard let data = parameters["biz_content"]?.data(using: .utf8),
                  let biz = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any],
                  let toUser = biz["to_user_id"] as? String, !toUser.isEmpty,
                  let template = biz["template"] as? [String: Any], let templateID = template["template_id"] as? String,
                  let context = template["context"] as? [String: Any] else {
                return answer(["code": "40002", "msg": "Invalid Arguments", "sub_code": "isv.invalid-parameter",
                               "sub_msg": "biz_content needs to_user_id and template.template_id and template.context"], crypto)
            }
            var values: [String: String] = [:]
            for (name, value) in context {
                if let text = value as? String {
                    values[name] = text
                } else if let keyword = value as? [String: Any], let text = keyword["value"] as? String, keyword["color"] is String {
                    values[name] = text
                } else {
                    return answer(["code": "40002", "msg": "Invalid Arguments", "sub_code": "isv.invalid-parameter",
                                   "sub_msg": "context.\(name) needs value and color"], crypto)
                }
            }
            if let refusal = state.refusing[toUser] {
                return answer(["code": "40004", "msg": "Business Failed", "sub_code": refusal.subCode, "sub_msg": refusal.subMessage], crypto)
            }
            state.sent.append(Sent(app: app, toUser: toUser, templateID: templateID, context: values, at: Date()))
            return answer(["code": "10000", "msg": "Success"], crypto)
        }
    }

    /// The method's response object, signed over its exact text as Alipay signs it.
    func answer(_ body: [String: String], _ crypto: AlipayCrypto) -> Response {
        let inner = (try? JSONSerialization.data(withJSONObject: body, options: [.sortedKeys])).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
        let sign = (try? crypto.sign(Array(inner.utf8))) ?? ""
        return Self.raw("{\"\(Self.answerKey)\":\(inner),\"sign\":\"\(sign)\"}")
    }

    /// What the gateway answers before a method runs; unsigned, as for an app it does not know.
    static func gatewayError(code: String, _ message: String, _ subCode: String, _ subMessage: String) -> Response {
        let body = ["code": code, "msg": message, "sub_code": subCode, "sub_msg": subMessage]
        let inner = (try? JSONSerialization.data(withJSONObject: body, options: [.sortedKeys])).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
        return raw("{\"error_response\":\(inner)}")
    }

    static func raw(_ text: String) -> Response {
        Response(status: .ok, headers: [.contentType: "application/json;charset=utf-8"], body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    /// `yyyy-MM-dd HH:mm:ss`.
    static func isTimestamp(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        guard bytes.count == 19 else { return false }
        return bytes.enumerated().allSatisfy { index, byte in
            switch index {
            case 4, 7: return byte == UInt8(ascii: "-")
            case 10: return byte == UInt8(ascii: " ")
            case 13, 16: return byte == UInt8(ascii: ":")
            default: return byte >= 48 && byte <= 57
            }
        }
    }

    /// `application/x-www-form-urlencoded`, `+` as a space.
    static func form(_ body: String) -> [String: String] {
        var parameters: [String: String] = [:]
        for pair in body.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard let name = parts.first?.replacingOccurrences(of: "+", with: " ").removingPercentEncoding else { continue }
            let value = parts.count > 1 ? parts[1].replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? "" : ""
            parameters[name] = value
        }
        return parameters
    }
}
