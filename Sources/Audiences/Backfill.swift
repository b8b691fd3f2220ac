import Contracts
import Foundation
import Jobs
import PostgresClient

/// What one backfill step did.
public enum BackfillStep: Sendable, Equatable {
    /// Counted a stretch of history; another step follows.
    case counted(scanned: Int64)
    /// Counted the last stretch, set the tags and went live.
    case finished(scanned: Int64, tagged: Int64)
    /// The rule changed or was deleted since this step was enqueued, or the step ran already.
    case stale
}

/// Counts a rule's stored history, a stretch of `occurred_at` per step, each step one transaction
/// that adds the stretch's events to the hour buckets and moves the rule's cursor (so a step that
/// died is done again whole, and a step already done finds the cursor moved and does nothing).
/// Events a live batch counted while the rule backfills are marked and skipped here.
///
/// A stretch is sized to about `targetEvents` events of the rule's kinds, learned from the last
/// one. 25,000: a step holds the bucket rows it writes until it commits, and a live batch counting
/// the same members waits for them; at 100,000 a step took 7 s at 13,000 events/s (measured) and
/// live events waited up to 12 s behind it. A quarter of that bounds the wait near 2 s.
public struct TagRuleBackfill: Sendable {
    let database: PostgresPool
    public var targetEvents: Int64 = 25_000

    public init(database: PostgresPool) { self.database = database }

