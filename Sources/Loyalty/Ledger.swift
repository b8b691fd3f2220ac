import Contracts
import Foundation
import Jobs
import Members
import PostgresClient

/// A ledger entry a worker writes for one rule's decision on one event.
public struct LedgerGrant: Sendable {
    public enum Kind: String, Sendable {
        /// Added to the balance now.
        case grant
        /// Earned, granted at `dueAt` unless reversed first.
        case pending
    }

    public let member: Int64
    public let kind: Kind
    public let rule: String
    public let points: Int64
    public let growth: Int64
    public let reason: String
    public let eventID: String
    public let ref: String?
    public let occurredAt: Date
    public let dueAt: Date?
    public let expiresAt: Date?
    /// Whom the causing event was about: a level change is published under this identity.
    public let subject: Identity

    public init(member: Int64, kind: Kind, rule: String, points: Int64, growth: Int64, reason: String, eventID: String,
                ref: String?, occurredAt: Date, dueAt: Date?, expiresAt: Date? = nil, subject: Identity) {
        self.member = member
        self.kind = kind
        self.rule = rule
        self.points = points
        self.growth = growth
        self.reason = reason
        self.eventID = eventID
        self.ref = ref
        self.occurredAt = occurredAt
        self.dueAt = dueAt
        self.expiresAt = expiresAt
        self.subject = subject
    }
}

/// A refund of what `rule` granted `member` for the business object `ref` (an order).
public struct LedgerReversal: Sendable {
    public let member: Int64
    public let rule: String
    public let ref: String
    public let reason: String
    public let eventID: String
    public let occurredAt: Date
    public let subject: Identity

    public init(member: Int64, rule: String, ref: String, reason: String, eventID: String, occurredAt: Date, subject: Identity) {
        self.member = member
        self.rule = rule
        self.ref = ref
        self.reason = reason
        self.eventID = eventID
        self.occurredAt = occurredAt
        self.subject = subject
    }
}

/// Points a member earned from one event (kind `points.granted`) or that matured from a pending
/// purchase grant (kind `points.matured`), as published: every rule's share summed, so the member
/// hears of it once.
struct PointsNews {
    var member: Int64
    var cause: String
    var kind: EventKind
    var points: Int64 = 0
    var growth: Int64 = 0
    var rules: [String] = []
    var subject: Identity?
}

/// A member whose level changed, as published (kind `member.level_changed`).
public struct LevelChange: Sendable, Equatable {
    public let member: Int64
    public let from: String
    public let to: String
    public let growth: Int64
}

/// Writes ledger entries and the balances they add up to, in one transaction per batch.
///
/// Every entry is inserted with ON CONFLICT DO NOTHING against the unique (event, rule, member,
/// kind) index, and only entries actually inserted move a balance: a redelivered batch, or a
/// decision Redis forgot and made again, changes nothing. Members are updated in id order so
/// concurrent batches touching the same members cannot deadlock.
public struct Ledger: Sendable {
    let database: PostgresPool
    /// Whether grants and maturations are published as points news.
    let news: any PointsNewsPolicy

    public init(database: PostgresPool, news: any PointsNewsPolicy = AlwaysAnnounce()) {
        self.database = database
        self.news = news
    }

    struct Delta {
        var points: Int64 = 0, growth: Int64 = 0, pendingPoints: Int64 = 0, pendingGrowth: Int64 = 0
        var subject: Identity?
        var cause = ""
        init(cause: String = "") { self.cause = cause }
        var isEmpty: Bool { points == 0 && growth == 0 && pendingPoints == 0 && pendingGrowth == 0 }
    }

    /// Applies grants and reversals in a transaction of its own; returns the level changes it
    /// caused (already in the outbox). The pipeline writes through ``write(grants:reversals:levels:announcing:on:)``
    /// instead, inside the batch's one transaction.
    @discardableResult
    public func apply(grants: [LedgerGrant], reversals: [LedgerReversal], levels: LevelTable) async throws -> [LevelChange] {
        guard grants.contains(where: { $0.points != 0 || $0.growth != 0 }) || !reversals.isEmpty else { return [] }
        let announcing = await news.announces(.pointsGranted)
        return try await database.transaction { connection in
            try Self.write(grants: grants, reversals: reversals, levels: levels, announcing: announcing, on: connection).levelChanges
        }
    }

    /// Whether grants are announced now (``PointsNewsPolicy``): asked before a transaction opens,
    /// since the policy may read the push triggers.
    public func announcesGrants() async -> Bool { await news.announces(.pointsGranted) }

