import Contracts
import Foundation
import Hummingbird
import Platforms

/// `POST /alipay/{appId}`: service-window notifications and the gateway check, RSA2-verified.
extension Gateway {
    func addAlipayRoutes(_ router: Router<GatewayRequestContext>) {
        router.post("/alipay/:appId") { request, context in
            try await alipayCallback(request, context)
        }
    }

    func alipayCallback(_ request: Request, _ context: GatewayRequestContext) async throws -> Response {
        let app = try await webhookApp(.alipay, context)
        let appID = app.appID
        guard let crypto = app.alipay else { throw GatewayError.unknownApp("alipay", appID) }
        let body = try await request.collectBody(upTo: Self.webhookBodyLimit)
        let receivedAt = Date()
        guard let parameters = FormBody.parse(body) else {
            throw GatewayError.badRequest(.malformedForm, "body is not application/x-www-form-urlencoded")
        }
        func text(_ name: String) -> String? {
            parameters.first { $0.name == name }.map { String(decoding: $0.value, as: UTF8.self) }
        }
        guard let sign = text("sign"), !sign.isEmpty else {
            throw GatewayError.unauthorized(.missingSignature, "sign is required")
        }
        let signType = text("sign_type") ?? "RSA2"
        let valid: Bool
        do {
            valid = try crypto.verify(content: AlipayCrypto.signedContent(parameters), signatureBase64: sign, signType: signType)
        } catch {
            throw GatewayError.badRequest(.unsupportedSignType, "only sign_type RSA2 is accepted")
        }
        guard valid else { throw GatewayError.forbidden(.badSignature, "RSA2 signature does not match") }

        let charset = text("charset") ?? "GBK"
        guard let bizBytes = parameters.first(where: { $0.name == "biz_content" })?.value,
              let bizText = Charset.utf8(bizBytes, from: charset) else {
            throw GatewayError.badRequest(.malformedMessage, "biz_content is missing or not in charset \(charset)")
        }
        let biz = try parseXML(Array(bizText.utf8))
        if let inner = biz.value("AppId"), !inner.isEmpty, inner != appID {
            throw GatewayError.forbidden(.wrongAppid, "the message is for app \(inner)")
        }

        switch text("service") {
        case "alipay.service.check":
            // Proves to Alipay that this gateway holds the app's key pair.
            return try alipayAnswer("<success>true</success><biz_content>\(crypto.appPublicKeyBase64)</biz_content>", crypto)
        case "alipay.mobile.public.message.notify":
            let envelope = try AlipayEvents.envelope(biz, app: appID, receivedAt: receivedAt)
            try await publishWebhookEvent(envelope)
            let ack = "<XML><ToUserId>\(XMLTree.cdata(biz.value("FromUserId") ?? ""))</ToUserId>"
                + "<AppId>\(XMLTree.cdata(appID))</AppId><CreateTime>\(Int64(receivedAt.timeIntervalSince1970 * 1000))</CreateTime>"
                + "<MsgType><![CDATA[ack]]></MsgType></XML>"
            return try alipayAnswer(ack, crypto)
        case let other:
            throw GatewayError.badRequest(.unsupportedService, "service \(other ?? "(none)") is not handled")
        }
    }

    /// Alipay's answer envelope: the response content signed with the app's private key.
    private func alipayAnswer(_ content: String, _ crypto: AlipayCrypto) throws -> Response {
        let signature = try crypto.sign(Array(content.utf8))
        let xml = "<?xml version=\"1.0\" encoding=\"GBK\"?><alipay><response>\(content)</response>"
            + "<sign>\(signature)</sign><sign_type>RSA2</sign_type></alipay>"
        return .text(xml, contentType: "text/xml; charset=GBK")
    }
}

enum AlipayEvents {
    static func envelope(_ biz: XMLElement, app: String, receivedAt: Date) throws(GatewayError) -> Envelope {
        guard let from = biz.value("FromUserId") ?? biz.value("FromAlipayUserId"), !from.isEmpty else {
            throw GatewayError.badRequest(.malformedMessage, "FromUserId is missing")
        }
        guard let msgType = biz.value("MsgType"), !msgType.isEmpty else {
            throw GatewayError.badRequest(.malformedMessage, "MsgType is missing")
        }
        _ = try WebhookInput.identity(from, "FromUserId")
        let createText = biz.value("CreateTime") ?? ""
        // Milliseconds; absent means now, anything else present must be a time in the window.
        var occurred = receivedAt
        if !createText.isEmpty {
            guard let millis = Int64(createText), let created = InputLimits.time(unixMilliseconds: millis) else {
                throw GatewayError.badRequest(.malformedMessage, "CreateTime must be unix milliseconds in 2000-01-01..2100-01-01")
            }
            occurred = created
        }
        var attributes: [String: JSONValue] = ["raw": .object(biz.jsonFields)]
        let actionParam = biz.value("ActionParam") ?? ""
        if let scene = sceneID(actionParam) { attributes["scene"] = .string(scene) }

        let kind: EventKind
        let eventType = biz.value("EventType") ?? ""
        if msgType.lowercased() == "event" {
            switch eventType.lowercased() {
            case "follow": kind = .subscribe
            case "unfollow": kind = .unsubscribe
            case "click":
                kind = .click
                if !actionParam.isEmpty { attributes["eventKey"] = .string(actionParam) }
            default: kind = .passthrough(eventType, platform: .alipay)
            }
        } else if msgType.lowercased() == "text" {
            kind = .text
            if let content = biz["Text"]?.value("Content") { attributes["content"] = .string(content) }
        } else if msgType.lowercased() == "image" {
            kind = .image
        } else {
            kind = .passthrough(msgType, platform: .alipay, message: true)
        }
        let id: String
        if let msgID = biz.value("MsgId"), !msgID.isEmpty {
            attributes["msgId"] = .string(msgID)
            id = EventID.derive(.alipay, app: app, ["msg", msgID])
        } else {
            id = EventID.derive(.alipay, app: app, ["event", from, createText, msgType, eventType, actionParam])
        }
        return Envelope(id: id, platform: .alipay, app: app, kind: kind, subject: Envelope.Subject(openid: from, verified: true),
                        occurredAt: occurred, receivedAt: receivedAt, attributes: try WebhookInput.attributes(attributes))
    }

    /// A QR code's scene id from ActionParam (`{"scene":{"sceneId":"…"}}`).
    static func sceneID(_ actionParam: String) -> String? {
        guard actionParam.hasPrefix("{"),
              let object = try? JSONSerialization.jsonObject(with: Data(actionParam.utf8)) as? [String: Any],
              let scene = object["scene"] as? [String: Any] else { return nil }
        if let id = scene["sceneId"] as? String { return id }
        if let id = scene["sceneId"] as? Int { return String(id) }
        return nil
    }
}
