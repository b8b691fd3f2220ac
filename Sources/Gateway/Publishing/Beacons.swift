import Contracts
import Foundation
import Hummingbird

/// `POST /v1/collect`, `GET /v1/collect.gif` and `GET /v1/sdk.js`: H5 page beacons, published with
/// platform `h5`. Pages cannot keep a secret, so beacons are not signed: the site must be a
/// registered `server` app, and per-site and per-IP limits bound what one page can send.
extension Gateway {
    static let beaconBodyLimit = 64 * 1024
    static let beaconBatchLimit = 50

    func addBeaconRoutes(_ router: Router<GatewayRequestContext>) {
        router.post("/v1/collect") { request, context in
            let body = try await request.collectBody(upTo: Self.beaconBodyLimit)
            return try await collect(body, siteParameter: request.uri.queryParameters["site"].map(String.init),
                                     authorization: request.headers[.authorization], context)
        }
        router.get("/v1/collect.gif") { request, context in
            // The pixel carries the same JSON batch, URL-encoded in `d`.
            guard let data = request.uri.queryParameters["d"] else {
                throw GatewayError.badRequest(.missingData, "d (the JSON batch) is required")
            }
            // The router decodes %FF to U+FFFD without a word; the raw bytes must be UTF-8 like any body.
            if let raw = FormBody.parse(Array((request.uri.query ?? "").utf8))?.first(where: { $0.name == "d" }) {
                _ = try requireUTF8(raw.value)
            }
            var response = try await collect(Array(String(data).utf8), siteParameter: request.uri.queryParameters["site"].map(String.init),
                                             authorization: request.headers[.authorization], context)
            response.headers[.contentType] = "image/gif"
            response.headers[.cacheControl] = "no-store"
            response.body = .init(byteBuffer: ByteBuffer(bytes: Self.pixel))
            return response
        }
        router.get("/v1/sdk.js") { _, _ in
            Response(status: .ok, headers: [.contentType: "application/javascript; charset=utf-8", .cacheControl: "public, max-age=300"],
                     body: .init(byteBuffer: ByteBuffer(bytes: Self.sdk)))
        }
    }

    static let sdk: [UInt8] = {
        guard let url = Bundle.module.url(forResource: "sdk", withExtension: "js"),
              let data = try? Data(contentsOf: url) else { return Array("/* sdk.js missing from this build */".utf8) }
        return Array(data)
    }()

    /// A 1×1 transparent GIF.
    static let pixel: [UInt8] = [
        0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
        0xFF, 0xFF, 0xFF, 0x21, 0xF9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2C, 0x00, 0x00, 0x00, 0x00,
        0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3B,
    ]

    func collect(_ body: [UInt8], siteParameter: String?, authorization: String?, _ context: GatewayRequestContext) async throws -> Response {
        guard let root = try? JSONValue.parse(body), case .object(let batch) = root else {
            throw GatewayError.badRequest(.malformedJson, "body must be a JSON object")
        }
        guard let site = batch["site"]?.string ?? siteParameter, !site.isEmpty else {
            throw GatewayError.badRequest(.missingSite, "site is required (in the body or as ?site=)")
        }
        guard InputLimits.identityProblem(site, maxBytes: 64) == nil else {
            throw GatewayError.badRequest(.invalidSite, "site must be 1-64 visible ASCII characters")
        }
        guard let clientID = batch["clientId"]?.string, InputLimits.identityProblem(clientID, maxBytes: 64) == nil else {
            throw GatewayError.badRequest(.missingClientId, "clientId must be a string of 1-64 visible ASCII characters")
        }
        guard case .array(let items) = batch["events"], !items.isEmpty else {
            throw GatewayError.badRequest(.missingEvents, "events must be a non-empty array")
        }
        guard items.count <= Self.beaconBatchLimit else {
            throw GatewayError(.contentTooLarge, .tooManyEvents, "at most \(Self.beaconBatchLimit) events per beacon")
        }
        let member = try beaconMember(authorization: authorization, field: batch["token"])
        _ = try await apps.gatewayApp(.server, site, client: context.clientIP)
        switch beaconLimits.take(site: site, ip: context.clientIP, cost: items.count) {
        case .allowed: break
        case .siteLimited:
            metrics.count(.beaconsRateLimited, by: items.count)
            throw GatewayError(.tooManyRequests, .rateLimited, "site \(site) is sending beacons faster than allowed")
        case .ipLimited:
            metrics.count(.beaconsRateLimited, by: items.count)
            throw GatewayError(.tooManyRequests, .rateLimited, "this client is sending beacons faster than allowed")
        }

        let receivedAt = Date()
        var envelopes: [Envelope] = []
        var rejected: [BeaconRejection] = []
        for item in items {
            switch BeaconEvents.envelope(item, site: site, clientID: clientID, member: member, receivedAt: receivedAt) {
            case .success(let envelope): envelopes.append(envelope)
            case .failure(let rejection) where rejection.invalidSubject:
                // A page that sends a malformed identity is broken or forging: nothing of the batch goes out.
                throw GatewayError.badRequest(.invalidSubject, "event \(rejection.id): \(rejection.reason)")
            case .failure(let rejection): rejected.append(rejection)
            }
        }
        metrics.events("rejected", by: rejected.count)
        var accepted = 0, duplicates = 0
        for outcome in await publisher.publish(envelopes) {
            metrics.events(outcome.outcomeName)
            switch outcome {
            case .accepted: accepted += 1
            case .duplicate: duplicates += 1
            case .inFlight, .failed(_):
                throw GatewayError.unavailable(.publishUnconfirmed, "beacons were not confirmed by the broker; retry")
            }
        }
        return .json(BeaconAnswer(accepted: accepted, duplicates: duplicates, rejected: rejected))
    }

