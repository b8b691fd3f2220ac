import Contracts
import Foundation

/// WeChat callback XML → envelope. Kinds follow the envelope's vocabulary (`subscribe`, `scan`,
/// `message.text`…); events and messages we do not name pass through in WeChat's own namespace,
/// `wechat.event.<name>` / `wechat.message.<type>` (``EventKind/passthrough(_:platform:message:)``).
enum WeChatEvents {
    static func envelope(_ xml: XMLElement, app: String, receivedAt: Date) throws(GatewayError) -> Envelope {
        guard let from = xml.value("FromUserName"), !from.isEmpty else {
            throw GatewayError.badRequest(.malformedMessage, "FromUserName is missing")
        }
        guard let createText = xml.value("CreateTime"), let seconds = Int64(createText) else {
            throw GatewayError.badRequest(.malformedMessage, "CreateTime is missing or not an integer")
        }
        // Plain mode signs only the query, so this number is whatever the sender wrote: Int64.max
        // once trapped while the envelope's time was formatted, and took the gateway down.
        guard let created = InputLimits.time(unixSeconds: seconds) else {
            throw GatewayError.badRequest(.malformedMessage, "CreateTime is outside 2000-01-01..2100-01-01")
        }
        _ = try WebhookInput.identity(from, "FromUserName")
        guard let msgType = xml.value("MsgType"), !msgType.isEmpty else {
            throw GatewayError.badRequest(.malformedMessage, "MsgType is missing")
        }
        let to = xml.value("ToUserName") ?? ""
        var attributes: [String: JSONValue] = ["raw": .object(xml.jsonFields)]
        func copy(_ field: String, as name: String) {
            if let value = xml.value(field), !value.isEmpty { attributes[name] = .string(value) }
        }
        func number(_ field: String, as name: String) {
            if let text = xml.value(field), let value = Double(text), value.isFinite { attributes[name] = .number(value) }
        }

        let kind: EventKind
        let id: String
        if msgType.lowercased() == "event" {
            let event = xml.value("Event") ?? ""
            let eventKey = xml.value("EventKey") ?? ""
            switch event.lowercased() {
            case "subscribe":
                kind = .subscribe
                if eventKey.hasPrefix("qrscene_") { attributes["scene"] = .string(String(eventKey.dropFirst(8))) }
                copy("Ticket", as: "ticket")
            case "unsubscribe":
                kind = .unsubscribe
            case "scan":
                kind = .scan
                if !eventKey.isEmpty { attributes["scene"] = .string(eventKey) }
                copy("Ticket", as: "ticket")
            case "click":
                kind = .click
                copy("EventKey", as: "eventKey")
            case "view":
                kind = .view
                copy("EventKey", as: "url")
                copy("MenuId", as: "menuId")
            case "location":
                kind = .location
                number("Latitude", as: "latitude")
                number("Longitude", as: "longitude")
                number("Precision", as: "precision")
            case "templatesendjobfinish":
                kind = .templateSendJobFinish
                copy("MsgID", as: "msgId")
                copy("Status", as: "status")
            default:
                kind = .passthrough(event, platform: .wechat)
                if !eventKey.isEmpty { attributes["eventKey"] = .string(eventKey) }
            }
            // Events carry no id of their own. Who, when, which event and which key together tell
            // two events apart: two people scanning one code, or one person's two events in the
            // same second with different Event/EventKey, get different ids.
            id = EventID.derive(.wechat, app: app, ["event", to, from, createText, event, eventKey,
                                                    xml.value("MsgID") ?? xml.value("MsgId") ?? ""])
        } else {
            switch msgType.lowercased() {
            case "text":
                kind = .text
                copy("Content", as: "content")
            case "image":
                kind = .image
                copy("PicUrl", as: "picUrl")
                copy("MediaId", as: "mediaId")
            case "voice":
                kind = .voice
                copy("MediaId", as: "mediaId")
                copy("Format", as: "format")
                copy("Recognition", as: "recognition")
            case "video", "shortvideo":
                kind = .video
                copy("MediaId", as: "mediaId")
                copy("ThumbMediaId", as: "thumbMediaId")
            case "location":
                kind = .locationMessage
                number("Location_X", as: "latitude")
                number("Location_Y", as: "longitude")
                number("Scale", as: "scale")
                copy("Label", as: "label")
            case "link":
                kind = .link
                copy("Title", as: "title")
                copy("Description", as: "description")
                copy("Url", as: "url")
            default:
                kind = .passthrough(msgType, platform: .wechat, message: true)
            }
            if let msgID = xml.value("MsgId") ?? xml.value("MsgID"), !msgID.isEmpty {
                attributes["msgId"] = .string(msgID)
                id = EventID.derive(.wechat, app: app, ["msg", msgID])
            } else {
                id = EventID.derive(.wechat, app: app, ["msg", to, from, createText, msgType])
            }
        }
        return Envelope(id: id, platform: .wechat, app: app, kind: kind,
                        subject: Envelope.Subject(openid: from, unionid: try WebhookInput.identity(xml.value("UnionId"), "UnionId"),
                                                  verified: true),
                        occurredAt: created, receivedAt: receivedAt, attributes: try WebhookInput.attributes(attributes))
    }
}
