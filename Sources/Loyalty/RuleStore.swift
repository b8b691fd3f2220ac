import Contracts
import Foundation
import Jobs
import PostgresClient
import Synchronization

/// Rules and the level table in PostgreSQL, for the admin API and for workers.
public struct RuleStore: Sendable {
    let database: PostgresPool

    public init(database: PostgresPool) { self.database = database }

    static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }()

    /// Stores the rule; true when it was new.
    @discardableResult
    public func put(_ rule: PointsRule) async throws -> Bool {
        let json = String(decoding: try Self.encoder.encode(rule), as: UTF8.self)
        let rows = try await database.query("""
            INSERT INTO points_rules (code, definition, enabled) VALUES ($1, $2::jsonb, $3)
            ON CONFLICT (code) DO UPDATE SET definition = EXCLUDED.definition, enabled = EXCLUDED.enabled, updated_at = now()
            RETURNING (xmax = 0) AS inserted
            """, [rule.code, json, rule.enabled])
        return rows.first?.bool("inserted") ?? false
    }

    public func get(_ code: String) async throws -> PointsRule? {
        let rows = try await database.query("SELECT definition::text AS d, enabled FROM points_rules WHERE code = $1", [code])
        return try rows.first.map(Self.rule)
    }

    public func list() async throws -> [PointsRule] {
        try await database.query("SELECT definition::text AS d, enabled FROM points_rules ORDER BY code").map(Self.rule)
    }

    /// True when a rule was deleted.
    public func delete(_ code: String) async throws -> Bool {
        try await database.query("DELETE FROM points_rules WHERE code = $1", [code]).affectedRows > 0
    }

    /// Enables or disables a rule; nil when there is no such rule.
    public func setEnabled(_ code: String, _ enabled: Bool) async throws -> PointsRule? {
        let rows = try await database.query("""
            UPDATE points_rules SET enabled = $2, definition = jsonb_set(definition, '{enabled}', to_jsonb($2::boolean)),
                   updated_at = now()
            WHERE code = $1 RETURNING definition::text AS d, enabled
            """, [code, enabled])
        return try rows.first.map(Self.rule)
    }

    public func levels() async throws -> LevelTable {
        let rows = try await database.query("SELECT value::text AS v FROM loyalty_settings WHERE name = 'levels'")
        guard let text = rows.first?.string("v") else { return .standard }
        return try JSONDecoder().decode(LevelTable.self, from: Data(text.utf8))
    }

    public func putLevels(_ table: LevelTable) async throws {
        let json = String(decoding: try Self.encoder.encode(table), as: UTF8.self)
        try await database.query("""
            INSERT INTO loyalty_settings (name, value) VALUES ('levels', $1::jsonb)
            ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_at = now()
            """, [json])
    }

    /// Applies a preset's rules (and levels) in one transaction.
    public func apply(_ preset: ProgramPreset) async throws -> [PointsRule] {
        let rules = preset.rules
        let encoded = try rules.map { (code: $0.code, json: String(decoding: try Self.encoder.encode($0), as: UTF8.self)) }
        let levels = try preset.levels.map { String(decoding: try Self.encoder.encode($0), as: UTF8.self) }
        try await database.transaction { connection in
            for rule in encoded {
                try connection.query("""
                    INSERT INTO points_rules (code, definition, enabled) VALUES ($1, $2::jsonb, true)
                    ON CONFLICT (code) DO UPDATE SET definition = EXCLUDED.definition, enabled = true, updated_at = now()
                    """, [rule.code, rule.json])
            }
            if let levels {
                try connection.query("""
                    INSERT INTO loyalty_settings (name, value) VALUES ('levels', $1::jsonb)
                    ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_at = now()
                    """, [levels])
            }
        }
        return rules
    }

    private static func rule(_ row: PostgresRow) throws -> PointsRule {
        var rule = try JSONDecoder().decode(PointsRule.self, from: Data((row.string("d") ?? "{}").utf8))
        rule.enabled = row.bool("enabled") ?? rule.enabled
        return rule
    }
}

/// What a worker decides with: every rule and the level table, reloaded from PostgreSQL when older
/// than `refreshInterval`, so a rule changed through the admin API applies within seconds, with
/// no restart. While the database is unreachable the last loaded program keeps being used.
public final class RuleBook: Sendable {
    public struct Program: Sendable {
        public let rules: [PointsRule]
        public let levels: LevelTable
        /// Working days, for grants that mature after a review of so many working days.
        public let calendar: BusinessCalendar
        public init(rules: [PointsRule], levels: LevelTable, calendar: BusinessCalendar) {
            self.rules = rules
            self.levels = levels
            self.calendar = calendar
        }

        /// Rules that grant for the event.
        public func granting(_ event: Envelope) -> [PointsRule] { rules.filter { $0.matches(event) } }

        /// Rules whose grants the event takes back.
        public func reversing(_ event: Envelope) -> [PointsRule] {
            rules.filter { $0.enabled && $0.reversal?.kind == event.kind }
        }
    }

    private let load: @Sendable () async throws -> Program
    private let refreshInterval: Duration
    private let state = Mutex<(program: Program?, loadedAt: ContinuousClock.Instant)>((nil, .now))

    public init(store: RuleStore, calendar: BusinessCalendarStore, timeZone: TimeZone, refreshInterval: Duration = .seconds(2)) {
        self.load = {
            Program(rules: try await store.list(), levels: try await store.levels(), calendar: try await calendar.load(timeZone: timeZone))
        }
        self.refreshInterval = refreshInterval
    }

    /// A fixed program, never reloaded (tests, replays of a recorded program).
    public init(fixed program: Program) {
        self.load = { program }
        self.refreshInterval = .seconds(1_000_000_000)
    }

    public func current() async throws -> Program {
        let (cached, loadedAt) = state.withLock { ($0.program, $0.loadedAt) }
        if let cached, ContinuousClock.now - loadedAt < refreshInterval { return cached }
        do {
            let program = try await load()
            state.withLock { $0 = (program, .now) }
            return program
        } catch {
            // Keep the last program for another interval rather than asking a down database per batch.
            if let cached {
                state.withLock { $0.loadedAt = .now }
                return cached
            }
            throw error
        }
    }
}
