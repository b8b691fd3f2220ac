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
        public let platform: String
        public let app: String
        public let openid: String
        public let status: String
        public let attempts: Int
        public let message: RenderedMessage
    }

    public func push(_ id: String) async throws -> PendingPush? {
        try await database.query("""
            SELECT id, platform, app_id, openid, status, attempts, message::text AS message FROM pushes WHERE id = $1
            """, [id])
            .first.flatMap { row in
                guard let platform = row.string("platform"), let app = row.string("app_id"), let openid = row.string("openid"),
                      let status = row.string("status"), let attempts = row.int("attempts"), let bytes = row.bytes("message"),
                      let message = try? JSONValue.parse(bytes), let rendered = RenderedMessage(message) else { return nil }
                return PendingPush(id: id, platform: platform, app: app, openid: openid, status: status, attempts: attempts, message: rendered)
            }
    }

    /// Records a push about to be sent (nothing when it exists: a redelivered event); then
    /// ``claim(_:attempt:)`` decides whether this delivery sends it.
    public func begin(_ push: NewPush) async throws {
        try await database.query("""
            INSERT INTO pushes (id, member_id, platform, app_id, openid, template, trigger_code, status, message)
            VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8::jsonb) ON CONFLICT (id) DO NOTHING
            """, [push.id, push.member, push.platform, push.app, push.openid, push.template, push.trigger,
                  String(decoding: push.message.json.jsonBytes, as: UTF8.self)])
    }

    /// Takes the push for its attempt number `attempt` (0 for the first): `sending` from here until
    /// the outcome is recorded. False when it is not waiting for that attempt (already sent, being
    /// sent by another worker, cancelled, or a redelivered job whose attempt was made). A worker that
    /// dies during the platform call leaves it `sending`: not sent twice, at the price of not
    /// knowing whether that one call arrived.
    public func claim(_ id: String, attempt: Int) async throws -> Bool {
        try await !database.query("""
            UPDATE pushes SET status = 'sending', attempts = attempts + 1, updated_at = now()
            WHERE id = $1 AND status IN ('pending', 'deferred') AND attempts = $2 RETURNING id
            """, [id, attempt]).isEmpty
    }

    /// What the claimed attempt got: `status` is the push's new status, `messageID` the platform's.
    public func record(_ id: String, status: String, messageID: Int64? = nil, error: String? = nil) async throws {
        try await database.query("""
            UPDATE pushes SET status = $2, msg_id = coalesce($3, msg_id), last_error = coalesce($4, last_error), updated_at = now()
            WHERE id = $1 AND status = 'sending'
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
        public let id: Int64
        public let template: String
        public let tags: [String]
        public let dueAt: Date
        public let status: String
        public let recipients: Int
        public let cursor: Int64
        /// Pushes by status.
        public var counts: [String: Int] = [:]

        public var json: JSONValue {
            .object(["id": .integer(id), "template": .string(template), "tags": .array(tags.map(JSONValue.string)),
                     "at": .string(RFC3339.format(dueAt)), "status": .string(status), "recipients": .integer(Int64(recipients)),
                     "counts": .object(counts.mapValues { .integer(Int64($0)) })])
        }
    }

    /// A new broadcast and the scheduler job that starts its fan-out at `at`, in one transaction;
    /// nil when the template is unknown.
    public func createBroadcast(template: String, tags: [String], at: Date) async throws -> Broadcast? {
        try await database.transaction { connection in
            guard try !connection.query("SELECT 1 FROM push_templates WHERE code = $1", [template]).isEmpty else { return nil }
            guard let id = try connection.query("""
                INSERT INTO broadcasts (template, tags, due_at, status) VALUES ($1, $2::text[], $3, 'scheduled') RETURNING id
                """, [template, PostgresArray(tags), at]).first?.int("id") else { return nil }
            try JobStore.enqueue([PushJobs.broadcastBatch(Int64(id), after: 0, at: at)], on: connection)
            return Broadcast(id: Int64(id), template: template, tags: tags, dueAt: at, status: "scheduled", recipients: 0, cursor: 0)
        }
    }

    public func broadcast(_ id: Int64) async throws -> Broadcast? {
        guard let row = try await database.query("""
            SELECT id, template, array_to_string(tags, ',') AS tags, extract(epoch FROM due_at)::float8 AS due_at, status, recipients, cursor
            FROM broadcasts WHERE id = $1
            """, [id]).first, let template = row.string("template"), let status = row.string("status"),
              let due = row.string("due_at").flatMap(Double.init) else { return nil }
        var broadcast = Broadcast(id: id, template: template, tags: (row.string("tags") ?? "").split(separator: ",").map(String.init),
                                  dueAt: Date(timeIntervalSince1970: due), status: status, recipients: row.int("recipients") ?? 0,
                                  cursor: Int64(row.int("cursor") ?? 0))
        for count in try await database.query("SELECT status, count(*) AS n FROM pushes WHERE broadcast_id = $1 GROUP BY status", [id]) {
            if let status = count.string("status"), let n = count.int("n") { broadcast.counts[status] = n }
        }
        return broadcast
    }

    /// Cancels a broadcast: no more batches, and its pushes not sent yet are not sent. False when it
    /// is unknown or already cancelled.
    public func cancelBroadcast(_ id: Int64) async throws -> Bool {
        try await database.transaction { connection in
            guard try !connection.query("""
                UPDATE broadcasts SET status = 'cancelled', updated_at = now() WHERE id = $1 AND status <> 'cancelled' RETURNING id
                """, [id]).isEmpty else { return false }
            try connection.query("""
                UPDATE pushes SET status = 'cancelled', updated_at = now() WHERE broadcast_id = $1 AND status IN ('pending', 'deferred')
                """, [id])
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
            WHERE m.id > $4 AND EXISTS (SELECT 1 FROM member_tags t WHERE t.member_id = m.id AND t.tag = ANY($1::text[]))
            ORDER BY m.id LIMIT $5
            """, [PostgresArray(tags), platform, app, cursor, limit]).compactMap { row in
            guard let id = row.int("id"), let openid = row.string("openid") else { return nil }
            return Recipient(member: Int64(id), openid: openid, nickname: row.string("nickname") ?? "", balance: Int64(row.int("points") ?? 0),
                             growth: Int64(row.int("growth") ?? 0), level: row.string("level") ?? "")
        }
    }

    /// One batch of a broadcast, in one transaction: its pushes, a send job for each new one, the
    /// cursor moved, and the next batch's job when `more` (or the broadcast marked fanned out). A
    /// batch done twice (a redelivered job) finds the cursor moved and does nothing.
    public func fanOut(broadcast id: Int64, from cursor: Int64, pushes: [NewPush], more: Bool, at now: Date) async throws -> Bool {
        let last = pushes.last?.member ?? cursor
        return try await database.transaction { connection in
            guard try !connection.query("""
                UPDATE broadcasts SET cursor = $3, recipients = recipients + $4, updated_at = now(),
                    status = CASE WHEN $5 THEN 'fanning_out' ELSE 'fanned_out' END
                WHERE id = $1 AND cursor = $2 AND status IN ('scheduled', 'fanning_out') RETURNING id
                """, [id, cursor, last, pushes.count, more]).isEmpty else { return false }
            var jobs: [NewJob] = more ? [PushJobs.broadcastBatch(id, after: last, at: now)] : []
            for chunk in stride(from: 0, to: pushes.count, by: 500) {
                var rows: [String] = [], parameters: [any PostgresEncodable] = []
                for push in pushes[chunk..<min(chunk + 500, pushes.count)] {
                    let b = parameters.count
                    rows.append("($\(b + 1),$\(b + 2)::bigint,$\(b + 3),$\(b + 4),$\(b + 5),$\(b + 6),'pending',$\(b + 7)::jsonb,$\(b + 8)::bigint)")
                    parameters += [push.id, push.member, push.platform, push.app, push.openid, push.template,
                                   String(decoding: push.message.json.jsonBytes, as: UTF8.self), id] as [any PostgresEncodable]
                }
                jobs += try connection.query("""
                    INSERT INTO pushes (id, member_id, platform, app_id, openid, template, status, message, broadcast_id)
                    VALUES \(rows.joined(separator: ",")) ON CONFLICT (id) DO NOTHING RETURNING id
                    """, parameters).compactMap { $0.string("id") }.map { PushJobs.attempt($0, attempt: 0, at: now) }
            }
            try JobStore.enqueue(jobs, on: connection)
            return true
        }
    }
}
