import Contracts
import Foundation
import Jobs
import Platforms
import PostgresClient

/// Templates, triggers and pushes in PostgreSQL.
public struct PushStore: Sendable {
    public let database: PostgresPool

    public init(database: PostgresPool) { self.database = database }

    public enum PutOutcome: Sendable, Equatable { case created, updated, unknownTemplate }

    // MARK: Templates

    public func put(_ template: PushTemplate) async throws -> PutOutcome {
        let rows = try await database.query("""
            INSERT INTO push_templates (code, platform, app_id, template_id, fields, url, miniprogram_appid, miniprogram_page)
            VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8)
            ON CONFLICT (code) DO UPDATE SET platform = excluded.platform, app_id = excluded.app_id, template_id = excluded.template_id,
                fields = excluded.fields, url = excluded.url, miniprogram_appid = excluded.miniprogram_appid,
                miniprogram_page = excluded.miniprogram_page, updated_at = now()
            RETURNING (xmax = 0) AS inserted
            """, [template.code, template.platform, template.app, template.templateID,
                  String(decoding: JSONValue.object(template.fields.mapValues(JSONValue.string)).jsonBytes, as: UTF8.self),
                  template.url, template.miniProgramAppID, template.miniProgramPage])
        return try rows.first?.require("inserted", as: Bool.self) == true ? .created : .updated
    }

    public func template(_ code: String) async throws -> PushTemplate? {
        try await database.query("""
            SELECT code, platform, app_id, template_id, fields::text AS fields, url, miniprogram_appid, miniprogram_page
            FROM push_templates WHERE code = $1
            """, [code]).first.map(Self.template)
    }

    public enum DeleteOutcome: Sendable, Equatable { case deleted, notFound, inUse([String]) }

    /// Deletes a template no trigger sends.
    public func deleteTemplate(_ code: String) async throws -> DeleteOutcome {
        try await database.transaction { connection in
            let users = try connection.query("SELECT code FROM push_triggers WHERE template = $1 ORDER BY code", [code])
                .map { row throws(PostgresError) in try row.require("code", as: String.self) }
            guard users.isEmpty else { return .inUse(users) }
            let rows = try connection.query("DELETE FROM push_templates WHERE code = $1 RETURNING code", [code])
            return rows.isEmpty ? .notFound : .deleted
        }
    }

    static func template(_ row: PostgresRow) throws -> PushTemplate {
        let code = try row.require("code", as: String.self)
        return PushTemplate(code: code, platform: try row.require("platform"), app: try row.require("app_id"),
                            templateID: try row.require("template_id"),
                            fields: try Self.object(row, "fields", of: "template \(code)").compactMapValues(\.string),
                            url: try row.optional("url"), miniProgramAppID: try row.optional("miniprogram_appid"),
                            miniProgramPage: try row.optional("miniprogram_page"))
    }

    /// A jsonb column read as text that must hold a JSON object.
    static func object(_ row: PostgresRow, _ column: String, of owner: String) throws -> [String: JSONValue] {
        guard case .object(let object)? = try? JSONValue.parse(try row.require(column, as: [UInt8].self)) else {
            throw PostgresError(.column, "\(column) of \(owner) is not a JSON object")
        }
        return object
    }

    // MARK: Triggers

    public func put(_ trigger: PushTrigger) async throws -> PutOutcome {
        try await database.transaction { connection in
            guard try !connection.query("SELECT 1 FROM push_templates WHERE code = $1", [trigger.template]).isEmpty else { return .unknownTemplate }
            let rows = try connection.query("""
                INSERT INTO push_triggers (code, event, conditions, template, enabled) VALUES ($1, $2, $3::jsonb, $4, $5)
                ON CONFLICT (code) DO UPDATE SET event = excluded.event, conditions = excluded.conditions, template = excluded.template,
                    enabled = excluded.enabled, updated_at = now()
                RETURNING (xmax = 0) AS inserted
                """, [trigger.code, trigger.event,
                      String(decoding: JSONValue.object(trigger.conditions.mapValues(JSONValue.string)).jsonBytes, as: UTF8.self),
                      trigger.template, trigger.enabled])
            return try rows.first?.require("inserted", as: Bool.self) == true ? .created : .updated
        }
    }