    /// What one write did.
    public struct Written: Sendable {
        /// The grants that made a new ledger row, by the unique index's key: the others were
        /// written before (a redelivery, a retried batch) and changed nothing.
        public var inserted: Set<EntryKey> = []
        /// Reversals that moved a balance, with what they took back (negative amounts, pending
        /// and spendable together).
        public var reversed: [(key: EntryKey, points: Int64, growth: Int64)] = []
        public var levelChanges: [LevelChange] = []
    }

    /// A ledger row's identity for idempotency: the unique (event, rule, member, kind) index.
    public struct EntryKey: Sendable, Hashable {
        public let eventID: String
        public let rule: String
        public let member: Int64
        public let kind: String
    }

    /// Writes grants and reversals in the caller's transaction: the ledger rows, the maturity jobs
    /// of pending ones, balances and levels (members in id order), level changes and, when
    /// `announcing`, points news into the outbox. Every row is keyed by the ledger's unique index,
    /// so a batch written twice moves nothing the second time.
    public static func write(grants: [LedgerGrant], reversals: [LedgerReversal], levels: LevelTable, announcing: Bool,
                             on connection: isolated PostgresConnection) throws -> Written {
        let grants = grants.filter { $0.points != 0 || $0.growth != 0 }
        var written = Written()
        guard !grants.isEmpty || !reversals.isEmpty else { return written }
        var deltas: [Int64: Delta] = [:]
        var pointsNews = PointsNewsBuilder()
        if !grants.isEmpty {
            var rows: [String] = []
            var parameters: [any PostgresEncodable] = []
            for (index, grant) in grants.enumerated() {
                let base = index * 11
                rows.append("(" + (1...11).map { "$\(base + $0)" }.joined(separator: ",") + ")")
                parameters += [grant.member, grant.kind.rawValue, grant.rule, grant.points, grant.growth, grant.reason,
                               grant.eventID, grant.ref, grant.occurredAt, grant.dueAt, grant.expiresAt] as [any PostgresEncodable]
            }
            let inserted = try connection.query("""
                INSERT INTO ledger (member_id, kind, rule, points, growth, reason, event_id, ref, occurred_at, due_at, expires_at)
                VALUES \(rows.joined(separator: ",")) ON CONFLICT DO NOTHING
                RETURNING id, member_id, kind, rule, points, growth, event_id, extract(epoch FROM due_at)::float8 AS due_at
                """, parameters)
            // Each pending entry matures through a job committed with it: neither exists without the other.
            try JobStore.enqueue(inserted.compactMap { row in
                guard row.string("kind") == LedgerGrant.Kind.pending.rawValue, let id = row.int("id"),
                      let due = row.string("due_at").flatMap(Double.init) else { return nil }
                return LoyaltyJobs.matureJob(ledgerID: Int64(id), dueAt: Date(timeIntervalSince1970: due))
            }, on: connection)
            let subjects = Dictionary(grants.map { ($0.member, ($0.subject, $0.eventID)) }, uniquingKeysWith: { $1 })
            for row in inserted {
                guard let member = row.int("member_id").map(Int64.init) else { continue }
                let points = Int64(row.int("points") ?? 0), growth = Int64(row.int("growth") ?? 0)
                var delta = deltas[member] ?? Delta()
                let cause = row.string("event_id") ?? ""
                let kind = row.string("kind") ?? ""
                written.inserted.insert(EntryKey(eventID: cause, rule: row.string("rule") ?? "", member: member, kind: kind))
                if kind == LedgerGrant.Kind.pending.rawValue {
                    delta.pendingPoints += points
                    delta.pendingGrowth += growth
                } else {
                    delta.points += points
                    delta.growth += growth
                    pointsNews.add(member: member, cause: cause, kind: .pointsGranted, points: points, growth: growth,
                             rule: row.string("rule"), subject: subjects[member]?.0)
                }
                delta.subject = subjects[member]?.0
                delta.cause = cause
                deltas[member] = delta
            }
        }
        for reversal in reversals {
            let delta = try Self.reverse(reversal, on: connection)
            guard !delta.isEmpty else { continue }
            written.reversed.append((EntryKey(eventID: reversal.eventID, rule: reversal.rule, member: reversal.member, kind: "reversal"),
                                     delta.points + delta.pendingPoints, delta.growth + delta.pendingGrowth))
            var total = deltas[reversal.member] ?? Delta()
            total.points += delta.points
            total.growth += delta.growth
            total.pendingPoints += delta.pendingPoints
            total.pendingGrowth += delta.pendingGrowth
            total.subject = reversal.subject
            total.cause = reversal.eventID
            deltas[reversal.member] = total
        }
        let update = try Self.updateBalances(deltas, levels: levels, on: connection)
        if announcing { try pointsNews.publish(balances: update.balances, on: connection) }
        written.levelChanges = update.changes
        return written
    }

