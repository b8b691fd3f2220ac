import Audiences
import Contracts
import Foundation
import Hummingbird
import Loyalty

/// Saved segments over HTTP, relative to `/admin/v1`: `PUT|GET|DELETE /segments/{code}`,
/// `GET /segments`, `GET /segments/{code}/members`, `POST /segments/preview`. Thin: each route
/// decodes, calls ``SegmentStore`` and maps its outcome. The level table comes from the loyalty
/// program, read when an expression ranks levels.
extension Gateway {
    func addSegmentAdminRoutes(_ admin: RouterGroup<GatewayRequestContext>) {
        admin.addRoutes(segmentAdminRoutes(segmentStore()))
    }

    /// Segments over this gateway's database, levels ranked by the loyalty program's table.
    func segmentStore() -> SegmentStore {
        let rules = RuleStore(database: database)
        return SegmentStore(database: database) { try await rules.levels().levels.map(\.name) }
    }

    func segmentAdminRoutes(_ segments: SegmentStore) -> RouteCollection<GatewayRequestContext> {
        let routes = RouteCollection(context: GatewayRequestContext.self)
        routes.get("/segments") { _, _ in
            Response.json(["segments": .array(try await stored { try await segments.list() }.map(\.json))])
        }
        routes.post("/segments/preview") { request, _ in
            let match: SegmentMatch
            do { match = try Segment.parsePreview(try await Self.jsonBody(request)) } catch let problem as DefinitionProblem {
                throw Self.unprocessable(.invalidSegment, problem)
            }
            switch try await stored({ try await segments.preview(match) }) {
            case .evaluated(let reach): return Response.json(reach.json)
            case .unknownTag(let problem): throw Self.unprocessable(.invalidSegment, problem)
            }
        }
        routes.put("/segments/:code") { request, context in
            let code = try Self.segmentCode(context)
            let segment: Segment
            do { segment = try Segment.parse(code: code, json: try await Self.jsonBody(request)) } catch let problem as DefinitionProblem {
                throw Self.unprocessable(.invalidSegment, problem)
            }
            switch try await stored({ try await segments.put(segment) }) {
            case .saved(let created, let evaluated): return Response.json(evaluated.json, status: created ? .created : .ok)
            case .unknownTag(let problem): throw Self.unprocessable(.invalidSegment, problem)
            }
        }
        routes.get("/segments/:code") { _, context in
            let code = try Self.segmentCode(context)
            guard let evaluated = try await stored({ try await segments.get(code) }) else { throw Self.unknownSegment(code) }
            return Response.json(evaluated.json)
        }
        routes.delete("/segments/:code") { _, context in
            let code = try Self.segmentCode(context)
            guard try await stored({ try await segments.delete(code) }) else { throw Self.unknownSegment(code) }
            return Response(status: .noContent)
        }
        routes.get("/segments/:code/members") { request, context in
            let code = try Self.segmentCode(context)
            let (after, limit) = try Self.segmentPage(request)
            guard let page = try await stored({ try await segments.page(segment: code, after: after, limit: limit) }) else {
                throw Self.unknownSegment(code)
            }
            return Response.json(["members": .array(page.members.map(JSONValue.integer)),
                                  "nextCursor": page.next.map { .string(String($0)) } ?? .null])
        }
        return routes
    }

    static func segmentCode(_ context: GatewayRequestContext) throws(GatewayError) -> String {
        let code = context.parameters.get("code") ?? ""
        guard AudienceCode.isValid(code) else {
            throw GatewayError(.unprocessableContent, .invalidSegment, "a segment code is \(AudienceCode.rule)", path: "code")
        }
        return code
    }

    static func unknownSegment(_ code: String) -> GatewayError { GatewayError(.notFound, .unknownSegment, "no segment \(code)") }

    /// `?limit=` (1-1000, 100 by default) and `?cursor=` (the `nextCursor` of the page before: the
    /// last member id it held).
    static func segmentPage(_ request: Request) throws(GatewayError) -> (after: Int64, limit: Int) {
        let query = request.uri.queryParameters
        var limit = 100
        if let text = query["limit"] {
            guard text.utf8.count <= 4, let value = Int(text), (1...SegmentStore.maximumPage).contains(value) else {
                throw GatewayError.badRequest(.invalidLimit, "limit is 1-\(SegmentStore.maximumPage)")
            }
            limit = value
        }
        var after: Int64 = 0
        if let text = query["cursor"] {
            guard text.utf8.count <= 19, text.utf8.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }),
                  let value = Int64(text), value > 0 else {
                throw GatewayError.badRequest(.invalidCursor, "cursor is the nextCursor of the page before")
            }
            after = value
        }
        return (after, limit)
    }
}

extension SegmentReach {
    var json: [String: JSONValue] {
        ["reach": .integer(members), "evaluatedAt": .string(RFC3339.format(evaluatedAt))]
    }
}

extension EvaluatedSegment {
    var json: [String: JSONValue] {
        var fields = reach.json
        fields["code"] = .string(segment.code)
        fields["name"] = .string(segment.name)
        fields["match"] = segment.match.json
        return fields
    }
}

extension StoredSegment {
    var json: JSONValue {
        .object(["code": .string(segment.code), "name": .string(segment.name), "match": segment.match.json,
                 "createdAt": .string(RFC3339.format(createdAt)), "updatedAt": .string(RFC3339.format(updatedAt))])
    }
}