    public func trigger(_ code: String) async throws -> PushTrigger? {
        try await database.query("""
            SELECT code, event, conditions::text AS conditions, template, enabled FROM push_triggers WHERE code = $1
            """, [code]).first.map(Self.trigger)
    }

    public func triggers() async throws -> [PushTrigger] {
        try await database.query("SELECT code, event, conditions::text AS conditions, template, enabled FROM push_triggers ORDER BY code")
            .map(Self.trigger)
    }

    public func deleteTrigger(_ code: String) async throws -> Bool {
        try await !database.query("DELETE FROM push_triggers WHERE code = $1 RETURNING code", [code]).isEmpty
    }

    static func trigger(_ row: PostgresRow) throws -> PushTrigger {
        let code = try row.require("code", as: String.self)
        return PushTrigger(code: code, event: try row.require("event"),
                           conditions: try Self.object(row, "conditions", of: "trigger \(code)").compactMapValues(\.string),
                           template: try row.require("template"), enabled: try row.require("enabled"))
    }

    // MARK: Pushes

    /// One push and what became of it.
    public struct Push: Sendable, Equatable {
        public let id: String
        public let member: Int64?
        public let platform: String
        public let app: String
        public let openid: String
        public let template: String
        public let trigger: String?
        public let status: PushStatus
        public let attempts: Int
        public let messageID: Int64?
        public let lastError: String?
        public let createdAt: Date
        public let updatedAt: Date

        public var json: JSONValue {
            .object(["id": .string(id), "memberId": member.map(JSONValue.integer) ?? .null, "platform": .string(platform),
                     "appId": .string(app), "openid": .string(openid), "template": .string(template),
                     "trigger": trigger.map(JSONValue.string) ?? .null, "status": .string(status.rawValue), "attempts": .integer(Int64(attempts)),
                     "msgId": messageID.map(JSONValue.integer) ?? .null, "lastError": lastError.map(JSONValue.string) ?? .null,
                     "createdAt": .string(RFC3339.format(createdAt)), "updatedAt": .string(RFC3339.format(updatedAt))])
        }
    }

    public struct NewPush: Sendable {
        public let id: String
        public let member: Int64?
        public let platform: String
        public let app: String
        public let openid: String
        public let template: String
        public let trigger: String?
        public let message: RenderedMessage

        public init(id: String, member: Int64?, platform: String, app: String, openid: String, template: String, trigger: String?,
                    message: RenderedMessage) {
            self.id = id
            self.member = member
            self.platform = platform
            self.app = app
            self.openid = openid
            self.template = template
            self.trigger = trigger
            self.message = message
        }
    }

    /// A push waiting to be sent, as a retry finds it.
    public struct PendingPush: Sendable, Equatable {
        public let id: String
        public let platform: String
        public let app: String
        public let openid: String
        public let status: PushStatus
        public let attempts: Int
        public let message: RenderedMessage
    }

    /// The push `id` as a retry needs it; nil when there is none. A row whose status or stored
    /// message cannot be read throws (``PostgresError/Code-swift.struct/column``): sending a guess
    /// would be worse than not sending.
    public func push(_ id: String) async throws -> PendingPush? {
        guard let row = try await database.query("""
            SELECT id, platform, app_id, openid, status, attempts, message::text AS message FROM pushes WHERE id = $1
            """, [id]).first else { return nil }
        let message = try Self.object(row, "message", of: "push \(id)")
        guard let rendered = RenderedMessage(.object(message)) else {
            throw PostgresError(.column, "the stored message of push \(id) lacks templateId or fields")
        }
        return PendingPush(id: id, platform: try row.require("platform"), app: try row.require("app_id"), openid: try row.require("openid"),
                           status: try Self.status(row), attempts: try row.require("attempts"), message: rendered)
    }

    static func status(_ row: PostgresRow) throws -> PushStatus {
        let text = try row.require("status", as: String.self)
        guard let status = PushStatus(rawValue: text) else { throw PostgresError(.column, "status \(text) is not a push status") }
        return status
    }

    /// `statuses` as a `text[]` parameter, for `status = ANY($n::text[])`.
    static func array(_ statuses: Set<PushStatus>) -> PostgresArray { PostgresArray(statuses.map(\.rawValue).sorted()) }