    /// Grants the pending entries `ids` (purchase points after the maturation period, a post after
    /// its review): each becomes a `matured` entry and moves from the pending to the spendable
    /// balance. Entries already settled (matured, or cancelled by a refund) are left alone, so it
    /// is safe to run twice. It waits for a refund that holds an entry rather than skipping it: the
    /// job runs once, and an entry skipped while a refund that then rolled back held it would
    /// never mature. Returns how many matured.
    public func mature(ids: [Int64], levels: LevelTable) async throws -> Int {
        guard !ids.isEmpty else { return 0 }
        let announcing = await news.announces(.pointsMatured)
        return try await database.transaction { connection in
            let matured = try connection.query("""
                WITH due AS (
                    SELECT id FROM ledger WHERE id = ANY($1::bigint[]) AND kind = 'pending' AND settled_at IS NULL
                    ORDER BY id FOR UPDATE),
                settled AS (
                    UPDATE ledger SET settled_at = now() FROM due WHERE ledger.id = due.id
                    RETURNING ledger.member_id, ledger.rule, ledger.points, ledger.growth, ledger.reason, ledger.event_id,
                              ledger.ref, ledger.occurred_at, ledger.expires_at)
                INSERT INTO ledger (member_id, kind, rule, points, growth, reason, event_id, ref, occurred_at, expires_at)
                SELECT member_id, 'matured', rule, points, growth, reason, event_id, ref, occurred_at, expires_at FROM settled
                ON CONFLICT DO NOTHING
                RETURNING member_id, rule, points, growth, event_id
                """, [PostgresArray(ids)])
            var deltas: [Int64: Delta] = [:]
            var pointsNews = PointsNewsBuilder()
            for row in matured {
                guard let member = row.int("member_id").map(Int64.init) else { continue }
                let points = Int64(row.int("points") ?? 0), growth = Int64(row.int("growth") ?? 0)
                var delta = deltas[member] ?? Delta()
                delta.points += points
                delta.growth += growth
                delta.pendingPoints -= points
                delta.pendingGrowth -= growth
                delta.cause = row.string("event_id") ?? ""
                deltas[member] = delta
                pointsNews.add(member: member, cause: delta.cause, kind: .pointsMatured, points: points, growth: growth,
                         rule: row.string("rule"), subject: nil)
            }
            let update = try Self.updateBalances(deltas, levels: levels, on: connection)
            if announcing { try pointsNews.publish(balances: update.balances, on: connection) }
            return matured.count
        }
    }

    /// Takes back what is left of granted points whose expiry has come, as `expiry` entries.
    ///
    /// Points are spent oldest first, so a member's balance is made of their newest grants: what
    /// is left of an expiring grant is the balance less every newer unexpired grant, at most the
    /// grant itself. Safe to run concurrently and again after a crash, like ``mature(ids:levels:)``.
    public func expireDue(asOf now: Date, limit: Int = 1000, levels: LevelTable) async throws -> Int {
        try await database.transaction { connection in
            let due = try connection.query("""
                SELECT id, member_id, rule, points, event_id, occurred_at FROM ledger
                WHERE expires_at <= $1 AND settled_at IS NULL AND kind IN ('grant', 'matured') AND points > 0
                ORDER BY member_id, id LIMIT $2 FOR UPDATE SKIP LOCKED
                """, [now, limit])
            var deltas: [Int64: Delta] = [:]
            for row in due {
                guard let id = row.int("id"), let member = row.int("member_id").map(Int64.init) else { continue }
                let granted = Int64(row.int("points") ?? 0)
                let state = try connection.query("""
                    SELECT m.points AS balance,
                           (SELECT coalesce(sum(points), 0) FROM ledger l WHERE l.member_id = m.id AND l.id > $2
                              AND l.kind IN ('grant', 'matured') AND l.points > 0 AND l.settled_at IS NULL) AS newer
                    FROM members m WHERE m.id = $1 FOR NO KEY UPDATE
                    """, [member, id])
                let balance = Int64(state.first?.int("balance") ?? 0) + (deltas[member]?.points ?? 0)
                let newer = Int64(state.first?.int("newer") ?? 0)
                let left = max(0, min(granted, balance - newer))
                try connection.query("UPDATE ledger SET settled_at = now() WHERE id = $1", [id])
                guard left > 0 else { continue }
                let inserted = try connection.query("""
                    INSERT INTO ledger (member_id, kind, rule, points, growth, reason, event_id, occurred_at)
                    VALUES ($1, 'expiry', $2, $3, 0, 'points expired', $4, $5) ON CONFLICT DO NOTHING RETURNING id
                    """, [member, row.string("rule"), -left, row.string("event_id"), now])
                guard !inserted.isEmpty else { continue }
                var delta = deltas[member] ?? Delta()
                delta.points -= left
                deltas[member] = delta
            }
            _ = try Self.updateBalances(deltas, levels: levels, on: connection)
            return due.count
        }
    }

