import Contracts
import Foundation
import RedisClient

/// What the caps and frequency allowed one rule to grant for one event.
public struct Decision: Sendable, Equatable {
    public enum Status: String, Sendable {
        /// Granted in full.
        case granted
        /// Clamped by a cap (possibly to nothing).
        case capped
        /// Refused by the rule's frequency (once ever, once a day).
        case frequency
    }

    public let status: Status
    public let points: Int64
    public let growth: Int64

    public init(status: Status, points: Int64, growth: Int64) {
        self.status = status
        self.points = points
        self.growth = growth
    }

    /// One entry of the decide script's reply: `[status, points, growth]` (a bulk string and two
    /// integers). Anything else, an `["unreadable", stored]` entry included, throws.
    init(reply: RedisReply) throws(UnexpectedScriptReply) {
        guard case .array(let fields) = reply, fields.count == 3, let text = fields[0].string,
              let status = Status(rawValue: text), case .integer(let points) = fields[1], case .integer(let growth) = fields[2],
              points >= 0, growth >= 0 else {
            throw UnexpectedScriptReply(script: "decide.lua", reply: reply)
        }
        self.init(status: status, points: points, growth: growth)
    }
}

/// One member's rules to decide for one event.
public struct DecisionRequest: Sendable {
    public let member: Int64
    public let eventID: String
    public let occurredAt: Date
    public let rules: [(rule: PointsRule, points: Int64, growth: Int64)]

    public init(member: Int64, eventID: String, occurredAt: Date, rules: [(rule: PointsRule, points: Int64, growth: Int64)]) {
        self.member = member
        self.eventID = eventID
        self.occurredAt = occurredAt
        self.rules = rules
    }
}

/// Decides grants in Redis: one Lua call per member and event, covering every matching rule, so
/// caps, frequency and idempotency are one atomic round trip (pipelined across a batch).
///
/// The decision for (event, rule) is stored under the member's hash tag; a redelivered event gets
/// the stored decision back and never counts against a cap twice. All keys of one call share the
/// tag `{m:<id>}`, so the script runs unchanged on Redis Cluster.
public struct PointsDecider: Sendable {
    let redis: RedisPool
    let calendar: PeriodCalendar
    /// How long a decision is remembered: far longer than any redelivery; PostgreSQL's unique
    /// ledger index guards beyond it.
    let decisionTTLSeconds: Int

    public init(redis: RedisPool, calendar: PeriodCalendar, decisionTTLSeconds: Int = 35 * 86_400) {
        self.redis = redis
        self.calendar = calendar
        self.decisionTTLSeconds = decisionTTLSeconds
    }

    /// Counter lifetimes: a period's counter outlives the period by enough for late events.
    static let dayTTL = 3 * 86_400, weekTTL = 15 * 86_400, monthTTL = 40 * 86_400

    /// The keys one member's counters live under (also what `rebuild-counters` rewrites).
    public static func counterKey(member: Int64, rule: String, measure: String, period: String) -> String {
        "fanflow:{m:\(member)}:cap:\(rule):\(measure):\(period)"
    }

    /// Marks that a daily rule granted on `day` (yyyymmdd), or a once-only rule ever.
    public static func frequencyKey(member: Int64, rule: String, frequency: PointsRule.Frequency, day: String) -> String {
        switch frequency {
        case .daily: return "fanflow:{m:\(member)}:freq:\(rule):d\(day)"
        case .once, .unlimited: return "fanflow:{m:\(member)}:freq:\(rule):once"
        }
    }

    public static func decisionKey(member: Int64, eventID: String, rule: String) -> String {
        "fanflow:{m:\(member)}:decided:\(eventID):\(rule)"
    }

    /// One call of `Resources/decide.lua` (its header lists the KEYS and ARGV per rule).
    func call(_ request: DecisionRequest, script: RedisScript) -> RedisCoalescer.Call {
        let periods = calendar.periods(of: request.occurredAt)
        var keys: [String] = []
        var arguments = [String(request.rules.count), String(decisionTTLSeconds),
                         String(Self.dayTTL), String(Self.weekTTL), String(Self.monthTTL)]
        let member = request.member
        for (rule, points, growth) in request.rules {
            keys.append(Self.decisionKey(member: member, eventID: request.eventID, rule: rule.code))
            keys.append(Self.frequencyKey(member: member, rule: rule.code, frequency: rule.frequency, day: periods.day))
            for measure in ["p", "g"] {
                keys.append(Self.counterKey(member: member, rule: rule.code, measure: measure, period: "d" + periods.day))
                keys.append(Self.counterKey(member: member, rule: rule.code, measure: measure, period: "w" + periods.week))
                keys.append(Self.counterKey(member: member, rule: rule.code, measure: measure, period: "m" + periods.month))
            }
            let caps = rule.caps
            func cap(_ value: Int64?) -> String { value.map(String.init) ?? "-1" }
            arguments += [String(points), String(growth), rule.frequency.rawValue,
                          rule.frequency == .daily ? String(Self.dayTTL) : "0",
                          cap(caps?.daily?.points), cap(caps?.weekly?.points), cap(caps?.monthly?.points),
                          cap(caps?.daily?.growth), cap(caps?.weekly?.growth), cap(caps?.monthly?.growth)]
        }
        return (script, keys, arguments)
    }

    /// Decides every request in one pipelined round trip; the decisions come back in rule order.
    public func decide(_ requests: [DecisionRequest]) async throws -> [[Decision]] {
        let nonEmpty = requests.filter { !$0.rules.isEmpty }
        guard !nonEmpty.isEmpty else { return requests.map { _ in [] } }
        let script = try LoyaltyScripts.decide()
        let replies = try await redis.evalSHA(nonEmpty.map { call($0, script: script) })
        var answers = replies.makeIterator()
        return try requests.map { request in
            guard !request.rules.isEmpty else { return [] }
            guard let reply = answers.next() else { throw RedisError(.protocolError, "fewer replies than calls") }
            if case .error(let message) = reply { throw RedisError(.server, message) }
            guard let items = reply.array, items.count == request.rules.count else {
                throw UnexpectedScriptReply(script: "decide.lua", reply: reply)
            }
            return try items.map { try Decision(reply: $0) }
        }
    }
}