    /// Records a push about to be sent (nothing when it exists: a redelivered event); then
    /// ``claim(_:attempt:)`` decides whether this delivery sends it.
    public func begin(_ push: NewPush) async throws {
        try await database.query("""
            INSERT INTO pushes (id, member_id, platform, app_id, openid, template, trigger_code, status, message)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $9, $8::jsonb) ON CONFLICT (id) DO NOTHING
            """, [push.id, push.member, push.platform, push.app, push.openid, push.template, push.trigger,
                  String(decoding: push.message.json.jsonBytes, as: UTF8.self), PushStatus.pending.rawValue])
    }

    /// Takes the push for its attempt number `attempt` (0 for the first): `sending` from here until
    /// the outcome is recorded. False when it is not waiting for that attempt (already sent, being
    /// sent by another worker, cancelled, or a redelivered job whose attempt was made). A worker that
    /// dies during the platform call leaves it `sending`: not sent twice, at the price of not
    /// knowing whether that one call arrived.
    public func claim(_ id: String, attempt: Int) async throws -> Bool {
        try await !database.query("""
            UPDATE pushes SET status = $3, attempts = attempts + 1, updated_at = now()
            WHERE id = $1 AND status = ANY($4::text[]) AND attempts = $2 RETURNING id
            """, [id, attempt, PushStatus.sending.rawValue, Self.array(PushStatus.claimable)]).isEmpty
    }

    /// Gives back a claim whose attempt never reached the platform (the pace could not be read):
    /// the push waits for the same attempt again, so the job or message retried for it can claim it.
    public func unclaim(_ id: String, attempt: Int) async throws {
        try await database.query("""
            UPDATE pushes SET status = $3, attempts = attempts - 1, updated_at = now() WHERE id = $1 AND status = $4 AND attempts = $2 + 1
            """, [id, attempt, PushStatus.pending.rawValue, PushStatus.sending.rawValue])
    }

    /// What the claimed attempt got: `status` is the push's new status, `messageID` the platform's;
    /// `next`, the job of the attempt after it, is enqueued in the same transaction, so a push left
    /// `pending` or `deferred` always has the job that will send it.
    public func record(_ id: String, status: PushStatus, messageID: Int64? = nil, error: String? = nil, next: NewJob? = nil) async throws {
        let parameters: [any PostgresEncodable] = [id, status.rawValue, messageID, error, PushStatus.sending.rawValue]
        let statement = """
            UPDATE pushes SET status = $2, msg_id = coalesce($3, msg_id), last_error = coalesce($4, last_error), updated_at = now()
            WHERE id = $1 AND status = $5
            """
        guard let next else {
            try await database.query(statement, parameters)
            return
        }
        try await database.transaction { connection in
            // Only the claim's holder records; a job for an attempt nobody holds would send nothing anyway.
            guard try connection.query(statement, parameters).affectedRows > 0 else { return }
            try JobStore.enqueue([next], on: connection)
        }
    }

    /// The platform's receipt (`TEMPLATESENDJOBFINISH`) for a message it took. False when no push
    /// has that message id (yet).
    public func receipt(app: String, messageID: Int64, status: PushStatus) async throws -> Bool {
        try await !database.query("""
            UPDATE pushes SET status = $3, updated_at = now() WHERE app_id = $1 AND msg_id = $2 AND status = ANY($4::text[]) RETURNING id
            """, [app, messageID, status.rawValue, Self.array(PushStatus.receiptable)]).isEmpty
    }

    public func pushes(member: Int64?, status: PushStatus?, limit: Int, before: Date?) async throws -> [Push] {
        var conditions: [String] = [], parameters: [any PostgresEncodable] = []
        if let member { parameters.append(member); conditions.append("member_id = $\(parameters.count)") }
        if let status { parameters.append(status.rawValue); conditions.append("status = $\(parameters.count)") }
        if let before { parameters.append(before); conditions.append("created_at < $\(parameters.count)") }
        parameters.append(limit)
        return try await database.query("""
            SELECT id, member_id, platform, app_id, openid, template, trigger_code, status, attempts, msg_id, last_error,
                   extract(epoch FROM created_at)::float8 AS created_at, extract(epoch FROM updated_at)::float8 AS updated_at
            FROM pushes \(conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND "))
            ORDER BY created_at DESC, id LIMIT $\(parameters.count)
            """, parameters).map { row in
            Push(id: try row.require("id"), member: try row.optional("member_id"), platform: try row.require("platform"),
                 app: try row.require("app_id"), openid: try row.require("openid"), template: try row.require("template"),
                 trigger: try row.optional("trigger_code"), status: try Self.status(row), attempts: try row.require("attempts"),
                 messageID: try row.optional("msg_id"), lastError: try row.optional("last_error"),
                 createdAt: Date(timeIntervalSince1970: try row.require("created_at")),
                 updatedAt: Date(timeIntervalSince1970: try row.require("updated_at")))
        }
    }

