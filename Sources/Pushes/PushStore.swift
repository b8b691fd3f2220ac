import Contracts
import Foundation
import PostgresClient

/// Templates, triggers and pushes in PostgreSQL.
public struct PushStore: Sendable {
    let database: PostgresPool

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
        return rows.first?.bool("inserted") == true ? .created : .updated
    }

    public func template(_ code: String) async throws -> PushTemplate? {
        try await database.query("""
            SELECT code, platform, app_id, template_id, fields::text AS fields, url, miniprogram_appid, miniprogram_page
            FROM push_templates WHERE code = $1
            """, [code]).first.flatMap(Self.template)
    }

    public enum DeleteOutcome: Sendable, Equatable { case deleted, notFound, inUse([String]) }

    /// Deletes a template no trigger sends.
    public func deleteTemplate(_ code: String) async throws -> DeleteOutcome {
        try await database.transaction { connection in
            let users = try connection.query("SELECT code FROM push_triggers WHERE template = $1 ORDER BY code", [code]).compactMap { $0.string("code") }
            guard users.isEmpty else { return .inUse(users) }
            let rows = try connection.query("DELETE FROM push_templates WHERE code = $1 RETURNING code", [code])
            return rows.isEmpty ? .notFound : .deleted
        }
    }

    static func template(_ row: PostgresRow) -> PushTemplate? {
        guard let code = row.string("code"), let platform = row.string("platform"), let app = row.string("app_id"),
              let templateID = row.string("template_id"), let bytes = row.bytes("fields"),
              case .object(let raw)? = try? JSONValue.parse(bytes) else { return nil }
        return PushTemplate(code: code, platform: platform, app: app, templateID: templateID, fields: raw.compactMapValues(\.string),
                            url: row.string("url"), miniProgramAppID: row.string("miniprogram_appid"),
                            miniProgramPage: row.string("miniprogram_page"))
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
            return rows.first?.bool("inserted") == true ? .created : .updated
        }
    }

    public func trigger(_ code: String) async throws -> PushTrigger? {
        try await database.query("""
            SELECT code, event, conditions::text AS conditions, template, enabled FROM push_triggers WHERE code = $1
            """, [code]).first.flatMap(Self.trigger)
    }

    public func triggers() async throws -> [PushTrigger] {
        try await database.query("SELECT code, event, conditions::text AS conditions, template, enabled FROM push_triggers ORDER BY code")
            .compactMap(Self.trigger)
    }

    public func deleteTrigger(_ code: String) async throws -> Bool {
        try await !database.query("DELETE FROM push_triggers WHERE code = $1 RETURNING code", [code]).isEmpty
    }

    static func trigger(_ row: PostgresRow) -> PushTrigger? {
        guard let code = row.string("code"), let event = row.string("event"), let template = row.string("template"),
              let enabled = row.bool("enabled"), let bytes = row.bytes("conditions"),
              case .object(let raw)? = try? JSONValue.parse(bytes) else { return nil }
        return PushTrigger(code: code, event: event, conditions: raw.compactMapValues(\.string), template: template, enabled: enabled)
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
        public let status: String
        public let attempts: Int
        public let messageID: Int64?
        public let lastError: String?
        public let createdAt: Date
        public let updatedAt: Date

        public var json: JSONValue {
            .object(["id": .string(id), "memberId": member.map(JSONValue.integer) ?? .null, "platform": .string(platform),
                     "appId": .string(app), "openid": .string(openid), "template": .string(template),
                     "trigger": trigger.map(JSONValue.string) ?? .null, "status": .string(status), "attempts": .integer(Int64(attempts)),
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
        public let app: String
        public let openid: String
        public let status: String
        public let attempts: Int
        public let message: RenderedMessage
    }

    public func push(_ id: String) async throws -> PendingPush? {
        try await database.query("SELECT id, app_id, openid, status, attempts, message::text AS message FROM pushes WHERE id = $1", [id])
            .first.flatMap { row in
                guard let app = row.string("app_id"), let openid = row.string("openid"), let status = row.string("status"),
                      let attempts = row.int("attempts"), let bytes = row.bytes("message"),
                      let message = try? JSONValue.parse(bytes), let rendered = RenderedMessage(message) else { return nil }
                return PendingPush(id: id, app: app, openid: openid, status: status, attempts: attempts, message: rendered)
            }
    }

    /// Records a push about to be sent, or finds it from an earlier delivery. True when it should
    /// be sent now: new, or pending with no attempt recorded (the delivery before died before
    /// recording its outcome; the platform may then have taken it once already, which at-least-once
    /// accepts). A push with a recorded attempt is the retry jobs' from then on.
    public func begin(_ push: NewPush) async throws -> Bool {
        let rows = try await database.query("""
            WITH inserted AS (
                INSERT INTO pushes (id, member_id, platform, app_id, openid, template, trigger_code, status, message)
                VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8::jsonb) ON CONFLICT (id) DO NOTHING RETURNING status, attempts)
            SELECT status, attempts FROM inserted
            UNION ALL SELECT status, attempts FROM pushes WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM inserted)
            """, [push.id, push.member, push.platform, push.app, push.openid, push.template, push.trigger,
                  String(decoding: push.message.json.jsonBytes, as: UTF8.self)])
        // A push whose first attempt already has an outcome (a retry job owns it now) is not sent again.
        return rows.first?.string("status") == "pending" && rows.first?.int("attempts") == 0
    }

    /// What an attempt got: `status` is the push's new status, `messageID` the platform's.
    public func record(_ id: String, status: String, messageID: Int64? = nil, error: String? = nil) async throws {
        try await database.query("""
            UPDATE pushes SET status = $2, attempts = attempts + 1, msg_id = coalesce($3, msg_id), last_error = coalesce($4, last_error),
                updated_at = now()
            WHERE id = $1 AND status IN ('pending', 'deferred')
            """, [id, status, messageID, error])
    }

    /// The platform's receipt (`TEMPLATESENDJOBFINISH`) for a message it took. False when no push
    /// has that message id (yet).
    public func receipt(app: String, messageID: Int64, status: String) async throws -> Bool {
        try await !database.query("""
            UPDATE pushes SET status = $3, updated_at = now() WHERE app_id = $1 AND msg_id = $2 AND status IN ('sent', 'delivered',
                'user_block', 'system_failed') RETURNING id
            """, [app, messageID, status]).isEmpty
    }

    public func pushes(member: Int64?, status: String?, limit: Int, before: Date?) async throws -> [Push] {
        var conditions: [String] = [], parameters: [any PostgresEncodable] = []
        if let member { parameters.append(member); conditions.append("member_id = $\(parameters.count)") }
        if let status { parameters.append(status); conditions.append("status = $\(parameters.count)") }
        if let before { parameters.append(before); conditions.append("created_at < $\(parameters.count)") }
        parameters.append(limit)
        return try await database.query("""
            SELECT id, member_id, platform, app_id, openid, template, trigger_code, status, attempts, msg_id, last_error,
                   extract(epoch FROM created_at)::float8 AS created_at, extract(epoch FROM updated_at)::float8 AS updated_at
            FROM pushes \(conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND "))
            ORDER BY created_at DESC, id LIMIT $\(parameters.count)
            """, parameters).compactMap { row in
            guard let id = row.string("id"), let platform = row.string("platform"), let app = row.string("app_id"),
                  let openid = row.string("openid"), let template = row.string("template"), let status = row.string("status"),
                  let attempts = row.int("attempts"), let created = row.string("created_at").flatMap(Double.init),
                  let updated = row.string("updated_at").flatMap(Double.init) else { return nil }
            return Push(id: id, member: row.int("member_id").map(Int64.init), platform: platform, app: app, openid: openid, template: template,
                        trigger: row.string("trigger_code"), status: status, attempts: attempts, messageID: row.int("msg_id").map(Int64.init),
                        lastError: row.string("last_error"), createdAt: Date(timeIntervalSince1970: created),
                        updatedAt: Date(timeIntervalSince1970: updated))
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
            """, [id, platform, app]).first.flatMap { row in
            guard let openid = row.string("openid") else { return nil }
            return Recipient(member: id, openid: openid, nickname: row.string("nickname") ?? "", balance: Int64(row.int("points") ?? 0),
                             growth: Int64(row.int("growth") ?? 0), level: row.string("level") ?? "")
        }
    }

    /// The member behind an openid, when FanFlow has seen them; a bare recipient otherwise (a new
    /// follower's welcome is sent before the points pool has made them a member).
    public func recipient(platform: String, app: String, openid: String) async throws -> Recipient {
        let row = try await database.query("""
            SELECT m.id, m.nickname, m.points, m.growth, m.level FROM member_identities i JOIN members m ON m.id = i.member_id
            WHERE i.platform = $1 AND i.app = $2 AND i.openid = $3
            """, [platform, app, openid]).first
        return Recipient(member: row?.int("id").map(Int64.init), openid: openid, nickname: row?.string("nickname") ?? "",
                         balance: Int64(row?.int("points") ?? 0), growth: Int64(row?.int("growth") ?? 0), level: row?.string("level") ?? "")
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
}