    /// Cancels what is still pending for the ref, and reverses what was already granted for it.
    static func reverse(_ reversal: LedgerReversal, on connection: isolated PostgresConnection) throws -> Delta {
        var delta = Delta()
        let cancelled = try connection.query("""
            WITH pending AS (
                UPDATE ledger SET settled_at = now()
                WHERE member_id = $1 AND rule = $2 AND ref = $3 AND kind = 'pending' AND settled_at IS NULL
                RETURNING points, growth)
            INSERT INTO ledger (member_id, kind, rule, points, growth, reason, event_id, ref, occurred_at)
            SELECT $1, 'cancelled', $2, -sum(points), -sum(growth), $4, $5, $3, $6 FROM pending HAVING count(*) > 0
            ON CONFLICT DO NOTHING
            RETURNING points, growth
            """, [reversal.member, reversal.rule, reversal.ref, reversal.reason, reversal.eventID, reversal.occurredAt])
        for row in cancelled {
            delta.pendingPoints += Int64(row.int("points") ?? 0)
            delta.pendingGrowth += Int64(row.int("growth") ?? 0)
        }
        // What is granted and not yet taken back (by an earlier refund event) is reversed.
        let reversed = try connection.query("""
            WITH net AS (
                SELECT coalesce(sum(points), 0) AS points, coalesce(sum(growth), 0) AS growth FROM ledger
                WHERE member_id = $1 AND rule = $2 AND ref = $3 AND kind IN ('grant', 'matured', 'reversal'))
            INSERT INTO ledger (member_id, kind, rule, points, growth, reason, event_id, ref, occurred_at)
            SELECT $1, 'reversal', $2, -points, -growth, $4, $5, $3, $6 FROM net WHERE points > 0 OR growth > 0
            ON CONFLICT DO NOTHING
            RETURNING points, growth
            """, [reversal.member, reversal.rule, reversal.ref, reversal.reason, reversal.eventID, reversal.occurredAt])
        for row in reversed {
            delta.points += Int64(row.int("points") ?? 0)
            delta.growth += Int64(row.int("growth") ?? 0)
        }
        return delta
    }

    struct BalanceUpdate {
        var changes: [LevelChange] = []
        /// Each touched member's spendable balance after the update.
        var balances: [Int64: Int64] = [:]
    }

    /// Adds the deltas to the members' balances (in id order) and moves levels with growth. With
    /// `force`, members with an empty delta are looked at too (their balances changed otherwise).
    @discardableResult
    static func updateBalances(_ deltas: [Int64: Delta], levels: LevelTable, on connection: isolated PostgresConnection,
                               force: Bool = false) throws -> BalanceUpdate {
        let touched = deltas.filter { force || !$0.value.isEmpty }.sorted { $0.key < $1.key }
        guard !touched.isEmpty else { return BalanceUpdate() }
        // Row locks in id order first, then one UPDATE for all: concurrent batches cannot deadlock.
        // NO KEY UPDATE, as the UPDATE itself takes: the ledger rows just inserted hold KEY SHARE
        // locks on their members (the foreign key), and FOR UPDATE would wait on another batch's
        // while that batch waits on ours.
        // The locked rows give each member's growth and level, so new levels are decided here and
        // written by the same UPDATE instead of one more statement per member.
        let ids = PostgresArray(touched.map(\.key))
        let locked = try connection.query("""
            SELECT id, points, growth, level FROM members WHERE id = ANY($1::bigint[]) ORDER BY id FOR NO KEY UPDATE
            """, [ids])
        guard locked.count == touched.count else { throw PostgresError(.usage, "a member of the batch does not exist") }
        var current: [Int64: (points: Int64, growth: Int64, level: String)] = [:]
        for row in locked {
            guard let id = row.int("id") else { continue }
            current[Int64(id)] = (Int64(row.int("points") ?? 0), Int64(row.int("growth") ?? 0), row.string("level") ?? "")
        }
        var rows: [String] = []
        var parameters: [any PostgresEncodable] = []
        var update = BalanceUpdate()
        var envelopes: [Envelope] = []
        for (index, (member, delta)) in touched.enumerated() {
            let (pointsBefore, growthBefore, old) = current[member] ?? (0, 0, "")
            update.balances[member] = pointsBefore + delta.points
            let growth = growthBefore + delta.growth
            let new = levels.level(forGrowth: growth)
            let b = index * 6
            rows.append("($\(b + 1)::bigint,$\(b + 2)::bigint,$\(b + 3)::bigint,$\(b + 4)::bigint,$\(b + 5)::bigint,$\(b + 6)::text)")
            parameters += [member, delta.points, delta.growth, delta.pendingPoints, delta.pendingGrowth, new] as [any PostgresEncodable]
            // A member's first entry sets the level they start at; only a move from there is news.
            let before = old.isEmpty ? levels.level(forGrowth: growthBefore) : old
            guard new != before else { continue }
            let change = LevelChange(member: member, from: before, to: new, growth: growth)
            update.changes.append(change)
            envelopes.append(levelChangeEnvelope(change, subject: delta.subject, cause: delta.cause))
        }
        try connection.query("""
            UPDATE members m SET points = m.points + d.p, growth = m.growth + d.g, pending_points = m.pending_points + d.pp,
                   pending_growth = m.pending_growth + d.pg, level = d.lvl, updated_at = now()
            FROM (VALUES \(rows.joined(separator: ","))) AS d(id, p, g, pp, pg, lvl)
            WHERE m.id = d.id
            """, parameters)
        try Outbox.insert(envelopes, on: connection)
        return update
    }

