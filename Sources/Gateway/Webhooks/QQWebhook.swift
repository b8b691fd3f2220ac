import Contracts
import Foundation
import Hummingbird
import Platforms

/// `POST /qq/{appId}`: QQ bot webhook events (op 0) and the callback validation (op 13).
extension Gateway {
    func addQQRoutes(_ router: Router<GatewayRequestContext>) {
        router.post("/qq/:appId") { request, context in
            try await qqCallback(request, context)
        }
    }

    func qqCallback(_ request: Request, _ context: GatewayRequestContext) async throws -> Response {
        let app = try await webhookApp(.qq, context)
        let appID = app.appID
        guard let crypto = app.qq else { throw GatewayError.unknownApp("qq", appID) }
        if let botAppID = request.headers[.qqBotAppID], botAppID != appID {
            throw GatewayError.forbidden(.wrongAppid, "X-Bot-Appid \(botAppID) is not this app")
        }
        let body = try await request.collectBody(upTo: Self.webhookBodyLimit)
        guard let value = try? JSONValue.parse(body), case .object(let payload) = value,
              let op = payload["op"]?.intStrict else {
            throw GatewayError.badRequest(.malformedJson, "body is not a QQ webhook payload (a JSON object with op)")
        }
        if op == 13 {
            return try qqValidation(payload, crypto)
        }

        // The signature covers the bytes exactly as they arrived, never a re-serialized body.
        guard let signature = request.headers[.qqSignature],
              let timestamp = request.headers[.qqTimestamp] else {
            throw GatewayError.unauthorized(.missingSignature, "X-Signature-Ed25519 and X-Signature-Timestamp are required")
        }
        guard crypto.verify(signatureHex: signature, timestamp: timestamp, body: body) else {
            throw GatewayError.forbidden(.badSignature, "Ed25519 signature does not match")
        }
        let receivedAt = Date()
        try freshness.check(timestamp, now: receivedAt.timeIntervalSince1970)
        guard op == 0 else {
            throw GatewayError.badRequest(.unsupportedOp, "op \(op) is not handled (0: dispatch, 13: validation)")
        }
        let envelope = try QQEvents.envelope(payload, app: appID, receivedAt: receivedAt)
        try await publishWebhookEvent(envelope)
        return .json(QQAck(op: 12, d: 0))
    }

    /// Op 13 signs `event_ts + plain_token` with the bot's key. Only short token-shaped values are
    /// signed: with digits and [A-Za-z0-9_-] only, the signed text can never start with "{", so it
    /// can never pass for an event (timestamp + a JSON body): not a signing oracle.
    private func qqValidation(_ payload: [String: JSONValue], _ crypto: QQCrypto) throws(GatewayError) -> Response {
        guard case .object(let d) = payload["d"], let token = d["plain_token"]?.string, let eventTS = d["event_ts"]?.string else {
            throw GatewayError.badRequest(.malformedMessage, "op 13 needs d.plain_token and d.event_ts")
        }
        let tokenShaped = (1...64).contains(token.utf8.count)
            && token.utf8.allSatisfy { ($0 >= 48 && $0 <= 57) || ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) || $0 == 95 || $0 == 45 }
        guard tokenShaped else {
            throw GatewayError.badRequest(.badPlainToken, "plain_token must be 1-64 characters of [A-Za-z0-9_-]")
        }
        guard (1...13).contains(eventTS.utf8.count), eventTS.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }) else {
            throw GatewayError.badRequest(.badEventTs, "event_ts must be unix time in digits")
        }
        return .json(QQValidation(plain_token: token, signature: crypto.sign(Array((eventTS + token).utf8))))
    }
}

struct QQAck: Encodable { let op: Int; let d: Int }
struct QQValidation: Encodable { let plain_token: String; let signature: String }

enum QQEvents {
    static func envelope(_ payload: [String: JSONValue], app: String, receivedAt: Date) throws(GatewayError) -> Envelope {
        guard let eventID = payload["id"]?.string, !eventID.isEmpty, let type = payload["t"]?.string, !type.isEmpty else {
            throw GatewayError.badRequest(.malformedMessage, "op 0 needs id and t")
        }
        var data: [String: JSONValue] = [:]
        if case .object(let d) = payload["d"] { data = d }
        var author: [String: JSONValue] = [:]
        if case .object(let a) = data["author"] { author = a }
        let openid = author["member_openid"]?.string ?? author["user_openid"]?.string ?? author["union_openid"]?.string
            ?? data["openid"]?.string ?? data["group_member_openid"]?.string ?? author["id"]?.string
        var attributes: [String: JSONValue] = ["raw": .object(payload)]
        let kind: EventKind
        switch type {
        case "C2C_MESSAGE_CREATE", "GROUP_AT_MESSAGE_CREATE", "AT_MESSAGE_CREATE", "DIRECT_MESSAGE_CREATE":
            kind = .text
            if let content = data["content"]?.string { attributes["content"] = .string(content.trimmingWhitespace()) }
            if let group = data["group_openid"]?.string { attributes["groupOpenid"] = .string(group) }
            if let messageID = data["id"]?.string { attributes["msgId"] = .string(messageID) }
        case "FRIEND_ADD": kind = .subscribe
        case "FRIEND_DEL": kind = .unsubscribe
        default: kind = .passthrough(type, platform: .qq)
        }
        var occurred = receivedAt
        if let text = data["timestamp"]?.string {
            guard let time = RFC3339.parse(text) else {
                throw GatewayError.badRequest(.malformedMessage, "d.timestamp is not an RFC 3339 time")
            }
            occurred = try WebhookInput.time(time, "d.timestamp")
        }
        return Envelope(id: EventID.derive(.qq, app: app, ["event", eventID]), platform: .qq, app: app, kind: kind,
                        subject: Envelope.Subject(openid: try WebhookInput.identity(openid, "openid"),
                                                  unionid: try WebhookInput.identity(author["union_openid"]?.string, "union_openid"),
                                                  verified: true),
                        occurredAt: occurred, receivedAt: receivedAt, attributes: try WebhookInput.attributes(attributes))
    }
}