    /// The member a beacon's token names (`Authorization: Bearer m1…`, or the batch's `token`
    /// field where the page cannot set headers: `sendBeacon`, the pixel), nil without one. A token
    /// that is present but not valid is refused (401), not quietly read as a claim.
    func beaconMember(authorization: String?, field: JSONValue?) throws(GatewayError) -> Int64? {
        let token: String
        if let header = authorization, header.hasPrefix("Bearer ") {
            token = String(header.dropFirst(7))
        } else {
            switch field {
            case nil, .null?: return nil
            case .string(let text)?: token = text
            default: throw GatewayError.unauthorized(.badToken, "token must be a member token (a string)")
            }
        }
        do {
            return try memberTokens.verify(token)
        } catch {
            switch error {
            case .expired: throw GatewayError.unauthorized(.tokenExpired, "the member token has expired; mint a new one or send none")
            case .malformed, .badSignature: throw GatewayError.unauthorized(.badToken, "the member token is not valid")
            }
        }
    }
}

struct BeaconAnswer: Encodable {
    let accepted: Int
    let duplicates: Int
    let rejected: [BeaconRejection]
}

struct BeaconRejection: Error, Encodable {
    let id: String
    let reason: String
    /// The event's openid is malformed: the whole beacon is refused with 400 `invalid_subject`.
    var invalidSubject = false

    enum CodingKeys: String, CodingKey { case id, reason }
}

enum BeaconEvents {
    /// Fields the envelope names; any others the page sends are kept as they are.
    static let textLimits: [String: Int] = ["url": 2048, "title": 512, "referrer": 2048, "openid": 128, "sharedBy": 128]

    /// One beacon event's envelope. With `member` (from a valid member token) the subject is that
    /// member, verified, and the page's `openid` is not used; without, the page's `openid` is a
    /// claim (`verified: false`).
    static func envelope(_ item: JSONValue, site: String, clientID: String, member: Int64? = nil,
                         receivedAt: Date) -> Result<Envelope, BeaconRejection> {
        guard case .object(let event) = item else { return .failure(BeaconRejection(id: "", reason: "event must be an object")) }
        guard let id = event["id"]?.string, UUID(uuidString: id) != nil else {
            return .failure(BeaconRejection(id: event["id"]?.string ?? "", reason: "id must be a UUID"))
        }
        func reject(_ reason: String) -> Result<Envelope, BeaconRejection> { .failure(BeaconRejection(id: id, reason: reason)) }
        guard let type = event["type"]?.string, (1...32).contains(type.utf8.count),
              type.utf8.allSatisfy({ ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 95 }) else {
            return reject("type must be 1-32 characters of [a-z0-9_]")
        }
        guard let timeText = event["occurredAt"]?.string, let occurredAt = RFC3339.parse(timeText) else {
            return reject("occurredAt must be an RFC 3339 time")
        }
        guard InputLimits.isPlausible(occurredAt) else {
            return reject("malformed_message: occurredAt is outside 2000-01-01..2100-01-01")
        }
        if case .string(let openid)? = event["openid"], let problem = InputLimits.identityProblem(openid) {
            return .failure(BeaconRejection(id: id, reason: "openid \(problem)", invalidSubject: true))
        }
        var attributes: [String: JSONValue] = [:]
        for (name, value) in event where !["id", "type", "occurredAt"].contains(name) {
            if let limit = textLimits[name] {
                guard case .string(let text) = value, text.utf8.count <= limit else {
                    return reject("\(name) must be a string of at most \(limit) bytes")
                }
            }
            attributes[name] = value
        }
        let openid = event["openid"]?.string
        attributes.removeValue(forKey: "openid")
        // Only a token names a member: a page's own `memberId` is dropped, never passed on.
        attributes.removeValue(forKey: "memberId")
        if let problem = InputLimits.attributesProblem(attributes) { return reject(problem) }
        attributes["clientId"] = .string(clientID)
        let subject: Envelope.Subject
        if let member {
            // Also among the attributes, which the behavior table keeps whole.
            attributes["memberId"] = .integer(member)
            subject = Envelope.Subject(memberId: member, verified: true)
        } else {
            subject = Envelope.Subject(openid: openid, verified: false)
        }
        return .success(Envelope(id: EventID.derive(.h5, app: site, ["beacon", id.lowercased()]), platform: .h5, app: site,
                                 kind: EventKind(type), subject: subject,
                                 occurredAt: occurredAt, receivedAt: receivedAt, attributes: attributes))
    }
}
