import Foundation
import PostgresClient
import RedisClient

/// Recomputes the Redis counters of the current natural day, week and month (and the
/// frequency marks of daily and once-only rules) from the ledger, for a Redis that lost its data
/// (`fanflow rebuild-counters`).
///
/// A counter is only ever raised to what the ledger proves, never lowered: while workers keep
/// deciding, Redis may already be ahead of the ledger by decisions not yet committed, and lowering
/// it would let them exceed a cap.
public struct CounterRebuild: Sendable {
    let database: PostgresPool
    let redis: RedisPool
    let calendar: PeriodCalendar

    public init(database: PostgresPool, redis: RedisPool, calendar: PeriodCalendar) {
        self.database = database
        self.redis = redis
        self.calendar = calendar
    }

    /// Rebuilds for every member (`members` nil) or the given ones; returns the keys it raised.
    public func run(now: Date, rules: [PointsRule], members: [Int64]? = nil) async throws -> Int {
        let current = calendar.periods(of: now)
        // The earliest instant of the current week or month, whichever starts first, in the zone.
        let startOfDay = calendar.startOfDay(now)
        let since = startOfDay.addingTimeInterval(-32 * 86_400)
        var scope = ""
        var parameters: [any PostgresEncodable] = [calendar.timeZone.identifier, since]
        if let members {
            parameters.append(PostgresArray(members))
            scope = "AND member_id = ANY($3::bigint[])"
        }
        let rows = try await database.query("""
            SELECT member_id, rule,
                   to_char(occurred_at AT TIME ZONE $1, 'YYYYMMDD') AS day,
                   to_char(occurred_at AT TIME ZONE $1, 'IYYY"W"IW') AS week,
                   to_char(occurred_at AT TIME ZONE $1, 'YYYYMM') AS month,
                   sum(points) AS points, sum(growth) AS growth
            FROM ledger WHERE kind IN ('grant', 'pending') AND rule IS NOT NULL AND occurred_at >= $2 \(scope)
            GROUP BY 1, 2, 3, 4, 5
            """, parameters)
        var totals: [String: (value: Int64, ttl: Int)] = [:]
        func add(_ key: String, _ value: Int64, _ ttl: Int) {
            guard value > 0 else { return }
            totals[key, default: (0, ttl)].value += value
        }
        let daily = Set(rules.filter { $0.frequency == .daily }.map(\.code))
        for row in rows {
            guard let member = row.int("member_id").map(Int64.init), let rule = row.string("rule") else { continue }
            let points = Int64(row.string("points").flatMap { Int64($0) } ?? 0)
            let growth = Int64(row.string("growth").flatMap { Int64($0) } ?? 0)
            for (measure, value) in [("p", points), ("g", growth)] {
                if row.string("day") == current.day {
                    add(PointsDecider.counterKey(member: member, rule: rule, measure: measure, period: "d" + current.day), value, PointsDecider.dayTTL)
                }
                if row.string("week") == current.week {
                    add(PointsDecider.counterKey(member: member, rule: rule, measure: measure, period: "w" + current.week), value, PointsDecider.weekTTL)
                }
                if row.string("month") == current.month {
                    add(PointsDecider.counterKey(member: member, rule: rule, measure: measure, period: "m" + current.month), value, PointsDecider.monthTTL)
                }
            }
            if daily.contains(rule), row.string("day") == current.day {
                totals[PointsDecider.frequencyKey(member: member, rule: rule, frequency: .daily, day: current.day)] = (1, PointsDecider.dayTTL)
            }
        }
        // Once-only rules are marked for every member the ledger shows they ever granted.
        let once = rules.filter { $0.frequency == .once }.map(\.code)
        if !once.isEmpty {
            var onceParameters: [any PostgresEncodable] = [PostgresArray(once)]
            var onceScope = ""
            if let members {
                onceParameters.append(PostgresArray(members))
                onceScope = "AND member_id = ANY($2::bigint[])"
            }
            for row in try await database.query("""
                SELECT DISTINCT member_id, rule FROM ledger WHERE rule = ANY($1::text[]) AND kind IN ('grant', 'pending') \(onceScope)
                """, onceParameters) {
                guard let member = row.int("member_id"), let rule = row.string("rule") else { continue }
                totals[PointsDecider.frequencyKey(member: Int64(member), rule: rule, frequency: .once, day: "")] = (1, 0)
            }
        }
        var raised = 0
        let raise = try LoyaltyScripts.raiseCounter()
        let calls = totals.map { (script: raise, keys: [$0.key], arguments: [String($0.value.value), String($0.value.ttl)]) }
        var start = 0
        while start < calls.count {
            let chunk = Array(calls[start..<min(start + 1000, calls.count)])
            for reply in try await redis.evalSHA(chunk) {
                switch reply {
                case .integer(1): raised += 1
                case .integer(0): break
                case .error(let message): throw RedisError(.server, message)
                default: throw UnexpectedScriptReply(script: "raise-counter.lua", reply: reply)
                }
            }
            start += chunk.count
        }
        return raised
    }
}