    static func levelChangeEnvelope(_ change: LevelChange, subject: Identity?, cause: String) -> Envelope {
        let now = Date()
        var attributes: [String: JSONValue] = [
            "memberId": .integer(change.member), "from": .string(change.from), "to": .string(change.to),
            "growth": .integer(change.growth), "causeEventId": .string(cause),
        ]
        if let subject { attributes["memberPlatform"] = .string(subject.platform.rawValue) }
        return Envelope(id: "fanflow:level:\(change.member):\(change.to):\(cause)", platform: .fanflow,
                        app: subject?.app ?? "", kind: .levelChanged, subject: .init(openid: subject?.openid),
                        occurredAt: now, receivedAt: now, attributes: attributes)
    }
}

/// The `points.granted` and `points.matured` news of one transaction, one per member and causing
/// event, written to the outbox with the balances the transaction left.
struct PointsNewsBuilder {
    private var news: [String: PointsNews] = [:]

    mutating func add(member: Int64, cause: String, kind: EventKind, points: Int64, growth: Int64, rule: String?, subject: Identity?) {
        guard points != 0 || growth != 0 else { return }
        let key = "\(kind.rawValue):\(member):\(cause)"
        if news[key] == nil { news[key] = PointsNews(member: member, cause: cause, kind: kind, subject: subject) }
        news[key]?.points += points
        news[key]?.growth += growth
        if let rule { news[key]?.rules.append(rule) }
    }

    /// In key order: two transactions writing the same news (a redelivery racing the original)
    /// take the unique index's locks in one order and cannot deadlock.
    func publish(balances: [Int64: Int64], on connection: isolated PostgresConnection) throws {
        try Outbox.insert(news.sorted { $0.key < $1.key }.map { $0.value.envelope(balance: balances[$0.value.member]) }, on: connection)
    }
}

extension PointsNews {
    /// Its id is fixed by what caused it, so a redelivered or re-run grant cannot announce twice.
    func envelope(balance: Int64?) -> Envelope {
        let now = Date()
        var attributes: [String: JSONValue] = [
            "memberId": .integer(member), "points": .integer(points), "growth": .integer(growth),
            "rules": .array(rules.sorted().map(JSONValue.string)), "causeEventId": .string(cause),
        ]
        if let balance { attributes["balance"] = .integer(balance) }
        if let subject { attributes["memberPlatform"] = .string(subject.platform.rawValue) }
        let tag = kind == .pointsMatured ? "matured" : "granted"
        return Envelope(id: "fanflow:\(tag):\(member):\(cause)", platform: .fanflow, app: subject?.app ?? "", kind: kind,
                        subject: .init(openid: subject?.openid), occurredAt: now, receivedAt: now, attributes: attributes)
    }
}

/// Whether points news of a kind are published now (`FANFLOW_POINTS_NEWS`).
public protocol PointsNewsPolicy: Sendable {
    func announces(_ kind: EventKind) async -> Bool
}

public struct AlwaysAnnounce: PointsNewsPolicy {
    public init() {}
    public func announces(_ kind: EventKind) async -> Bool { true }
}

public struct NeverAnnounce: PointsNewsPolicy {
    public init() {}
    public func announces(_ kind: EventKind) async -> Bool { false }
}
