import Contracts
import Foundation
import Hummingbird
import Loyalty
import Members

/// `/admin/v1/points-rules`, `/admin/v1/levels` and `/admin/v1/members`: the loyalty program as
/// operators and support staff see it. Workers pick rule changes up within seconds (``RuleBook``).
extension Gateway {
    func addPointsAdminRoutes(_ admin: RouterGroup<GatewayRequestContext>) {
        let ruleStore = RuleStore(database: database)
        let queries = MemberQueries(database: database)
        let directory = MemberDirectory(database: database)

        admin.get("/points-rules") { _, _ in
            Response.json(["rules": try await stored { try await ruleStore.list() }])
        }
        admin.put("/points-rules/:code") { request, context in
            let code = try ruleCode(context)
            let body = try await request.collectBody(upTo: 64 * 1024)
            let rule: PointsRule
            do { rule = try PointsRule.parse(code: code, json: body) } catch {
                throw GatewayError.badRequest(.invalidRule, "\(error)")
            }
            let created = try await stored { try await ruleStore.put(rule) }
            return Response.json(rule, status: created ? .created : .ok)
        }
        admin.get("/points-rules/:code") { _, context in
            let code = try ruleCode(context)
            guard let rule = try await stored({ try await ruleStore.get(code) }) else { throw Self.unknownRule(code) }
            return Response.json(rule)
        }
        admin.delete("/points-rules/:code") { _, context in
            let code = try ruleCode(context)
            guard try await stored({ try await ruleStore.delete(code) }) else { throw Self.unknownRule(code) }
            return Response(status: .noContent)
        }
        for (action, enabled) in [("enable", true), ("disable", false)] {
            admin.post("/points-rules/:code/\(action)") { _, context in
                let code = try ruleCode(context)
                guard let rule = try await stored({ try await ruleStore.setEnabled(code, enabled) }) else { throw Self.unknownRule(code) }
                return Response.json(rule)
            }
        }
        admin.post("/points-rules/presets/:name") { _, context in
            guard let preset = ProgramPreset(rawValue: context.parameters.get("name") ?? "") else {
                throw GatewayError(.notFound, .unknownPreset,
                                   "presets are \(ProgramPreset.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            let rules = try await stored { try await ruleStore.apply(preset) }
            return Response.json(PresetApplied(preset: preset.rawValue, rules: rules, levels: preset.levels))
        }

        admin.get("/levels") { _, _ in Response.json(try await stored { try await ruleStore.levels() }) }
        admin.put("/levels") { request, _ in
            let body = try await request.collectBody(upTo: 64 * 1024)
            let table: LevelTable
            do { table = try LevelTable.parse(json: body) } catch {
                throw GatewayError.badRequest(.invalidLevels, "\(error)")
            }
            try await stored { try await ruleStore.putLevels(table) }
            return Response.json(table)
        }

        admin.get("/members/lookup") { request, _ in
            let query = request.uri.queryParameters
            guard let platformText = query["platform"].map(String.init), let platform = Platform(rawValue: platformText),
                  ServerEvents.memberPlatforms.contains(platformText) else {
                throw GatewayError.badRequest(.invalidPlatform, "platform must be one of wechat, alipay, weibo, qq")
            }
            guard let app = query["app"].map(String.init), !app.isEmpty, let openid = query["openid"].map(String.init), !openid.isEmpty else {
                throw GatewayError.badRequest(.invalidIdentity, "app and openid are required")
            }
            let identity = Identity(platform: platform, app: app, openid: openid)
            guard let id = try await stored({ try await directory.lookup(identity) }),
                  let member = try await stored({ try await queries.member(id) }) else {
                throw GatewayError(.notFound, .unknownMember, "no member has \(platform.rawValue) \(app) openid \(openid)")
            }
            return Response.json(member)
        }
        admin.get("/members/:id") { _, context in
            let id = try memberID(context)
            guard let member = try await stored({ try await queries.member(id) }) else { throw Self.unknownMember(id) }
            return Response.json(member)
        }
        admin.post("/members/:id/tokens") { request, context in
            let id = try memberID(context)
            let body = try await request.collectBody(upTo: 4 * 1024)
            var ttl: Int64 = 3600
            if !body.isEmpty {
                guard case .object(let object)? = try? JSONValue.parse(body) else {
                    throw GatewayError.badRequest(.malformedJson, #"body must be {"ttlSeconds":…}"#)
                }
                if let given = object["ttlSeconds"] {
                    guard let seconds = given.intStrict, (60...86_400 * 30).contains(seconds) else {
                        throw GatewayError.badRequest(.invalidTtl, "ttlSeconds must be 60-2592000")
                    }
                    ttl = seconds
                }
            }
            guard try await stored({ try await queries.member(id) }) != nil else { throw Self.unknownMember(id) }
            let expiresAt = Date().addingTimeInterval(Double(ttl))
            return Response.json(["token": memberTokens.mint(member: id, expiresAt: expiresAt), "expiresAt": RFC3339.format(expiresAt)],
                                 status: .created)
        }
        admin.get("/members/:id/ledger") { request, context in
            let id = try memberID(context)
            let filter = try ledgerFilter(request)
            guard try await stored({ try await queries.member(id) }) != nil else { throw Self.unknownMember(id) }
            let entries = try await stored { try await queries.ledger(member: id, filter) }
            return Response.json(LedgerPage(entries: entries,
                                            nextBefore: entries.count == filter.limit ? entries.last?.id : nil))
        }
    }

    static func unknownRule(_ code: String) -> GatewayError {
        GatewayError(.notFound, .unknownRule, "no points rule \(code)")
    }

    static func unknownMember(_ id: Int64) -> GatewayError {
        GatewayError(.notFound, .unknownMember, "no member \(id)")
    }

    /// Runs a storage call; a database failure is a 503 the operator can retry, not a 500.
    func stored<T: Sendable>(_ body: () async throws -> T) async throws(GatewayError) -> T {
        do {
            return try await body()
        } catch {
            // database_busy when the pool had no connection in time, else database_unavailable;
            // the error's own text is logged with the request id, not sent.
            throw GatewayError.storage(error)
        }
    }

    private func ruleCode(_ context: GatewayRequestContext) throws(GatewayError) -> String {
        let code = context.parameters.get("code") ?? ""
        guard PointsRule.isValidCode(code) else {
            throw GatewayError.badRequest(.invalidRuleCode, "a rule code is 1-64 characters of [a-z0-9._-]")
        }
        return code
    }

    func memberID(_ context: GatewayRequestContext) throws(GatewayError) -> Int64 {
        guard let id = context.parameters.get("id").flatMap({ Int64($0) }), id > 0 else {
            throw GatewayError.badRequest(.invalidMemberId, "a member id is a positive integer")
        }
        return id
    }

    private func ledgerFilter(_ request: Request) throws(GatewayError) -> LedgerFilter {
        let query = request.uri.queryParameters
        var filter = LedgerFilter()
        func time(_ name: String) throws(GatewayError) -> Date? {
            guard let text = query[Substring(name)] else { return nil }
            guard let date = RFC3339.parse(String(text)) else {
                throw GatewayError.badRequest(.invalidFilter, "\(name) must be an RFC 3339 time")
            }
            return date
        }
        filter.from = try time("from")
        filter.to = try time("to")
        filter.kind = query["kind"].map(String.init)
        filter.rule = query["rule"].map(String.init)
        if let text = query["before"] {
            guard let before = Int64(text), before > 0 else { throw GatewayError.badRequest(.invalidFilter, "before must be a ledger entry id") }
            filter.before = before
        }
        if let text = query["limit"] {
            guard let limit = Int(text), (1...500).contains(limit) else { throw GatewayError.badRequest(.invalidFilter, "limit must be 1-500") }
            filter.limit = limit
        }
        return filter
    }
}

struct PresetApplied: Encodable {
    let preset: String
    let rules: [PointsRule]
    let levels: LevelTable?
}

struct LedgerPage: Encodable {
    let entries: [LedgerEntryView]
    /// Pass as `before` for the next (older) page; null on the last page.
    let nextBefore: Int64?

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(entries, forKey: .entries)
        try container.encode(nextBefore, forKey: .nextBefore)
    }
    enum CodingKeys: String, CodingKey { case entries, nextBefore }
}