    /// One stretch from `from` (the cursor the step was enqueued for), `span` seconds long.
    public func step(rule code: String, id: Int32, from expected: Date, span: Int64?) async throws -> BackfillStep {
        let target = targetEvents
        let now = Date()
        return try await database.transaction { connection -> BackfillStep in
            let rows = try connection.query("""
                SELECT code, id, definition::text AS definition, state, scanned, total, extract(epoch FROM updated_at)::float8 AS updated_at,
                       extract(epoch FROM cursor)::float8 AS cursor, extract(epoch FROM window_from)::float8 AS window_from,
                       extract(epoch FROM backfill_to)::float8 AS backfill_to
                FROM tag_rules WHERE code = $1 AND id = $2 FOR UPDATE
                """, [code, id])
            guard let row = rows.first else { return .stale }
            let stored = try TagRuleStore.stored(row)
            guard stored.state == .backfilling else { return .stale }
            // Counted to the end by an earlier run that died before the rule went live.
            guard let cursorSeconds = try row.optionalDouble("cursor") else { return .finished(scanned: 0, tagged: 0) }
            // Another run of this step already moved on.
            guard abs(cursorSeconds - expected.timeIntervalSince1970) < 0.001 else { return .stale }
            let cursor = Date(timeIntervalSince1970: cursorSeconds)
            let backfillTo = Date(timeIntervalSince1970: try row.requiredDouble("backfill_to"))
            let criteria = stored.rule.criteria
            // A step is planned above PostgreSQL's JIT threshold and compiling took 2.1 s of a 15 s
            // step (measured); the statement is simple enough that the interpreter is faster.
            try connection.query("SET LOCAL jit = off")
            if stored.total == 0 && stored.scanned == 0 {
                // The denominator of progress: events of the rule's kinds in its window (index only).
                let total = try connection.query("""
                    SELECT count(*) AS n FROM events WHERE kind = ANY($1::text[]) AND occurred_at >= $2
                    """, [PostgresArrayOfKinds(criteria.kinds), cursor]).first?.requiredInt64("n") ?? 0
                try connection.query("UPDATE tag_rules SET total = $2 WHERE id = $1", [id, max(total, 1)])
            }
            // Seconds of history this step reads; the last step is open-ended (events dated after
            // the rule was saved, clocks running ahead).
            let seconds = max(60, min(span ?? 3600, 86_400 * 30))
            let end = cursor.addingTimeInterval(Double(seconds))
            let last = end >= backfillTo
            var parameters = SQLParameters()
            let from = parameters.add(cursor)
            let until = last ? "TRUE" : "e.occurred_at < \(parameters.add(end))"
            let ruleID = parameters.add(Int64(id))
            let matched = criteria.conditions.sql("e.attributes", &parameters)
            let kinds = parameters.add(PostgresArrayOfKinds(criteria.kinds))
            let counted = try connection.query("""
                WITH scanned AS (
                    SELECT e.id, e.platform, e.app, e.openid, e.member_id, e.occurred_at,
                           e.verified AND (\(matched)) AND NOT EXISTS (SELECT 1 FROM tag_rule_seen s WHERE s.rule_id = \(ruleID) AND s.event_id = e.id) AS counts
                    FROM events e
                    WHERE e.kind = ANY(\(kinds)::text[]) AND e.occurred_at >= \(from) AND \(until)
                ), subjects AS (
                    SELECT s.platform, s.app, s.openid, s.member_id, floor(extract(epoch FROM s.occurred_at) / 3600)::int AS hour,
                           count(*) AS events
                    FROM scanned s WHERE s.counts GROUP BY 1, 2, 3, 4, 5
                ), resolved AS (
                    -- Each subject looked up by the identities' primary key: a join let PostgreSQL
                    -- hash all identities on every step (2.2M rows, 6.4 s of a 15 s step, measured).
                    SELECT CASE WHEN s.member_id IS NOT NULL THEN member_survivor(s.member_id)
                                ELSE (SELECT i.member_id FROM member_identities i
                                      WHERE i.platform = s.platform AND i.app = s.app AND i.openid = s.openid) END AS member_id,
                           s.hour, s.events
                    FROM subjects s OFFSET 0
                ), added AS (
                    INSERT INTO tag_rule_counts (rule_id, member_id, hour, events)
                    SELECT \(ruleID), member_id, hour, sum(events) FROM resolved WHERE member_id IS NOT NULL GROUP BY member_id, hour
                    ORDER BY member_id, hour
                    ON CONFLICT (rule_id, member_id, hour) DO UPDATE SET events = tag_rule_counts.events + excluded.events
                    RETURNING 1
                )
                SELECT (SELECT count(*) FROM scanned) AS scanned, (SELECT count(*) FROM added) AS buckets
                """, parameters.values)
            let scanned = try counted.first?.requiredInt64("scanned") ?? 0
            guard last else {
                // The next stretch sized from this one's density.
                let next = scanned == 0 ? seconds * 4 : max(60, min(86_400 * 30, seconds * target / max(scanned, 1)))
                try connection.query("UPDATE tag_rules SET cursor = $2, scanned = scanned + $3 WHERE id = $1", [id, end, scanned])
                try JobStore.enqueue([AudienceJobs.backfillJob(rule: code, id: id, from: end, span: next)], on: connection)
                return .counted(scanned: scanned)
            }
            // Every stretch is counted: set the tags of every member the rule counted.
            var evaluation = SQLParameters()
            let pairs = "SELECT DISTINCT rule_id, member_id FROM tag_rule_counts WHERE rule_id = \(evaluation.add(Int64(id)))"
            let tagged = try TagEvaluation.evaluate(touched: pairs, rules: [stored], now: now, &evaluation, on: connection).count
            try connection.query("""
                UPDATE tag_rules SET cursor = NULL, scanned = scanned + $2, total = greatest(total, scanned + $2) WHERE id = $1
                """, [id, scanned])
            return .finished(scanned: scanned, tagged: Int64(tagged))
        }
    }

    /// After the last step: the rule goes live under the rules lock (batches from then on stop
    /// marking what they count), and the marks are deleted.
    public func goLive(rule code: String, id: Int32) async throws {
        try await database.transaction { connection in
            try connection.query("SELECT pg_advisory_xact_lock($1)", [RulesLock.key])
            try connection.query("UPDATE tag_rules SET state = $3, updated_at = now() WHERE code = $1 AND id = $2 AND cursor IS NULL",
                                 [code, id, StoredTagRule.State.live.rawValue])
            try TagRuleStore.bumpVersion(on: connection)
        }
        try await database.query("DELETE FROM tag_rule_seen WHERE rule_id = $1", [id])
    }
}
