import Contracts
import Foundation
import Jobs
import PostgresClient
import Synchronization

/// A stored tag rule with where it stands.
public struct StoredTagRule: Sendable, Equatable {
    public enum State: String, Sendable {
        /// Stored history is being counted; live events count meanwhile.
        case backfilling
        /// History is counted; only live events move it.
        case live
    }

    public let rule: TagRule
    /// New for every generation of the rule: a change starts its counts over.
    public let id: Int32
    public let state: State
    /// Events of the rule's kinds in its window the backfill has read, and how many there were
    /// when it started.
    public let scanned: Int64
    public let total: Int64
    public let updatedAt: Date

    /// 0 to 1; 1 once live.
    public var progress: Double {
        switch state {
        case .live: 1
        case .backfilling: total == 0 ? 0 : min(0.99, Double(scanned) / Double(total))
        }
    }
}

public enum TagRuleSave: Sendable, Equatable {
    /// Stored and backfilling (`created`: it is new).
    case saved(created: Bool)
    /// The same definition was stored already: nothing starts over.
    case unchanged
    case unknownTag(String)
    case tooManyRules
}

/// The lock every pipeline batch holds shared while it counts for tag rules and a rule change
/// takes exclusively: a batch either committed before the change (and its events are the
/// backfill's to count) or sees the change (and counts the rule itself, marking what it counted
/// while the rule backfills). So each event is counted once, by one of the two.
enum RulesLock {
    static let key: Int64 = 0x4641_4E54_4147  // "FANTAG"
}

/// Tag rules in PostgreSQL: changes bump the rules version under the rules lock, restart the
/// rule's counts under a new id and enqueue its backfill, in one transaction.
public struct TagRuleStore: Sendable {
    let database: PostgresPool

    public init(database: PostgresPool) { self.database = database }

    public func save(_ rule: TagRule) async throws -> TagRuleSave {
        let definition = String(decoding: rule.json.jsonBytes, as: UTF8.self)
        let outcome = try await database.transaction { connection -> (TagRuleSave, Int32?) in
            try connection.query("SELECT pg_advisory_xact_lock($1)", [RulesLock.key])
            guard try !connection.query("SELECT 1 FROM tags WHERE code = $1", [rule.tag]).isEmpty else {
                return (.unknownTag(rule.tag), nil)
            }
            let existing = try connection.query("SELECT id, definition::text AS definition FROM tag_rules WHERE code = $1 FOR UPDATE",
                                                [rule.code]).first
            if let existing, let stored = try? JSONValue.parse(Array(try existing.requiredString("definition").utf8)),
               (try? TagRule.parse(code: rule.code, json: stored)) == rule {
                return (.unchanged, nil)
            }
            if existing == nil,
               try connection.query("SELECT count(*) AS n FROM tag_rules").first?.requiredInt64("n") ?? 0 >= Int64(DefinitionLimits.maximumRules) {
                return (.tooManyRules, nil)
            }
            let retired = try existing.map { row throws(PostgresRowError) in Int32(try row.requiredInt("id")) }
            if let retired {
                try Self.retire(retired, code: rule.code, on: connection)
            }
            let now = Date()
            let windowFrom = Date(timeIntervalSince1970: Double(Int64(rule.criteria.within.firstHour(at: now)) * 3600))
            let id = try connection.query("""
                INSERT INTO tag_rules (code, id, definition, state, cursor, window_from, backfill_to, scanned, total)
                VALUES ($1, nextval('tag_rule_ids'), $2::jsonb, $3, $4, $4, $5, 0, 0)
                ON CONFLICT (code) DO UPDATE SET id = excluded.id, definition = excluded.definition, state = excluded.state,
                    cursor = excluded.cursor, window_from = excluded.window_from, backfill_to = excluded.backfill_to,
                    scanned = 0, total = 0, updated_at = now()
                RETURNING id
                """, [rule.code, definition, StoredTagRule.State.backfilling.rawValue, windowFrom, now]).first?.requiredInt("id")
            guard let id else { throw PostgresError(.column, "tag rule \(rule.code) was not stored") }
            try Self.bumpVersion(on: connection)
            try JobStore.enqueue([AudienceJobs.backfillJob(rule: rule.code, id: Int32(id), from: windowFrom, span: nil)], on: connection)
            return (.saved(created: existing == nil), retired)
        }
        return outcome.0
    }

    /// Deletes a rule and lets go of every tag it set; false when there is no such rule.
    public func delete(_ code: String) async throws -> Bool {
        try await database.transaction { connection in
            try connection.query("SELECT pg_advisory_xact_lock($1)", [RulesLock.key])
            guard let id = try connection.query("DELETE FROM tag_rules WHERE code = $1 RETURNING id", [code]).first?.requiredInt("id") else {
                return false
            }
            try Self.retire(Int32(id), code: code, on: connection)
            try Self.bumpVersion(on: connection)
            return true
        }
    }

