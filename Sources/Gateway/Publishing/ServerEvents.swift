import Contracts
@preconcurrency import Crypto
import Foundation
import Hummingbird
import Platforms

/// `POST /v1/events`: business events from the brand's own systems, HMAC-signed.
extension Gateway {
    static let serverEventsLimit = 500
    static let serverEventsBodyLimit = 4 * 1024 * 1024

    func addServerEventRoutes(_ router: Router<GatewayRequestContext>) {
        router.post("/v1/events") { request, context in
            try await serverEvents(request, context)
        }
    }

    func serverEvents(_ request: Request, _ context: GatewayRequestContext) async throws -> Response {
        // Everything that costs nothing comes first: the headers' format and size, the timestamp's
        // freshness and the declared body size; then the app (cached, unknown ids too, and limited
        // per client before a lookup reaches the database); only then the body and its HMAC.
        let (appID, timestamp, received) = try ServerEventHeaders.check(request.headers)
        let receivedAt = Date()
        try freshness.check(timestamp, now: receivedAt.timeIntervalSince1970)
        if let length = request.headers[.contentLength].flatMap({ Int($0) }), length > Self.serverEventsBodyLimit {
            throw GatewayError(.contentTooLarge, .bodyTooLarge, "body is larger than \(Self.serverEventsBodyLimit) bytes")
        }
        let app = try await apps.gatewayApp(.server, appID, client: context.clientIP)
        guard let key = app.hmacKey else { throw GatewayError.unknownApp("server", appID) }
        let body = try await request.collectBody(upTo: Self.serverEventsBodyLimit)
        let expected = HMAC<SHA256>.authenticationCode(for: Array(timestamp.utf8) + [UInt8(ascii: ".")] + body, using: key)
        guard Bytes.constantTimeEquals(received, Array(expected)) else {
            throw GatewayError.forbidden(.badSignature, "HMAC-SHA256 signature does not match")
        }

        guard let root = try? JSONValue.parse(body), case .object(let object) = root,
              case .array(let items) = object["events"] else {
            throw GatewayError.badRequest(.malformedJson, #"body must be {"events":[…]}"#)
        }
        guard items.count <= Self.serverEventsLimit else {
            throw GatewayError(.contentTooLarge, .tooManyEvents, "at most \(Self.serverEventsLimit) events per request, got \(items.count)")
        }

        var results: [ServerEventResult] = []
        var envelopes: [Envelope] = []
        var positions: [Int] = []
        var seen = Set<String>()
        for item in items {
            switch ServerEvents.validate(item, serverApp: appID, receivedAt: receivedAt) {
            case .failure(let rejection):
                results.append(ServerEventResult(id: rejection.id, status: "rejected", reason: rejection.reason))
            case .success(let envelope):
                let brandID = envelope.attributes["sourceEventId"]?.string ?? ""
                if !seen.insert(envelope.id).inserted {
                    results.append(ServerEventResult(id: brandID, status: "duplicate", reason: "repeated in this request"))
                    continue
                }
                positions.append(results.count)
                results.append(ServerEventResult(id: brandID, status: "accepted", reason: nil))
                envelopes.append(envelope)
            }
        }
        metrics.events("rejected", by: results.count - envelopes.count)

        var retryable = false
        for (position, outcome) in zip(positions, await publisher.publish(envelopes)) {
            metrics.events(outcome.outcomeName)
            switch outcome {
            case .accepted: break
            case .duplicate: results[position].status = "duplicate"
            case .inFlight:
                retryable = true
                results[position].status = "rejected"
                results[position].reason = "in_flight: being published by another request; retry"
            case .failed(let why):
                retryable = true
                results[position].status = "rejected"
                // The broker's own words go to the log, not to the sender.
                logger.warning("server event not confirmed", metadata: ["id": "\(results[position].id)", "error": "\(why)"])
                results[position].reason = "unavailable: the broker did not confirm; retry"
            }
        }
        // 503 tells the sender to retry the request; what was accepted comes back as "duplicate".
        return .json(ServerEventResults(results: results), status: retryable ? .serviceUnavailable : .ok)
    }

}

struct ServerEventResult: Encodable {
    var id: String
    var status: String
    var reason: String?

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(id, forKey: .id)
        try container.encode(status, forKey: .status)
        // `reason` is always present: null when accepted, so clients can read one shape.
        try container.encode(reason, forKey: .reason)
    }
    enum CodingKeys: String, CodingKey { case id, status, reason }
}

struct ServerEventResults: Encodable { let results: [ServerEventResult] }

enum ServerEvents {
    struct Rejection: Error { let id: String; let reason: String }

    static let memberPlatforms: Set<String> = ["wechat", "alipay", "weibo", "qq"]