    // MARK: Members

    /// What templates know of a member, and their openid on `app`.
    public struct Recipient: Sendable, Equatable {
        public let member: Int64?
        public let openid: String
        public let nickname: String
        public let balance: Int64
        public let growth: Int64
        public let level: String
    }

    /// The member `id`'s identity on `platform`/`app`, nil when they have none there.
    public func recipient(member id: Int64, platform: String, app: String) async throws -> Recipient? {
        try await database.query("""
            SELECT i.openid, m.nickname, m.points, m.growth, m.level FROM members m
            JOIN member_identities i ON i.member_id = m.id AND i.platform = $2 AND i.app = $3 WHERE m.id = $1 LIMIT 1
            """, [id, platform, app]).first.map { row in try Self.recipient(row, member: id) }
    }

    /// A recipient from a row with `openid`, `nickname`, `points`, `growth` and `level` (all NOT NULL).
    static func recipient(_ row: PostgresRow, member: Int64) throws -> Recipient {
        Recipient(member: member, openid: try row.require("openid"), nickname: try row.require("nickname"), balance: try row.require("points"),
                  growth: try row.require("growth"), level: try row.require("level"))
    }
}

/// A push's message after rendering: what is sent, and sent again on a retry.
public struct RenderedMessage: Sendable, Equatable {
    public var templateID: String
    public var fields: [String: String]
    public var url: String?
    public var miniProgramAppID: String?
    public var miniProgramPage: String?

    public init(templateID: String, fields: [String: String], url: String?, miniProgramAppID: String?, miniProgramPage: String?) {
        self.templateID = templateID
        self.fields = fields
        self.url = url
        self.miniProgramAppID = miniProgramAppID
        self.miniProgramPage = miniProgramPage
    }

    init?(_ json: JSONValue) {
        guard case .object(let o) = json, let id = o["templateId"]?.string, case .object(let fields)? = o["fields"] else { return nil }
        self.init(templateID: id, fields: fields.compactMapValues(\.string), url: o["url"]?.string, miniProgramAppID: o["miniProgramAppId"]?.string,
                  miniProgramPage: o["miniProgramPage"]?.string)
    }

    var json: JSONValue {
        .object(["templateId": .string(templateID), "fields": .object(fields.mapValues(JSONValue.string)),
                 "url": url.map(JSONValue.string) ?? .null, "miniProgramAppId": miniProgramAppID.map(JSONValue.string) ?? .null,
                 "miniProgramPage": miniProgramPage.map(JSONValue.string) ?? .null])
    }

    public func templateMessage(to openid: String) -> WeChatClient.TemplateMessage {
        let mini = miniProgramAppID.flatMap { app in miniProgramPage.map { (appID: app, pagePath: $0) } }
        return WeChatClient.TemplateMessage(toUser: openid, templateID: templateID, url: url, miniProgram: mini, data: fields)
    }

    /// For Alipay's service window, `openid` being the member's Alipay user id.
    public func alipayMessage(to openid: String) -> AlipayClient.TemplateMessage {
        AlipayClient.TemplateMessage(toUser: openid, templateID: templateID, url: url, fields: fields)
    }
}

// MARK: - Broadcasts

extension PushStore {
    public struct Broadcast: Sendable, Equatable {
        /// Who a broadcast is for.
        public enum Target: Sendable, Equatable {
            /// Members with any of the tags and an identity on the template's app.
            case tags([String], template: String)
            /// The segment's members, each through the first of `apps` they can be reached on.
            case segment(String, apps: [BroadcastApp])
        }