    /// A rule generation ends: its tags go at once (inside the lock, so no batch of the next
    /// generation has set one yet); its counts are deleted later by the expiry job.
    static func retire(_ id: Int32, code: String, on connection: isolated PostgresConnection) throws {
        try connection.query("DELETE FROM member_tags WHERE source = $1", ["rule:\(code)"])
        try connection.query("INSERT INTO tag_rule_retired (id) VALUES ($1) ON CONFLICT DO NOTHING", [id])
    }

    static func bumpVersion(on connection: isolated PostgresConnection) throws {
        try connection.query("UPDATE tag_rules_version SET version = version + 1")
    }

    public func get(_ code: String) async throws -> StoredTagRule? {
        try await database.transaction { connection in try Self.load(on: connection, code: code).first }
    }

    public func list() async throws -> [StoredTagRule] {
        try await database.transaction { connection in try Self.load(on: connection, code: nil) }
    }

    static func load(on connection: isolated PostgresConnection, code: String?) throws -> [StoredTagRule] {
        try rows(on: connection, code: code).map { row in try stored(row) }
    }

    /// Every rule this build reads; one it cannot (a definition stored by another version) is left
    /// out, so counting, merges and upkeep go on for the others.
    static func readable(on connection: isolated PostgresConnection) throws -> [StoredTagRule] {
        try rows(on: connection, code: nil).compactMap { try? stored($0) }
    }

    static func rows(on connection: isolated PostgresConnection, code: String?) throws -> PostgresRows {
        try connection.query("""
            SELECT code, id, definition::text AS definition, state, scanned, total, extract(epoch FROM updated_at)::float8 AS updated_at
            FROM tag_rules WHERE $1::text IS NULL OR code = $1 ORDER BY code
            """, [code])
    }

    static func stored(_ row: PostgresRow) throws -> StoredTagRule {
        let code = try row.requiredString("code")
        let text = try row.requiredString("definition")
        guard let json = try? JSONValue.parse(Array(text.utf8)) else {
            throw PostgresError(.column, "tag rule \(code): definition is not JSON")
        }
        let rule: TagRule
        do { rule = try TagRule.parse(code: code, json: json) } catch {
            throw PostgresError(.column, "tag rule \(code): stored definition no longer parses: \(error)")
        }
        let stateText = try row.requiredString("state")
        guard let state = StoredTagRule.State(rawValue: stateText) else {
            throw PostgresError(.column, "tag rule \(code): unknown state \(stateText)")
        }
        return StoredTagRule(rule: rule, id: Int32(try row.requiredInt("id")), state: state, scanned: try row.requiredInt64("scanned"),
                             total: try row.requiredInt64("total"), updatedAt: Date(timeIntervalSince1970: try row.requiredDouble("updated_at")))
    }
}

/// The rules a pipeline batch counts for, as of one version of them.
struct RuleSet: Sendable {
    let version: Int64
    let rules: [StoredTagRule]
    /// Rules by the event kinds they count.
    let byKind: [EventKind: [StoredTagRule]]

    init(version: Int64, rules: [StoredTagRule]) {
        self.version = version
        self.rules = rules
        var byKind: [EventKind: [StoredTagRule]] = [:]
        for rule in rules {
            for kind in rule.rule.criteria.kinds { byKind[kind, default: []].append(rule) }
        }
        self.byKind = byKind
    }

    static func load(on connection: isolated PostgresConnection) throws -> RuleSet {
        let version = try currentVersion(on: connection)
        return RuleSet(version: version, rules: try TagRuleStore.load(on: connection, code: nil))
    }

    static func currentVersion(on connection: isolated PostgresConnection) throws -> Int64 {
        guard let version = try connection.query("SELECT version FROM tag_rules_version").first?.requiredInt64("version") else {
            throw PostgresError(.column, "tag_rules_version has no row")
        }
        return version
    }
}

/// The last rules a process loaded, shared by its batches; replaced when a batch sees another version.
final class RuleCache: Sendable {
    private let current = Mutex<RuleSet?>(nil)

    var rules: RuleSet? { current.withLock { $0 } }

    /// The rules of `version`: the cached ones, or loaded on `connection` (inside the batch's
    /// transaction, after the lock, so what it reads is what the batch counts by).
    func rules(version: Int64, on connection: isolated PostgresConnection) throws -> RuleSet {
        if let cached = rules, cached.version == version { return cached }
        // A stored definition this build no longer reads is left out, not allowed to fail every
        // batch of the pipeline (the admin API shows it refused until it is saved again).
        let loaded = RuleSet(version: version, rules: try TagRuleStore.readable(on: connection))
        current.withLock { $0 = loaded }
        return loaded
    }
}
