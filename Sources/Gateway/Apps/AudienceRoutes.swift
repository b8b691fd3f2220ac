import Audiences
import Contracts
import Foundation
import Hummingbird

/// Tags and tag rules over HTTP, relative to `/admin/v1`: `PUT|GET|DELETE /tags/{code}`,
/// `GET /tags`, `GET|POST /members/{id}/tags`, `PUT|GET|DELETE /tag-rules/{code}`,
/// `GET /tag-rules`. Thin: each route decodes, calls the audience stores and maps their outcomes.
extension Gateway {
    func addAudienceAdminRoutes(_ admin: RouterGroup<GatewayRequestContext>) {
        admin.addRoutes(audienceAdminRoutes(tags: TagStore(database: database), rules: TagRuleStore(database: database)))
    }

    func audienceAdminRoutes(tags: TagStore, rules: TagRuleStore) -> RouteCollection<GatewayRequestContext> {
        let routes = RouteCollection(context: GatewayRequestContext.self)
        routes.get("/tags") { _, _ in
            Response.json(["tags": .array(try await stored { try await tags.list() }.map { JSONValue.object($0.json) })])
        }
        routes.put("/tags/:code") { request, context in
            let code = try Self.audienceCode(context, what: "tag")
            let tag: Tag
            do { tag = try Tag.parse(code: code, json: try await Self.jsonBody(request)) } catch let problem as DefinitionProblem {
                throw Self.unprocessable(.invalidTag, problem)
            }
            let created = try await stored { try await tags.put(tag) }
            guard let summary = try await stored({ try await tags.get(code) }) else { throw Self.unknownTag(code) }
            return Response.json(summary.json, status: created ? .created : .ok)
        }
        routes.get("/tags/:code") { _, context in
            let code = try Self.audienceCode(context, what: "tag")
            guard let summary = try await stored({ try await tags.get(code) }) else { throw Self.unknownTag(code) }
            return Response.json(summary.json)
        }
        routes.delete("/tags/:code") { _, context in
            let code = try Self.audienceCode(context, what: "tag")
            switch try await stored({ try await tags.delete(code) }) {
            case .deleted: return Response(status: .noContent)
            case .unknown: throw Self.unknownTag(code)
            case .inUse(let users):
                throw GatewayError(.conflict, .tagInUse, "tag rules set \(code): \(users.joined(separator: ", ")); delete or change them first")
            }
        }
        routes.get("/members/:id/tags") { _, context in
            let id = try memberID(context)
            guard let held = try await stored({ try await tags.tags(of: id) }) else { throw Self.unknownMember(id) }
            return Response.json(["tags": .array(held.map(\.json))])
        }
        routes.post("/members/:id/tags") { request, context in
            let id = try memberID(context)
            let (add, remove) = try Self.tagChange(try await Self.jsonBody(request))
            switch try await stored({ try await tags.change(member: id, add: add, remove: remove) }) {
            case .changed(let held): return Response.json(["tags": .array(held.map(\.json))])
            case .unknownMember: throw Self.unknownMember(id)
            case .unknownTags(let codes):
                throw GatewayError(.unprocessableContent, .unknownTag, "no tag \(codes.joined(separator: ", ")); create it with PUT /admin/v1/tags/{code}")
            }
        }

        routes.get("/tag-rules") { _, _ in
            Response.json(["rules": .array(try await stored { try await rules.list() }.map { JSONValue.object($0.json) })])
        }
        routes.put("/tag-rules/:code") { request, context in
            let code = try Self.audienceCode(context, what: "tag rule")
            let rule: TagRule
            do { rule = try TagRule.parse(code: code, json: try await Self.jsonBody(request)) } catch let problem as DefinitionProblem {
                throw Self.unprocessable(.invalidTagRule, problem)
            }
            let status: HTTPResponse.Status
            switch try await stored({ try await rules.save(rule) }) {
            case .saved(let created): status = created ? .created : .ok
            case .unchanged: status = .ok
            case .unknownTag(let tag):
                throw GatewayError(.unprocessableContent, .unknownTag, "no tag \(tag); create it with PUT /admin/v1/tags/{code}", path: "tag")
            case .tooManyRules:
                throw GatewayError(.conflict, .tooManyTagRules, "at most \(DefinitionLimits.maximumRules) tag rules; delete one first")
            }
            guard let saved = try await stored({ try await rules.get(code) }) else { throw Self.unknownTagRule(code) }
            return Response.json(saved.json, status: status)
        }
        routes.get("/tag-rules/:code") { _, context in
            let code = try Self.audienceCode(context, what: "tag rule")
            guard let saved = try await stored({ try await rules.get(code) }) else { throw Self.unknownTagRule(code) }
            return Response.json(saved.json)
        }
        routes.delete("/tag-rules/:code") { _, context in
            let code = try Self.audienceCode(context, what: "tag rule")
            guard try await stored({ try await rules.delete(code) }) else { throw Self.unknownTagRule(code) }
            return Response(status: .noContent)
        }
        return routes
    }

