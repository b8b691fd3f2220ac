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

    /// The script's reply: `status:points:growth`.
    init?(reply: String) {
        let parts = reply.split(separator: ":")
        guard parts.count == 3, let status = Status(rawValue: String(parts[0])),
              let points = Int64(parts[1]), let growth = Int64(parts[2]) else { return nil }
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

    /// KEYS per rule: decision, frequency, points day/week/month, growth day/week/month.
    /// ARGV: n, decision TTL, day/week/month TTLs, then per rule: points, growth, frequency, frequency
    /// TTL (0 = forever), 3 point caps, 3 growth caps (-1 = none).
    static let script = RedisScript("""
        local n = tonumber(ARGV[1])
        local decisionTTL = tonumber(ARGV[2])
        local ttl = {tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])}
        local out = {}
        for i = 0, n - 1 do
          local k = i * 8
          local a = 6 + i * 10
          local decided = redis.call('GET', KEYS[k + 1])
          if not decided then
            local points = tonumber(ARGV[a])
            local growth = tonumber(ARGV[a + 1])
            local frequency = ARGV[a + 2]
            local status = 'granted'
            if frequency ~= 'unlimited' and redis.call('EXISTS', KEYS[k + 2]) == 1 then
              points = 0
              growth = 0
              status = 'frequency'
            else
              for j = 0, 2 do
                local cap = tonumber(ARGV[a + 4 + j])
                if cap >= 0 then
                  local left = math.max(cap - tonumber(redis.call('GET', KEYS[k + 3 + j]) or '0'), 0)
                  if points > left then points = left; status = 'capped' end
                end
                cap = tonumber(ARGV[a + 7 + j])
                if cap >= 0 then
                  local left = math.max(cap - tonumber(redis.call('GET', KEYS[k + 6 + j]) or '0'), 0)
                  if growth > left then growth = left; status = 'capped' end
                end
              end
              -- Only capped periods are counted: an uncapped counter would be work nobody reads.
              for j = 0, 2 do
                if points > 0 and tonumber(ARGV[a + 4 + j]) >= 0 then
                  redis.call('INCRBY', KEYS[k + 3 + j], points)
                  redis.call('EXPIRE', KEYS[k + 3 + j], ttl[j + 1])
                end
                if growth > 0 and tonumber(ARGV[a + 7 + j]) >= 0 then
                  redis.call('INCRBY', KEYS[k + 6 + j], growth)
                  redis.call('EXPIRE', KEYS[k + 6 + j], ttl[j + 1])
                end
              end
              if frequency ~= 'unlimited' then
                local frequencyTTL = tonumber(ARGV[a + 3])
                if frequencyTTL > 0 then
                  redis.call('SET', KEYS[k + 2], KEYS[k + 1], 'EX', frequencyTTL)
                else
                  redis.call('SET', KEYS[k + 2], KEYS[k + 1])
                end
              end
            end
            decided = status .. ':' .. string.format('%d', points) .. ':' .. string.format('%d', growth)
            redis.call('SET', KEYS[k + 1], decided, 'EX', decisionTTL)
          end
          out[#out + 1] = decided
        end
        return out
        """)

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

    func call(_ request: DecisionRequest) -> RedisCoalescer.Call {
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
        return (Self.script, keys, arguments)
    }

    /// Decides every request in one pipelined round trip; the decisions come back in rule order.
    public func decide(_ requests: [DecisionRequest]) async throws -> [[Decision]] {
        let nonEmpty = requests.filter { !$0.rules.isEmpty }
        guard !nonEmpty.isEmpty else { return requests.map { _ in [] } }
        let replies = try await redis.evalSHA(nonEmpty.map(call))
        var answers = replies.makeIterator()
        return try requests.map { request in
            guard !request.rules.isEmpty else { return [] }
            guard let reply = answers.next() else { throw RedisError(.protocolError, "fewer replies than calls") }
            if case .error(let message) = reply { throw RedisError(.server, message) }
            guard let items = reply.array, items.count == request.rules.count else {
                throw RedisError(.protocolError, "decision reply has the wrong shape: \(reply)")
            }
            return try items.map { item in
                guard let text = item.string, let decision = Decision(reply: text) else {
                    throw RedisError(.protocolError, "unreadable decision \(item)")
                }
                return decision
            }
        }
    }
}