    /// Checks one event and builds its envelope; the reason names the first problem found.
    static func validate(_ item: JSONValue, serverApp: String, receivedAt: Date) -> Result<Envelope, Rejection> {
        guard case .object(let event) = item else { return .failure(Rejection(id: "", reason: "event must be an object")) }
        guard let id = event["id"]?.string, InputLimits.identityProblem(id) == nil else {
            return .failure(Rejection(id: "", reason: "id must be a string of 1-128 visible ASCII characters"))
        }
        func reject(_ reason: String) -> Result<Envelope, Rejection> { .failure(Rejection(id: id, reason: reason)) }
        guard let kindText = event["kind"]?.string, isKind(kindText) else {
            return reject("kind must be dotted lower-case words of [a-z0-9_-], at most \(InputLimits.kindMaxBytes) bytes, "
                + "like community.post, and may not begin with a platform's name (wechat., alipay., weibo., qq., h5., server., fanflow.)")
        }
        guard case .object(let member) = event["member"] else { return reject("member is required") }
        guard let platform = member["platform"]?.string, memberPlatforms.contains(platform),
              let memberPlatform = Platform(rawValue: platform) else {
            return reject("member.platform must be one of wechat, alipay, weibo, qq")
        }
        guard let memberApp = member["app"]?.string, InputLimits.identityProblem(memberApp, maxBytes: 64) == nil else {
            return reject("member.app must be a string of 1-64 visible ASCII characters")
        }
        // The subject's reasons begin with invalid_subject, the code webhooks and beacons answer.
        guard let openid = member["openid"]?.string else { return reject("invalid_subject: member.openid is required (a string)") }
        if let problem = InputLimits.identityProblem(openid) { return reject("invalid_subject: member.openid \(problem)") }
        var unionid: String?
        if let value = member["unionid"], value != .null {
            guard let text = value.string else { return reject("invalid_subject: member.unionid must be a string") }
            if let problem = InputLimits.identityProblem(text) { return reject("invalid_subject: member.unionid \(problem)") }
            unionid = text
        }
        guard let timeText = event["occurredAt"]?.string, let occurredAt = RFC3339.parse(timeText) else {
            return reject("occurredAt must be an RFC 3339 time")
        }
        guard occurredAt.timeIntervalSince(receivedAt) <= 300, InputLimits.isPlausible(occurredAt) else {
            return reject("malformed_message: occurredAt is in the future or outside 2000-01-01..2100-01-01")
        }
        var attributes: [String: JSONValue] = [:]
        switch event["attributes"] {
        case .none, .null?: break
        case .object(let given)?: attributes = given
        default: return reject("attributes must be an object")
        }
        if let problem = InputLimits.attributesProblem(attributes) { return reject(problem) }
        if let problem = attributeProblem(EventKind(kindText), attributes) { return reject(problem) }
        attributes["sourceApp"] = .string(serverApp)
        attributes["sourceEventId"] = .string(id)
        return .success(Envelope(id: EventID.derive(.server, app: serverApp, ["event", id]), platform: memberPlatform,
                                 app: memberApp, kind: EventKind(kindText),
                                 subject: Envelope.Subject(openid: openid, unionid: unionid, verified: true),
                                 occurredAt: occurredAt, receivedAt: receivedAt, attributes: attributes))
    }

    /// A business kind: `[a-z0-9._-]` words, fitting a routing key, outside the platforms' namespaces.
    static func isKind(_ text: String) -> Bool { InputLimits.isBusinessKind(text) }

    /// The attributes each business kind must carry, with their types.
    static func attributeProblem(_ kind: EventKind, _ attributes: [String: JSONValue]) -> String? {
        func string(_ name: String, required: Bool) -> String? {
            switch attributes[name] {
            case .string(let s)? where !s.isEmpty && s.utf8.count <= 256: return nil
            case nil, .null?: return required ? "attributes.\(name) is required (a string)" : nil
            default: return "attributes.\(name) must be a non-empty string"
            }
        }
        switch kind {
        case .orderPaid, .orderDelivered, .orderRefunded:
            if let problem = string("orderId", required: true) { return problem }
            // Bounded so that rules' per-amount arithmetic and any sum of amounts stay far from overflow.
            guard let amount = attributes["amount"]?.intStrict, (0...InputLimits.maximumFen).contains(amount) else {
                return "attributes.amount is required: an integer number of fen, 0-\(InputLimits.maximumFen)"
            }
            return nil
        case .memberRegistered:
            // An openid the points pool makes a member of: an identity like the subject's.
            if case .string(let referrer)? = attributes["referredBy"], let problem = InputLimits.identityProblem(referrer) {
                return "invalid_subject: attributes.referredBy \(problem)"
            }
            return string("referredBy", required: false)
        case .memberPhoneBound:
            guard let phone = attributes["phone"]?.string, (5...20).contains(phone.utf8.count),
                  phone.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || $0 == 43 }) else {
                return "attributes.phone is required: 5-20 digits, optionally with a leading +"
            }
            return nil
        case .codeVerified:
            return string("code", required: true)
        case .communityPost, .communityComment, .communityShare, .communityLike:
            return string("postId", required: false)
        default:
            return nil
        }
    }
}
