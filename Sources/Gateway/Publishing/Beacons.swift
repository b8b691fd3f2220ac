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
            return try await collect(body, siteParameter: request.uri.queryParameters["site"].map(String.init), context)
        }
        router.get("/v1/collect.gif") { request, context in
            // The pixel carries the same JSON batch, URL-encoded in `d`.
            guard let data = request.uri.queryParameters["d"] else {
                throw GatewayError.badRequest("missing_data", "d (the JSON batch) is required")
            }
            var response = try await collect(Array(String(data).utf8), siteParameter: request.uri.queryParameters["site"].map(String.init), context)
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

    func collect(_ body: [UInt8], siteParameter: String?, _ context: GatewayRequestContext) async throws -> Response {
        guard let root = try? JSONValue.parse(body), case .object(let batch) = root else {
            throw GatewayError.badRequest("malformed_json", "body must be a JSON object")
        }
        guard let site = batch["site"]?.string ?? siteParameter, !site.isEmpty else {
            throw GatewayError.badRequest("missing_site", "site is required (in the body or as ?site=)")
        }
        guard let clientID = batch["clientId"]?.string, (1...64).contains(clientID.utf8.count) else {
            throw GatewayError.badRequest("missing_client_id", "clientId must be a string of 1-64 bytes")
        }
        guard case .array(let items) = batch["events"], !items.isEmpty else {
            throw GatewayError.badRequest("missing_events", "events must be a non-empty array")
        }
        guard items.count <= Self.beaconBatchLimit else {
            throw GatewayError(.contentTooLarge, "too_many_events", "at most \(Self.beaconBatchLimit) events per beacon")
        }
        _ = try await apps.app(.server, site, client: context.clientIP)
        switch beaconLimits.take(site: site, ip: context.clientIP, cost: items.count) {
        case .allowed: break
        case .siteLimited:
            metrics.count(.beaconsRateLimited, by: items.count)
            throw GatewayError(.tooManyRequests, "rate_limited", "site \(site) is sending beacons faster than allowed")
        case .ipLimited:
            metrics.count(.beaconsRateLimited, by: items.count)
            throw GatewayError(.tooManyRequests, "rate_limited", "this client is sending beacons faster than allowed")
        }

        let receivedAt = Date()
        var envelopes: [Envelope] = []
        var rejected: [BeaconRejection] = []
        for item in items {
            switch BeaconEvents.envelope(item, site: site, clientID: clientID, receivedAt: receivedAt) {
            case .success(let envelope): envelopes.append(envelope)
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
                throw GatewayError.unavailable("publish_unconfirmed", "beacons were not confirmed by the broker; retry")
            }
        }
        return .json(BeaconAnswer(accepted: accepted, duplicates: duplicates, rejected: rejected))
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
}

enum BeaconEvents {
    /// Fields the envelope names; any others the page sends are kept as they are.
    static let textLimits: [String: Int] = ["url": 2048, "title": 512, "referrer": 2048, "openid": 128, "sharedBy": 128]

    static func envelope(_ item: JSONValue, site: String, clientID: String, receivedAt: Date) -> Result<Envelope, BeaconRejection> {
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
        var attributes: [String: JSONValue] = [:]
        for (name, value) in event where !["id", "type", "occurredAt"].contains(name) {
            if let limit = textLimits[name] {
                guard case .string(let text) = value, text.utf8.count <= limit else {
                    return reject("\(name) must be a string of at most \(limit) bytes")
                }
            }
            attributes[name] = value
        }
        attributes["clientId"] = .string(clientID)
        let openid = event["openid"]?.string
        attributes.removeValue(forKey: "openid")
        return .success(Envelope(id: EventID.derive(.h5, app: site, ["beacon", id.lowercased()]), platform: .h5, app: site,
                                 kind: EventKind(type), subject: Envelope.Subject(openid: openid),
                                 occurredAt: occurredAt, receivedAt: receivedAt, attributes: attributes))
    }
}
