import Audiences
import Contracts
import Foundation
import HTTPTypes
import Hummingbird
import Pushes

/// `/admin/v1/templates/{code}` (message templates, checked when saved), `/admin/v1/push-triggers`
/// (which event sends which template), `/admin/v1/broadcasts` (through the ``Broadcasts`` service),
/// `/admin/v1/pushes` (every push and what became of it) and `/admin/v1/push-stats` (today's
/// outcomes and quota per app).
extension Gateway {
    ///
    /// `audience` reads segments for segment broadcasts; without one they are refused
    /// (503 `segments_unavailable`) and tag broadcasts work as ever.
    func addPushAdminRoutes(_ admin: RouterGroup<GatewayRequestContext>, audience: (any BroadcastAudience)? = nil) {
        let store = PushStore(database: database)
        let broadcasts = Broadcasts(store: store, audience: audience)

        admin.put("/templates/:code") { request, context in
            let body = try await request.collectBody(upTo: 64 * 1024)
            let template: PushTemplate
            do { template = try PushTemplate.parse(code: context.parameters.get("code") ?? "", json: body) } catch {
                throw GatewayError(.badRequest, .invalidTemplate, "\(error)")
            }
            let outcome = try await stored { try await store.put(template) }
            return Response.json(template.json, status: outcome == .created ? .created : .ok)
        }
        admin.get("/templates/:code") { _, context in
            let code = context.parameters.get("code") ?? ""
            guard let template = try await stored({ try await store.template(code) }) else { throw Self.unknownTemplate(code) }
            return Response.json(template.json)
        }
        admin.delete("/templates/:code") { _, context in
            let code = context.parameters.get("code") ?? ""
            switch try await stored({ try await store.deleteTemplate(code) }) {
            case .deleted: return Response(status: .noContent)
            case .notFound: throw Self.unknownTemplate(code)
            case .inUse(let triggers):
                throw GatewayError(.conflict, .templateInUse, "triggers \(triggers.joined(separator: ", ")) send this template")
            }
        }

        // The shipped templates and triggers for one app, given its platform template ids.
        admin.post("/push-triggers/presets/standard") { request, _ in
            let body = try await request.collectBody(upTo: 16 * 1024)
            let preset: PushPreset
            do { preset = try PushPreset.parse(json: body) } catch { throw GatewayError(.badRequest, .invalidPreset, "\(error)") }
            try await stored {
                for template in preset.templates { _ = try await store.put(template) }
                for trigger in preset.triggers { _ = try await store.put(trigger) }
            }
            return Response.json(["templates": .array(preset.templates.map { .object($0.json) }),
                                  "triggers": .array(preset.triggers.map { .object($0.json) })] as [String: JSONValue])
        }

        admin.get("/push-stats") { _, _ in
            let quota = configuration.pushDailyQuota
            let today: (day: String, apps: [PushStats.AppDay])
            do { today = try await PushStats(redis: redis).today(dailyQuota: quota) } catch {
                throw GatewayError(.serviceUnavailable, .redisUnavailable, "Redis did not answer; retry", detail: "\(error)")
            }
            return Response.json([
                "day": .string(today.day), "dailyQuota": .integer(Int64(quota)),
                "apps": .array(today.apps.map { app in
                    .object(["appId": .string(app.app), "outcomes": .object(app.outcomes.mapValues { .integer(Int64($0)) }),
                             "used": .integer(Int64(app.used)), "quotaLeft": .integer(Int64(app.quotaLeft)),
                             "forcedRefreshes": .integer(Int64(app.forcedRefreshes))])
                }),
            ] as [String: JSONValue])
        }

        admin.put("/push-triggers/:code") { request, context in
            let body = try await request.collectBody(upTo: 16 * 1024)
            let trigger: PushTrigger
            do { trigger = try PushTrigger.parse(code: context.parameters.get("code") ?? "", json: body) } catch {
                throw GatewayError(.badRequest, .invalidTrigger, "\(error)")
            }
            switch try await stored({ try await store.put(trigger) }) {
            case .unknownTemplate: throw GatewayError(.conflict, .unknownTemplate, "no template \(trigger.template): save it first")
            case .created: return Response.json(trigger.json, status: .created)
            case .updated: return Response.json(trigger.json)
            }
        }
        admin.get("/push-triggers") { _, _ in
            let triggers = try await stored { try await store.triggers() }
            return Response.json(["triggers": .array(triggers.map { .object($0.json) })] as [String: JSONValue])
        }
        admin.get("/push-triggers/:code") { _, context in
            let code = context.parameters.get("code") ?? ""
            guard let trigger = try await stored({ try await store.trigger(code) }) else {
                throw GatewayError(.notFound, .unknownTrigger, "no push trigger \(code)")
            }
            return Response.json(trigger.json)
        }
        admin.delete("/push-triggers/:code") { _, context in
            let code = context.parameters.get("code") ?? ""
            guard try await stored({ try await store.deleteTrigger(code) }) else {
                throw GatewayError(.notFound, .unknownTrigger, "no push trigger \(code)")
            }
            return Response(status: .noContent)
        }

        admin.post("/broadcasts") { request, _ in
            let body = try await request.collectBody(upTo: 16 * 1024)
            // The segment form's `templates` is tried in the order written: the parse keeps it.
            guard let parsed = try? JSONValue.parse(body, keyOrderOf: "templates"), case .object(let object) = parsed.value else {
                throw GatewayError(.badRequest, .malformedJson, #"body must be {"template","tags":[…],"at"?} or {"segment","templates":{…},"at"?}"#)
            }
            if object["segment"] != nil || object["templates"] != nil {
                let (segment, apps) = try Self.segmentBroadcast(object, order: parsed.keys)
                let due = try Self.broadcastTime(object["at"])
                switch try await stored({ try await broadcasts.create(segment: segment, apps: apps, at: due) }) {
                case .created(let created): return Self.broadcastResponse(created, status: .created)
                case .segmentsUnavailable:
                    throw GatewayError.unavailable(.segmentsUnavailable, "segments cannot be read here: no segment store is configured")
                case .unknownSegment:
                    throw GatewayError(.unprocessableContent, .unknownSegment, "no segment \(segment)", path: "segment")
                case .unknownTemplate(let app):
                    throw GatewayError(.unprocessableContent, .unknownTemplate, "no template \(app.template) for app \(app.app): save it first",
                                       path: "templates.\(app.app)")
                case .templateOfAnotherApp(let app, let owner):
                    throw GatewayError(.unprocessableContent, .templateAppMismatch,
                                       "template \(app.template) listed for app \(app.app) belongs to app \(owner)", path: "templates.\(app.app)")
                case .invalidApps: throw Self.invalidTemplates
                }
            }
            guard let template = object["template"]?.string, PushTemplate.isValidCode(template) else {
                throw GatewayError(.badRequest, .invalidBroadcast, "template must be a template's code")
            }
            guard case .array(let list)? = object["tags"], (1...20).contains(list.count),
                  case let tags = list.compactMap(\.string), tags.count == list.count, tags.allSatisfy({ (1...64).contains($0.count) }) else {
                throw GatewayError(.badRequest, .invalidBroadcast, "tags must be 1-20 tags; members with any of them receive it")
            }
            let due = try Self.broadcastTime(object["at"])
            switch try await stored({ try await broadcasts.create(template: template, tags: tags, at: due) }) {
            case .created(let created): return Self.broadcastResponse(created, status: .created)
            case .unknownTemplate: throw GatewayError(.conflict, .unknownTemplate, "no template \(template): save it first")
            }
        }
        admin.get("/broadcasts/:id") { _, context in
            let id = try Self.broadcastID(context)
            guard let broadcast = try await stored({ try await broadcasts.broadcast(id) }) else { throw Self.unknownBroadcast(id) }
            return Self.broadcastResponse(broadcast)
        }
        admin.post("/broadcasts/:id/cancel") { _, context in
            let id = try Self.broadcastID(context)
            switch try await stored({ try await broadcasts.cancel(id) }) {
            case .cancelled(let broadcast): return Self.broadcastResponse(broadcast)
            case .alreadyCancelled: throw GatewayError(.conflict, .alreadyCancelled, "broadcast \(id) is already cancelled")
            case .unknownBroadcast: throw Self.unknownBroadcast(id)
            }
        }

        admin.get("/pushes") { request, _ in
            let query = request.uri.queryParameters
            let member = try Self.integerParameter(query["member"].map(String.init), name: "member", code: .invalidMember, range: 1...Int.max)
            var status: PushStatus?
            if let text = query["status"].map(String.init), !text.isEmpty {
                guard let known = PushStatus(rawValue: text) else {
                    throw GatewayError(.badRequest, .invalidStatus,
                                       "status must be one of \(PushStatus.allCases.map(\.rawValue).sorted().joined(separator: ", "))")
                }
                status = known
            }
            let limit = try Self.integerParameter(query["limit"].map(String.init), name: "limit", code: .invalidLimit, range: 1...500) ?? 50
            var before: Date?
            if let text = query["before"].map(String.init) {
                guard let date = RFC3339.parse(text) else { throw GatewayError(.badRequest, .invalidBefore, "before must be an RFC 3339 time") }
                before = date
            }
            let wanted = status
            let page = try await stored { try await store.pushes(member: member.map(Int64.init), status: wanted, limit: limit, before: before) }
            var body: [String: JSONValue] = ["pushes": .array(page.map(\.json))]
            body["nextBefore"] = page.count == limit ? page.last.map { .string(RFC3339.format($0.createdAt)) } ?? .null : .null
            return Response.json(body)
        }
    }

    /// A segment broadcast's `segment` and its `templates` (app id to template code) as apps in the
    /// order written (`order`, from ``JSONValue/parse(_:keyOrderOf:)``).
    static func segmentBroadcast(_ object: [String: JSONValue], order: [String]?) throws(GatewayError) -> (String, [BroadcastApp]) {
        guard object["tags"] == nil, object["template"] == nil else {
            throw GatewayError(.badRequest, .invalidBroadcast,
                               #"a broadcast is to tags ({"template","tags"}) or to a segment ({"segment","templates"}), not both"#)
        }
        guard let segment = object["segment"]?.string, AudienceCode.isValid(segment) else {
            throw GatewayError(.badRequest, .invalidBroadcast, "segment must be a segment's code: \(AudienceCode.rule)", path: "segment")
        }
        guard case .object(let templates)? = object["templates"], let order, order.count == templates.count,
              BroadcastApp.limit.contains(order.count) else { throw invalidTemplates }
        var apps: [BroadcastApp] = []
        for app in order {
            guard AppIDShape.isValid(app) else {
                throw GatewayError(.badRequest, .invalidBroadcast, "\(app) is not an app id: \(AppIDShape.rule)", path: "templates")
            }
            guard let template = templates[app]?.string, PushTemplate.isValidCode(template) else {
                throw GatewayError(.badRequest, .invalidBroadcast, "the template for app \(app) must be a template's code", path: "templates.\(app)")
            }
            apps.append(BroadcastApp(app: app, template: template))
        }
        return (segment, apps)
    }

    static let invalidTemplates = GatewayError(.badRequest, .invalidBroadcast,
        "templates must map \(BroadcastApp.limit.lowerBound)-\(BroadcastApp.limit.upperBound) app ids to template codes, in the order members are tried",
        path: "templates")

    /// `at`: absent or null for now, else an RFC 3339 time (a past one is now).
    static func broadcastTime(_ given: JSONValue?) throws(GatewayError) -> Date {
        let now = Date()
        guard let given, given != .null else { return now }
        guard let text = given.string, let date = RFC3339.parse(text) else {
            throw GatewayError(.badRequest, .invalidBroadcast, "at must be an RFC 3339 time")
        }
        return max(now, date)
    }

    /// A broadcast's JSON with its apps and templates in the broadcast's order (``PushStore/Broadcast/jsonBytes``).
    static func broadcastResponse(_ broadcast: PushStore.Broadcast, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: broadcast.jsonBytes)))
    }

    static func broadcastID(_ context: GatewayRequestContext) throws(GatewayError) -> Int64 {
        guard let id = context.parameters.get("id").flatMap({ Int64($0) }), id > 0 else {
            throw GatewayError(.badRequest, .invalidId, "a broadcast id is a positive integer")
        }
        return id
    }

    static func unknownBroadcast(_ id: Int64) -> GatewayError { GatewayError(.notFound, .unknownBroadcast, "no broadcast \(id)") }

    static func unknownTemplate(_ code: String) -> GatewayError { GatewayError(.notFound, .unknownTemplate, "no template \(code)") }
}
