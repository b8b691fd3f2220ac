import Contracts
import Foundation
import Members
import PostgresClient

/// What tag rules did with a batch.
public enum AudienceOutcome: Sendable, Equatable {
    /// An event counted for a rule.
    case counted(event: String, rule: String)
    /// A member newly holds a tag through a rule.
    case tagged(member: Int64, tag: String, rule: String)
}

/// Tag rules, live: each event a batch stores for the first time counts, inside the batch's
/// transaction, for every rule whose kinds and conditions it matches, in its member's hour bucket;
/// the members whose counts moved are evaluated at once, so a fan is tagged seconds after the
/// event that qualified them.
///
/// Counted once: only an event whose history row this batch inserted counts (a redelivery or a
/// retried batch finds the row and counts nothing), and the rules lock splits the events between
/// this path and a rule's backfill (see ``RulesLock``).
public struct AudienceService: Sendable {
    /// Every external event: platforms, server events and beacons (a verified page view counts
    /// for a rule on page views; a claimed one never does).
    public static let selector = EventSelector(["wechat.#", "alipay.#", "weibo.#", "qq.#", "server.#", "h5.#"])

    public var selector: EventSelector { Self.selector }

    let members: MemberDirectory
    let cache = RuleCache()

    public init(database: PostgresPool) {
        members = MemberDirectory(database: database)
    }

    public struct Plan: Sendable {
        let events: [Envelope]
    }

    /// Makes sure every subject the cached rules could count is a member (their first sighting
    /// creates them, as for points); the counting itself happens in the transaction.
    public func prepare(_ events: [Envelope]) async throws -> Plan {
        let verified = events.filter(\.subject.verified)
        if let rules = cache.rules, !rules.rules.isEmpty {
            var identities: [Identity: String?] = [:]
            for event in verified where rules.byKind[event.kind] != nil {
                if let identity = event.platformIdentity, identities[identity] == nil || event.subject.unionid != nil {
                    identities.updateValue(event.subject.unionid, forKey: identity)
                }
            }
            _ = try await members.resolve(identities)
        }
        return Plan(events: verified)
    }

    public func handle(_ plan: Plan, firstStored: Set<String>, in connection: isolated PostgresConnection) throws -> [AudienceOutcome] {
        // Claimed subjects only (beacons without a token): nothing here can count.
        guard !plan.events.isEmpty else { return [] }
        try connection.query("SELECT pg_advisory_xact_lock_shared($1)", [RulesLock.key])
        let rules = try cache.rules(version: try RuleSet.currentVersion(on: connection), on: connection)
        guard !rules.rules.isEmpty else { return [] }
        let now = Date()
        var hits = Hits()
        var outcomes: [AudienceOutcome] = []
        var seen: Set<String> = []
        for event in plan.events where firstStored.contains(event.id) && seen.insert(event.id).inserted {
            guard let candidates = rules.byKind[event.kind] else { continue }
            let tokenMember = event.tokenMember
            let identity = event.platformIdentity
            guard tokenMember != nil || identity != nil else { continue }
            let hour = hourOf(event.occurredAt)
            for stored in candidates where stored.rule.criteria.conditions.matches(event.attributes) {
                guard hour >= stored.rule.criteria.within.firstHour(at: now) else { continue }
                hits.append(rule: stored.id, event: event.id, identity: identity, tokenMember: tokenMember, hour: hour,
                            marked: stored.state == .backfilling)
                outcomes.append(.counted(event: event.id, rule: stored.rule.code))
            }
        }
        guard !hits.rules.isEmpty else { return [] }
        let touched = try Self.count(hits, on: connection)
        if !hits.markedRules.isEmpty {
            // What this batch counted for rules still backfilling: the backfill skips these.
            try connection.query("""
                INSERT INTO tag_rule_seen (rule_id, event_id) SELECT * FROM unnest($1::int[], $2::text[]) ON CONFLICT DO NOTHING
                """, [PostgresArray(hits.markedRules), PostgresArray(hits.markedEvents)])
        }
        guard !touched.rules.isEmpty else { return outcomes }
        var evaluation = SQLParameters()
        let pairs = "SELECT * FROM unnest(\(evaluation.add(PostgresArray(touched.rules)))::int[], \(evaluation.add(PostgresArray(touched.members)))::bigint[]) AS p (rule_id, member_id)"
        let moved = Set(touched.rules.map { Int32($0) })
        for held in try TagEvaluation.evaluate(touched: pairs, rules: rules.rules.filter { moved.contains($0.id) }, now: now,
                                               &evaluation, on: connection) {
            outcomes.append(.tagged(member: held.member, tag: held.tag, rule: held.rule))
        }
        return outcomes
    }

    /// The batch's matches, as columns for one statement.
    struct Hits {
        var rules: [Int64] = [], platforms: [String] = [], apps: [String] = [], openids: [String] = []
        var tokenMembers: [Int64] = [], hours: [Int64] = []
        var markedRules: [Int64] = [], markedEvents: [String] = []

        mutating func append(rule: Int32, event: String, identity: Identity?, tokenMember: Int64?, hour: Int, marked: Bool) {
            rules.append(Int64(rule))
            platforms.append(identity?.platform.rawValue ?? "")
            apps.append(identity?.app ?? "")
            openids.append(identity?.openid ?? "")
            tokenMembers.append(tokenMember ?? 0)
            hours.append(Int64(hour))
            if marked {
                markedRules.append(Int64(rule))
                markedEvents.append(event)
            }
        }
    }

    /// Adds the hits to their members' hour buckets, each subject resolved to the member it is now
    /// (a token's member through merges, an openid through its identity); answers the pairs moved.
    static func count(_ hits: Hits, on connection: isolated PostgresConnection) throws -> (rules: [Int64], members: [Int64]) {
        let rows = try connection.query("""
            WITH hits AS (
                SELECT * FROM unnest($1::int[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::int[])
                    AS h (rule_id, platform, app, openid, token_member, hour)
            ), resolved AS (
                SELECT h.rule_id, h.hour,
                       CASE WHEN h.token_member <> 0 THEN member_survivor(h.token_member) ELSE i.member_id END AS member_id
                FROM hits h
                LEFT JOIN member_identities i ON h.token_member = 0 AND i.platform = h.platform AND i.app = h.app AND i.openid = h.openid
            )
            INSERT INTO tag_rule_counts (rule_id, member_id, hour, events)
            SELECT rule_id, member_id, hour, count(*) FROM resolved WHERE member_id IS NOT NULL GROUP BY rule_id, member_id, hour
            -- One order for every batch's row locks: two workers' batches on the same members wait
            -- for each other instead of deadlocking (a deadlock is retried, but costs the batch).
            ORDER BY rule_id, member_id, hour
            ON CONFLICT (rule_id, member_id, hour) DO UPDATE SET events = tag_rule_counts.events + excluded.events
            RETURNING rule_id, member_id
            """, [PostgresArray(hits.rules), PostgresArray(hits.platforms), PostgresArray(hits.apps), PostgresArray(hits.openids),
                  PostgresArray(hits.tokenMembers), PostgresArray(hits.hours)])
        var rules: [Int64] = [], members: [Int64] = []
        for row in rows {
            rules.append(Int64(try row.requiredInt("rule_id")))
            members.append(try row.requiredInt64("member_id"))
        }
        return (rules, members)
    }
}