        /// One app of a broadcast: the template sent there and its pushes by status.
        public struct AppCounts: Sendable, Equatable {
            public let app: String
            public let template: String
            public var counts: [PushStatus: Int]

            /// Members sent it through this app (one push each, whatever became of it).
            public var recipients: Int { counts.values.reduce(0, +) }

            var json: JSONValue {
                .object(["template": .string(template), "recipients": .integer(Int64(recipients)), "counts": PushStore.json(counts)])
            }
        }

        public let id: Int64
        public let target: Target
        public let dueAt: Date
        public let status: BroadcastStatus
        public let recipients: Int
        public let cursor: Int64
        /// Pushes by status.
        public var counts: [PushStatus: Int] = [:]
        /// The broadcast's apps in its order (a tag broadcast's: its template's app, and any other
        /// app its pushes went to should the template have moved), with their pushes.
        public var apps: [AppCounts] = []

        /// `template` and `tags` for a tag broadcast, `segment` and `templates` (app to template) for
        /// a segment broadcast; `apps` for both. Its `templates` and `apps` as a dictionary: see
        /// ``jsonBytes`` for them in the broadcast's order.
        public var json: JSONValue {
            var fields: [String: JSONValue] = [
                "id": .integer(id), "at": .string(RFC3339.format(dueAt)), "status": .string(status.rawValue),
                "recipients": .integer(Int64(recipients)), "counts": PushStore.json(counts),
                "apps": .object(Dictionary(apps.map { ($0.app, $0.json) }, uniquingKeysWith: { first, _ in first })),
            ]
            switch target {
            case .tags(let tags, let template):
                fields["template"] = .string(template)
                fields["tags"] = .array(tags.map(JSONValue.string))
            case .segment(let segment, let list):
                fields["segment"] = .string(segment)
                fields["templates"] = .object(Dictionary(list.map { ($0.app, JSONValue.string($0.template)) }, uniquingKeysWith: { first, _ in first }))
            }
            return .object(fields)
        }

