import Contracts
import Foundation
import PostgresClient

/// A member as support staff see it (`GET /admin/v1/members/{id}`).
public struct MemberView: Codable, Sendable, Equatable {
    public struct IdentityView: Codable, Sendable, Equatable {
        public let platform: String
        public let app: String
        public let openid: String
        public let unionid: String?
    }

    public let id: Int64
    public let points: Int64
    public let growth: Int64
    public let level: String
    public let pendingPoints: Int64
    public let pendingGrowth: Int64
    public let identities: [IdentityView]
    public let tags: [String]
    /// Set when this member was merged into another (a shared phone number); the other holds everything now.
    public let mergedInto: Int64?
    public let createdAt: String
}

/// One ledger entry as the admin API shows it.
public struct LedgerEntryView: Codable, Sendable, Equatable {
    public let id: Int64
    public let kind: String
    public let rule: String?
    public let points: Int64
    public let growth: Int64
    public let reason: String
    public let eventId: String?
    public let ref: String?
    public let occurredAt: String
    public let dueAt: String?
    public let createdAt: String
}

/// Filters of `GET /admin/v1/members/{id}/ledger`; pages go backwards from the newest entry, and
/// `before` (the last id of a page) asks for the next one.
public struct LedgerFilter: Sendable {
    public var from: Date?
    public var to: Date?
    public var kind: String?
    public var rule: String?
    public var before: Int64?
    public var limit: Int = 50

    public init(from: Date? = nil, to: Date? = nil, kind: String? = nil, rule: String? = nil, before: Int64? = nil, limit: Int = 50) {
        self.from = from
        self.to = to
        self.kind = kind
        self.rule = rule
        self.before = before
        self.limit = limit
    }
}

/// Read-only queries over members and the ledger.
public struct MemberQueries: Sendable {
    let database: PostgresPool

    public init(database: PostgresPool) { self.database = database }

    public func member(_ id: Int64) async throws -> MemberView? {
        let rows = try await database.query("""
            SELECT m.id, m.points, m.growth, m.level, m.pending_points, m.pending_growth, m.merged_into,
                   to_char(m.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS created_at,
                   coalesce((SELECT json_agg(json_build_object('platform', platform, 'app', app, 'openid', openid,
                                                               'unionid', unionid) ORDER BY created_at)
                             FROM member_identities WHERE member_id = m.id), '[]')::text AS identities,
                   coalesce((SELECT json_agg(DISTINCT tag ORDER BY tag) FROM member_tags WHERE member_id = m.id AND (expires_at IS NULL OR expires_at > now())), '[]')::text AS tags
            FROM members m WHERE m.id = $1
            """, [id])
        guard let row = rows.first else { return nil }
        let decoder = JSONDecoder()
        return MemberView(id: id, points: Int64(row.int("points") ?? 0), growth: Int64(row.int("growth") ?? 0),
                          level: row.string("level") ?? "", pendingPoints: Int64(row.int("pending_points") ?? 0),
                          pendingGrowth: Int64(row.int("pending_growth") ?? 0),
                          identities: try decoder.decode([MemberView.IdentityView].self, from: Data((row.string("identities") ?? "[]").utf8)),
                          tags: try decoder.decode([String].self, from: Data((row.string("tags") ?? "[]").utf8)),
                          mergedInto: row.int("merged_into").map(Int64.init),
                          createdAt: row.string("created_at") ?? "")
    }

    public func ledger(member: Int64, _ filter: LedgerFilter) async throws -> [LedgerEntryView] {
        var conditions = ["member_id = $1"]
        var parameters: [any PostgresEncodable] = [member]
        func add(_ condition: String, _ value: any PostgresEncodable) {
            parameters.append(value)
            conditions.append(condition.replacingOccurrences(of: "?", with: "$\(parameters.count)"))
        }
        if let from = filter.from { add("occurred_at >= ?", from) }
        if let to = filter.to { add("occurred_at < ?", to) }
        if let kind = filter.kind { add("kind = ?", kind) }
        if let rule = filter.rule { add("rule = ?", rule) }
        if let before = filter.before { add("id < ?", before) }
        parameters.append(filter.limit)
        func time(_ column: String) -> String {
            "to_char(\(column) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS \(column)"
        }
        let rows = try await database.query("""
            SELECT id, kind, rule, points, growth, reason, event_id, ref, \(time("occurred_at")), \(time("due_at")),
                   \(time("created_at"))
            FROM ledger WHERE \(conditions.joined(separator: " AND ")) ORDER BY id DESC LIMIT $\(parameters.count)
            """, parameters)
        return rows.map { row in
            LedgerEntryView(id: Int64(row.int("id") ?? 0), kind: row.string("kind") ?? "", rule: row.string("rule"),
                            points: Int64(row.int("points") ?? 0), growth: Int64(row.int("growth") ?? 0),
                            reason: row.string("reason") ?? "", eventId: row.string("event_id"), ref: row.string("ref"),
                            occurredAt: row.string("occurred_at") ?? "", dueAt: row.string("due_at"),
                            createdAt: row.string("created_at") ?? "")
        }
    }
}
