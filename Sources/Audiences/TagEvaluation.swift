import Foundation
import PostgresClient

/// Turns counts into tags: a member holds a rule's tag while the events counted in the window
/// reach `atLeast`, until the hour that made them reach it slides out of the window.
///
/// Counts only grow (an event adds to its hour; nothing subtracts), so a member who qualifies goes
/// on qualifying until time alone takes the oldest needed hour out of the window: that instant is
/// the row's `expires_at`, known when the tag is set. So evaluating never removes a tag (readers
/// ignore rows past `expires_at`, the expiry job deletes them), and two evaluations that raced
/// keep the later expiry of the two (`greatest`): a stale one can only have computed an earlier
/// one. Sticky rules set no expiry.
enum TagEvaluation {
    /// Sets the tags of the `(rule_id, member_id)` pairs `touched` selects (a SQL query over
    /// `tag_rule_counts` or parameters), for the rules in `rules`. Returns the holds that are new.
    @discardableResult
    static func evaluate(touched: String, rules: [StoredTagRule], now: Date, _ parameters: inout SQLParameters,
                         on connection: isolated PostgresConnection) throws -> [(member: Int64, tag: String, rule: String)] {
        guard !rules.isEmpty else { return [] }
        let ids = parameters.add(PostgresArray(rules.map { Int64($0.id) }))
        let tags = parameters.add(PostgresArray(rules.map(\.rule.tag)))
        let sources = parameters.add(PostgresArray(rules.map(\.rule.source)))
        let atLeast = parameters.add(PostgresArray(rules.map { Int64($0.rule.criteria.atLeast) }))
        let firstHours = parameters.add(PostgresArray(rules.map { Int64($0.rule.criteria.within.firstHour(at: now)) }))
        let windows = parameters.add(PostgresArray(rules.map { $0.rule.criteria.within.seconds }))
        let sticky = parameters.add(PostgresArray(rules.map { $0.rule.sticky ? "t" : "f" }))
        let rows = try connection.query("""
            WITH rules AS (
                SELECT * FROM unnest(\(ids)::int[], \(tags)::text[], \(sources)::text[], \(atLeast)::bigint[], \(firstHours)::int[],
                                     \(windows)::bigint[], \(sticky)::bool[])
                    AS r (rule_id, tag, source, at_least, first_hour, window_seconds, sticky)
            ), touched AS (\(touched)),
            running AS (
                SELECT c.rule_id, c.member_id, c.hour,
                       sum(c.events) OVER (PARTITION BY c.rule_id, c.member_id ORDER BY c.hour DESC) AS running
                FROM tag_rule_counts c
                JOIN touched t ON t.rule_id = c.rule_id AND t.member_id = c.member_id
                JOIN rules r ON r.rule_id = c.rule_id
                WHERE c.hour >= r.first_hour
            ), qualified AS (
                SELECT w.rule_id, w.member_id, max(w.hour) AS hour
                FROM running w JOIN rules r ON r.rule_id = w.rule_id
                WHERE w.running >= r.at_least GROUP BY w.rule_id, w.member_id
            )
            INSERT INTO member_tags AS t (member_id, tag, source, created_at, expires_at)
            SELECT q.member_id, r.tag, r.source, now(),
                   CASE WHEN r.sticky THEN NULL ELSE to_timestamp((q.hour::bigint + 1) * 3600 + r.window_seconds) END
            FROM qualified q JOIN rules r ON r.rule_id = q.rule_id
            ORDER BY q.member_id, r.tag, r.source
            ON CONFLICT (member_id, tag, source) DO UPDATE SET
                created_at = CASE WHEN t.expires_at <= now() THEN excluded.created_at ELSE t.created_at END,
                expires_at = CASE WHEN t.expires_at IS NULL OR excluded.expires_at IS NULL THEN NULL
                                  WHEN t.expires_at <= now() THEN excluded.expires_at
                                  ELSE greatest(t.expires_at, excluded.expires_at) END
            RETURNING t.member_id, t.tag, t.source, (xmax = 0) AS inserted
            """, parameters.values)
        var held: [(member: Int64, tag: String, rule: String)] = []
        for row in rows where try row.requiredBool("inserted") {
            held.append((try row.requiredInt64("member_id"), try row.requiredString("tag"), String(try row.requiredString("source").dropFirst(5))))
        }
        return held
    }
}