        /// ``json``'s bytes, with `templates` and `apps` in the broadcast's order: the order decides
        /// who receives which template, so the answer shows it as the operator gave it.
        public var jsonBytes: [UInt8] {
            guard case .object(let fields) = json else { return json.jsonBytes }
            var ordered: [String: [UInt8]] = ["apps": OrderedJSON.object(apps.map { (key: $0.app, value: $0.json.jsonBytes) })]
            if case .segment(_, let list) = target {
                ordered["templates"] = OrderedJSON.object(list.map { (key: $0.app, value: JSONValue.string($0.template).jsonBytes) })
            }
            return OrderedJSON.object(fields.sorted { $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) }
                .map { (key: $0.key, value: ordered[$0.key] ?? $0.value.jsonBytes) })
        }
    }

    static func json(_ counts: [PushStatus: Int]) -> JSONValue {
        .object(Dictionary(uniqueKeysWithValues: counts.map { ($0.key.rawValue, JSONValue.integer(Int64($0.value))) }))
    }

    /// A new tag broadcast and the job that starts its fan-out at `at`, in one transaction; nil
    /// when the template is unknown.
    public func createBroadcast(template: String, tags: [String], at: Date) async throws -> Broadcast? {
        try await database.transaction { connection in
            guard let app = try connection.query("SELECT app_id FROM push_templates WHERE code = $1", [template]).first?
                .require("app_id", as: String.self) else { return nil }
            guard let id = try connection.query("""
                INSERT INTO broadcasts (template, tags, due_at, status) VALUES ($1, $2::text[], $3, $4) RETURNING id
                """, [template, PostgresArray(tags), at, BroadcastStatus.scheduled.rawValue]).first?.require("id", as: Int64.self) else {
                throw PostgresError(.column, "INSERT … RETURNING id gave no row")
            }
            try JobStore.enqueue([PushJobs.broadcastBatch(id, after: 0, at: at)], on: connection)
            return Broadcast(id: id, target: .tags(tags, template: template), dueAt: at, status: .scheduled, recipients: 0, cursor: 0,
                             apps: [Broadcast.AppCounts(app: app, template: template, counts: [:])])
        }
    }

    public enum SegmentBroadcastOutcome: Sendable, Equatable {
        case created(Broadcast)
        /// No template has this app's template code.
        case unknownTemplate(BroadcastApp)
        /// This app's template is another app's (`templateApp`): a message goes out from the app
        /// its template was made on, or the platform refuses its template id.
        case templateOfAnotherApp(BroadcastApp, templateApp: String)
    }

    /// A new segment broadcast over `apps` (in their order) and the job that starts its fan-out at
    /// `at`, in one transaction; refused when an app's template is unknown or another app's. The
    /// templates are read `FOR SHARE`: one moved to another app meanwhile waits for this to commit.
    public func createBroadcast(segment: String, apps: [BroadcastApp], at: Date) async throws -> SegmentBroadcastOutcome {
        try await database.transaction { connection in
            var owners: [String: String] = [:]
            for row in try connection.query("SELECT code, app_id FROM push_templates WHERE code = ANY($1::text[]) FOR SHARE",
                                             [PostgresArray(apps.map(\.template))]) {
                owners[try row.require("code", as: String.self)] = try row.require("app_id", as: String.self)
            }
            for app in apps {
                guard let owner = owners[app.template] else { return .unknownTemplate(app) }
                guard owner == app.app else { return .templateOfAnotherApp(app, templateApp: owner) }
            }
            guard let id = try connection.query("""
                INSERT INTO broadcasts (segment, due_at, status) VALUES ($1, $2, $3) RETURNING id
                """, [segment, at, BroadcastStatus.scheduled.rawValue]).first?.require("id", as: Int64.self) else {
                throw PostgresError(.column, "INSERT … RETURNING id gave no row")
            }
            try connection.query("""
                INSERT INTO broadcast_apps (broadcast_id, position, app_id, template)
                SELECT $1, a.position::integer, a.app, a.template FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS a(app, template, position)
                """, [id, PostgresArray(apps.map(\.app)), PostgresArray(apps.map(\.template))])
            try JobStore.enqueue([PushJobs.broadcastBatch(id, after: 0, at: at)], on: connection)
            return .created(Broadcast(id: id, target: .segment(segment, apps: apps), dueAt: at, status: .scheduled, recipients: 0, cursor: 0,
                                      apps: apps.map { Broadcast.AppCounts(app: $0.app, template: $0.template, counts: [:]) }))
        }
    }

    /// The broadcast with its pushes counted by status and by app; nil when there is none. A row
    /// that is neither a tag nor a segment broadcast, or a segment broadcast without apps, throws.
    public func broadcast(_ id: Int64) async throws -> Broadcast? {
        guard let row = try await database.query("""
            SELECT b.template, to_json(b.tags)::text AS tags, b.segment, extract(epoch FROM b.due_at)::float8 AS due_at, b.status,
                   b.recipients, b.cursor, t.app_id AS template_app
            FROM broadcasts b LEFT JOIN push_templates t ON t.code = b.template WHERE b.id = $1
            """, [id]).first else { return nil }
        let text = try row.require("status", as: String.self)
        guard let status = BroadcastStatus(rawValue: text) else { throw PostgresError(.column, "status \(text) is not a broadcast status") }
        let target: Broadcast.Target
        var apps: [Broadcast.AppCounts] = []
        if let segment = try row.optional("segment", as: String.self) {
            let listed = try await database.query("SELECT app_id, template FROM broadcast_apps WHERE broadcast_id = $1 ORDER BY position", [id])
                .map { app in BroadcastApp(app: try app.require("app_id"), template: try app.require("template")) }
            guard !listed.isEmpty else { throw PostgresError(.column, "segment broadcast \(id) has no apps") }
            target = .segment(segment, apps: listed)
            apps = listed.map { Broadcast.AppCounts(app: $0.app, template: $0.template, counts: [:]) }
        } else {
            guard let template = try row.optional("template", as: String.self) else {
                throw PostgresError(.column, "broadcast \(id) has neither a segment nor a template")
            }
            target = .tags(try Self.tags(row, of: id), template: template)
            if let app = try row.optional("template_app", as: String.self) { apps = [Broadcast.AppCounts(app: app, template: template, counts: [:])] }
        }
        var broadcast = Broadcast(id: id, target: target, dueAt: Date(timeIntervalSince1970: try row.require("due_at")), status: status,
                                  recipients: try row.require("recipients"), cursor: try row.require("cursor"), apps: apps)
        for count in try await database.query("""
            SELECT app_id, status, count(*) AS n FROM pushes WHERE broadcast_id = $1 GROUP BY app_id, status
            """, [id]) {
            let app = try count.require("app_id", as: String.self), status = try Self.status(count), n = try count.require("n", as: Int.self)
            broadcast.counts[status, default: 0] += n
            if let index = broadcast.apps.firstIndex(where: { $0.app == app }) {
                broadcast.apps[index].counts[status, default: 0] += n
            } else if case .tags(_, let template) = target {
                // The template was moved to another app after some pushes went out: those still count there.
                broadcast.apps.append(Broadcast.AppCounts(app: app, template: template, counts: [status: n]))
            }
        }
        return broadcast
    }

    /// The `tags` column, read as `to_json(tags)::text`: a JSON array of texts (a tag may hold a comma).
    static func tags(_ row: PostgresRow, of id: Int64) throws -> [String] {
        guard case .array(let items)? = try? JSONValue.parse(try row.require("tags", as: [UInt8].self)),
              case let tags = items.compactMap(\.string), tags.count == items.count else {
            throw PostgresError(.column, "tags of broadcast \(id) are not a JSON array of texts")
        }
        return tags
    }

    /// Cancels a broadcast: no more batches, and its pushes not sent yet are not sent. False when it
    /// is unknown or already cancelled.
    public func cancelBroadcast(_ id: Int64) async throws -> Bool {
        try await database.transaction { connection in
            guard try !connection.query("""
                UPDATE broadcasts SET status = $2, updated_at = now() WHERE id = $1 AND status <> $2 RETURNING id
                """, [id, BroadcastStatus.cancelled.rawValue]).isEmpty else { return false }
            try connection.query("""
                UPDATE pushes SET status = $2, updated_at = now() WHERE broadcast_id = $1 AND status = ANY($3::text[])
                """, [id, PushStatus.cancelled.rawValue, Self.array(PushStatus.claimable)])
            return true
        }
    }

    /// The next `limit` members after `cursor` (by id) with any of the broadcast's tags and an
    /// identity on the template's app.
    public func audience(tags: [String], platform: String, app: String, after cursor: Int64, limit: Int) async throws -> [Recipient] {
        try await database.query("""
            SELECT m.id, m.nickname, m.points, m.growth, m.level, i.openid
            FROM members m
            JOIN LATERAL (SELECT openid FROM member_identities WHERE member_id = m.id AND platform = $2 AND app = $3 LIMIT 1) i ON true
            WHERE m.id > $4 AND EXISTS (SELECT 1 FROM member_tags t WHERE t.member_id = m.id AND t.tag = ANY($1::text[])
                                                    AND (t.expires_at IS NULL OR t.expires_at > now()))
            ORDER BY m.id LIMIT $5
            """, [PostgresArray(tags), platform, app, cursor, limit]).map { row in try Self.recipient(row, member: row.require("id")) }
    }

    /// One of a segment broadcast's members and the app they are reached on (an index into the
    /// broadcast's apps).
    public struct Reached: Sendable, Equatable {
        public let recipient: Recipient
        public let channel: Int
    }

    /// Of `members`, those who can be reached on one of `channels` (platform and app, in the
    /// broadcast's order), each with the first such channel and their identity there; by member id.
    ///
    /// Reachable on an app: the member has an identity there, and that identity's latest
    /// `subscribe` or `unsubscribe` event on the app (in `events`) is not an `unsubscribe` (none at
    /// all counts as reachable: identities from OAuth or from before events were stored). Of
    /// several identities on one app, the first reachable openid. The latest follow event is found
    /// by walking `events_subject_idx` (platform, app, openid, occurred_at) backwards from the
    /// newest event of that openid; events at the same second are told apart by `received_at`.
    public func reachable(members: [Int64], channels: [(platform: String, app: String)]) async throws -> [Reached] {
        guard !members.isEmpty, !channels.isEmpty else { return [] }
        return try await database.query("""
            SELECT DISTINCT ON (m.id) m.id, m.nickname, m.points, m.growth, m.level, c.position, i.openid
            FROM members m
            CROSS JOIN unnest($2::text[], $3::text[]) WITH ORDINALITY AS c(platform, app, position)
            JOIN LATERAL (
                SELECT mi.openid FROM member_identities mi
                WHERE mi.member_id = m.id AND mi.platform = c.platform AND mi.app = c.app
                  AND coalesce((SELECT e.kind FROM events e
                                WHERE e.platform = c.platform AND e.app = c.app AND e.openid = mi.openid AND e.kind = ANY($4::text[])
                                ORDER BY e.occurred_at DESC, e.received_at DESC LIMIT 1), '') <> $5
                ORDER BY mi.openid LIMIT 1) i ON true
            WHERE m.id = ANY($1::bigint[])
            ORDER BY m.id, c.position
            """, [PostgresArray(members.map(String.init)), PostgresArray(channels.map(\.platform)), PostgresArray(channels.map(\.app)),
                  PostgresArray([EventKind.subscribe.rawValue, EventKind.unsubscribe.rawValue]), EventKind.unsubscribe.rawValue]).map { row in
            let position = try row.require("position", as: Int64.self)
            guard let channel = Int(exactly: position - 1), channels.indices.contains(channel) else {
                throw PostgresError(.column, "position \(position) is not one of the broadcast's \(channels.count) apps")
            }
            return Reached(recipient: try Self.recipient(row, member: row.require("id")), channel: channel)
        }
    }

    /// One batch of a broadcast, in one transaction: its pushes, a send job for each new one, the
    /// cursor moved, and the next batch's job when `more` (or the broadcast marked fanned out). A
    /// batch done twice (a redelivered job) finds the cursor moved and does nothing. The next
    /// batch's job is written first: due with the sends, it is claimed before them (same due time,
    /// lower id), so the next batch's pushes are stored while this batch's are sent and the sends
    /// do not run dry between batches. (Claimed in any order, the next batch's job could come last
    /// among the sends written with it, and the runners then had nothing to send for the fan-out's
    /// time plus an idle poll.)
    ///
    /// `last` is the new cursor: the batch's last member, whether or not they got a push (a segment
    /// member reachable on none of the apps gets none).
    public func fanOut(broadcast id: Int64, from cursor: Int64, to last: Int64, pushes: [NewPush], more: Bool, at now: Date) async throws -> Bool {
        try await database.transaction { connection in
            guard try !connection.query("""
                UPDATE broadcasts SET cursor = $3, recipients = recipients + $4, updated_at = now(),
                    status = CASE WHEN $5 THEN $6 ELSE $7 END
                WHERE id = $1 AND cursor = $2 AND status = ANY($8::text[]) RETURNING id
                """, [id, cursor, last, pushes.count, more, BroadcastStatus.fanningOut.rawValue, BroadcastStatus.fannedOut.rawValue,
                      PostgresArray(BroadcastStatus.fanning.map(\.rawValue).sorted())]).isEmpty else { return false }
            var jobs: [NewJob] = more ? [PushJobs.broadcastBatch(id, after: last, at: now)] : []
            for chunk in stride(from: 0, to: pushes.count, by: 500) {
                var rows: [String] = [], parameters: [any PostgresEncodable] = []
                for push in pushes[chunk..<min(chunk + 500, pushes.count)] {
                    let b = parameters.count
                    rows.append("($\(b + 1),$\(b + 2)::bigint,$\(b + 3),$\(b + 4),$\(b + 5),$\(b + 6),$\(b + 7),$\(b + 8)::jsonb,$\(b + 9)::bigint)")
                    parameters += [push.id, push.member, push.platform, push.app, push.openid, push.template, PushStatus.pending.rawValue,
                                   String(decoding: push.message.json.jsonBytes, as: UTF8.self), id] as [any PostgresEncodable]
                }
                jobs += try connection.query("""
                    INSERT INTO pushes (id, member_id, platform, app_id, openid, template, status, message, broadcast_id)
                    VALUES \(rows.joined(separator: ",")) ON CONFLICT (id) DO NOTHING RETURNING id
                    """, parameters).map { row throws(PostgresError) in PushJobs.attempt(try row.require("id"), attempt: 0, at: now) }
            }
            try JobStore.enqueue(jobs, on: connection)
            return true
        }
    }
}
