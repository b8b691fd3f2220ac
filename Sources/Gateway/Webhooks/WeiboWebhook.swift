import Apps
import Contracts
import Foundation
import Hummingbird
import Platforms

/// `GET|POST /weibo/{appId}`: Weibo fan-service push. Signature = sha1 of the sorted app secret,
/// timestamp and nonce (as WeChat's, with the app secret for the token); GET echoes `echostr`.
extension Gateway {
    func addWeiboRoutes(_ router: Router<GatewayRequestContext>) {
        router.get("/weibo/:appId") { request, context in
            let query = try await weiboVerified(request, context).query
            guard let echostr = query["echostr"] else {
                throw GatewayError.badRequest(.missingEchostr, "echostr is required for URL verification")
            }
            return Response.text(echostr)
        }
        router.post("/weibo/:appId") { request, context in
            let (app, query) = try await weiboVerified(request, context)
            let body = try await request.collectBody(upTo: Self.webhookBodyLimit)
            // Weibo signs the query, not the body: the same signature with another body is a replay.
            try await refuseReplay(platform: "weibo", app: app.appID, signature: query["signature"] ?? "", body: body)
            let envelope = try WeiboEvents.envelope(body, app: app.appID, receivedAt: Date())
            try await publishWebhookEvent(envelope)
            // An empty body: no passive reply.
            return Response(status: .ok)
        }
    }

    private func weiboVerified(_ request: Request, _ context: GatewayRequestContext) async throws(GatewayError)
        -> (app: RegisteredApp, query: [String: String]) {
        let app = try await webhookApp(.weibo, context)
        guard case .weibo(let credentials) = app.credentials else { throw GatewayError.unknownApp("weibo", app.appID) }
        let query = request.uri.queryParameters.flattened
        guard let signature = query["signature"], let timestamp = query["timestamp"], let nonce = query["nonce"] else {
            throw GatewayError.unauthorized(.missingSignature, "signature, timestamp and nonce are required")
        }
        guard Bytes.hexSignatureMatches(signature, WeChatCrypto.signature([credentials.appSecret, timestamp, nonce])) else {
            throw GatewayError.forbidden(.badSignature, "signature does not match")
        }
        // Weibo signs like WeChat (sorted, joined): its milliseconds must be exactly 13 digits.
        try freshness.check(timestamp, now: Date().timeIntervalSince1970, unit: .milliseconds)
        return (app, query)
    }
}

enum WeiboEvents {
    /// Weibo's `created_at`, e.g. `Mon Jul 16 18:09:20 +0800 2012`.
    static func parseTime(_ text: String) -> Date? {
        let parts = text.split(separator: " ")
        guard parts.count == 6 else { return nil }
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        guard let monthIndex = months.firstIndex(of: String(parts[1])), let day = Int64(parts[2]),
              let year = Int64(parts[5]) else { return nil }
        let clock = parts[3].split(separator: ":").compactMap { Int64($0) }
        let zone = parts[4]
        guard clock.count == 3, zone.count == 5, let zoneHours = Int64(zone.dropFirst().prefix(2)),
              let zoneMinutes = Int64(zone.suffix(2)) else { return nil }
        let month = String(monthIndex + 1).count == 1 ? "0\(monthIndex + 1)" : "\(monthIndex + 1)"
        func pad(_ v: Int64) -> String { v < 10 ? "0\(v)" : "\(v)" }
        let rfc = "\(year)-\(month)-\(pad(day))T\(pad(clock[0])):\(pad(clock[1])):\(pad(clock[2]))\(zone.first ?? "+")\(pad(zoneHours)):\(pad(zoneMinutes))"
        return RFC3339.parse(rfc)
    }

    static func envelope(_ body: [UInt8], app: String, receivedAt: Date) throws(GatewayError) -> Envelope {
        guard let value = try? JSONValue.parse(body), case .object(let message) = value else {
            throw GatewayError.badRequest(.malformedJson, "body is not a JSON object")
        }
        func field(_ name: String) -> String? {
            switch message[name] {
            case .string(let s): s
            case .integer(let i): String(i)
            case .number(let n): String(n)
            default: nil
            }
        }
        guard let sender = field("sender_id"), !sender.isEmpty else {
            throw GatewayError.badRequest(.malformedMessage, "sender_id is missing")
        }
        guard let type = field("type"), !type.isEmpty else { throw GatewayError.badRequest(.malformedMessage, "type is missing") }
        var data: [String: JSONValue] = [:]
        if case .object(let d) = message["data"] { data = d }
        let subtype = data["subtype"]?.string ?? ""
        let key = data["key"]?.string ?? ""
        var attributes: [String: JSONValue] = ["raw": .object(message)]
        let kind: EventKind
        switch (type, subtype) {
        case ("event", "follow"), ("event", "subscribe"):
            kind = .subscribe
        case ("event", "scan_follow"):
            kind = .subscribe
            if !key.isEmpty { attributes["scene"] = .string(key) }
        case ("event", "unfollow"), ("event", "unsubscribe"):
            kind = .unsubscribe
        case ("event", "scan"):
            kind = .scan
            if !key.isEmpty { attributes["scene"] = .string(key) }
        case ("event", "click"):
            kind = .click
            if !key.isEmpty { attributes["eventKey"] = .string(key) }
        case ("event", "view"):
            kind = .view
            if !key.isEmpty { attributes["url"] = .string(key) }
        case ("event", _):
            kind = .passthrough(subtype, platform: .weibo)
        case ("text", _):
            kind = .text
            if let text = field("text") { attributes["content"] = .string(text) }
        case ("image", _): kind = .image
        case ("voice", _): kind = .voice
        case ("position", _):
            kind = .locationMessage
            if let lat = data["latitude"] { attributes["latitude"] = lat }
            if let lon = data["longitude"] { attributes["longitude"] = lon }
        default:
            kind = .passthrough(type, platform: .weibo, message: true)
        }
        let created = field("created_at") ?? ""
        // Weibo sends no message id: sender, time, type, subtype, key and text tell events apart.
        let id = EventID.derive(.weibo, app: app, ["event", field("receiver_id") ?? "", sender, created, type, subtype, key,
                                                   field("text") ?? ""])
        var occurred = receivedAt
        if let time = parseTime(created) { occurred = try WebhookInput.time(time, "created_at") }
        return Envelope(id: id, platform: .weibo, app: app, kind: kind,
                        subject: Envelope.Subject(openid: try WebhookInput.identity(sender, "sender_id"), verified: true),
                        occurredAt: occurred, receivedAt: receivedAt, attributes: try WebhookInput.attributes(attributes))
    }
}