    /// A request body that must be JSON (64 KiB at most: a definition, not data).
    static func jsonBody(_ request: Request) async throws(GatewayError) -> JSONValue {
        let body = try await request.collectBody(upTo: 64 * 1024)
        guard let json = try? JSONValue.parse(body) else { throw GatewayError.badRequest(.malformedJson, "the body is not JSON") }
        return json
    }

    static func unprocessable(_ code: ErrorCode, _ problem: DefinitionProblem) -> GatewayError {
        GatewayError(.unprocessableContent, code, problem.description, path: problem.path)
    }

    static func audienceCode(_ context: GatewayRequestContext, what: String) throws(GatewayError) -> String {
        let code = context.parameters.get("code") ?? ""
        guard AudienceCode.isValid(code) else {
            throw GatewayError.badRequest(.invalidTagCode, "a \(what) code is \(AudienceCode.rule)")
        }
        return code
    }

    static func unknownTag(_ code: String) -> GatewayError { GatewayError(.notFound, .unknownTag, "no tag \(code)") }
    static func unknownTagRule(_ code: String) -> GatewayError { GatewayError(.notFound, .unknownTagRule, "no tag rule \(code)") }

    /// `{"add":[codes],"remove":[codes]}`, 100 codes at most in all.
    static func tagChange(_ json: JSONValue) throws(GatewayError) -> (add: [String], remove: [String]) {
        guard case .object(let object) = json, object.keys.allSatisfy({ $0 == "add" || $0 == "remove" }), !object.isEmpty else {
            throw GatewayError(.unprocessableContent, .invalidTagChange, #"body is {"add":[codes],"remove":[codes]}"#)
        }
        func codes(_ field: String) throws(GatewayError) -> [String] {
            guard let value = object[field] else { return [] }
            guard case .array(let items) = value, items.count <= 100 else {
                throw GatewayError(.unprocessableContent, .invalidTagChange, "\(field) is a list of at most 100 tag codes", path: field)
            }
            var list: [String] = []
            for (index, item) in items.enumerated() {
                guard let code = item.string, AudienceCode.isValid(code) else {
                    throw GatewayError(.unprocessableContent, .invalidTagChange, "a tag code is \(AudienceCode.rule)", path: "\(field)[\(index)]")
                }
                if !list.contains(code) { list.append(code) }
            }
            return list
        }
        let add = try codes("add"), remove = try codes("remove")
        guard add.count + remove.count <= 100 else {
            throw GatewayError(.unprocessableContent, .invalidTagChange, "at most 100 tag codes in one change")
        }
        return (add, remove)
    }
}

extension TagSummary {
    var json: [String: JSONValue] {
        ["code": .string(tag.code), "name": .string(tag.name), "group": tag.group.map(JSONValue.string) ?? .null,
         "description": tag.description.map(JSONValue.string) ?? .null, "members": .integer(members),
         "createdAt": .string(RFC3339.format(createdAt)), "updatedAt": .string(RFC3339.format(updatedAt))]
    }
}

extension MemberTag {
    var json: JSONValue {
        .object(["code": .string(code), "source": .string(source), "since": .string(RFC3339.format(since)),
                 "expiresAt": expiresAt.map { .string(RFC3339.format($0)) } ?? .null])
    }
}

extension StoredTagRule {
    var json: [String: JSONValue] {
        guard case .object(var fields) = rule.json else { return [:] }
        fields["code"] = .string(rule.code)
        fields["state"] = .string(state.rawValue)
        fields["progress"] = .number(progress)
        fields["scanned"] = .integer(scanned)
        fields["total"] = .integer(total)
        fields["updatedAt"] = .string(RFC3339.format(updatedAt))
        return fields
    }
}
