import Foundation
import Platforms
import RedisClient

/// What the push workers did today, per app, counted in Redis so every worker process adds to one
/// figure and the gateway can show it (`GET /admin/v1/push-stats`, `/metrics`): outcomes (sent,
/// unsubscribed, user_block, refused, deferred, retried, dead), messages taken against the daily
/// quota, what is left of it, and forced token refreshes. Days are Beijing days, as the quotas.
public struct PushStats: Sendable {
    let redis: RedisPool

    public init(redis: RedisPool) { self.redis = redis }

    static func outcomesKey(_ app: String, day: String) -> String { "fanflow:{wx:\(app)}:outcomes:\(day)" }
    static func appsKey(day: String) -> String { "fanflow:push:apps:\(day)" }
    static let lifetime = String(3 * 86_400)

    /// KEYS: the app's outcome counts, today's apps. ARGV: outcome, app, TTL (s).
    static let recordScript = RedisScript("""
        redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
        redis.call('EXPIRE', KEYS[1], ARGV[3])
        redis.call('SADD', KEYS[2], ARGV[2])
        redis.call('EXPIRE', KEYS[2], ARGV[3])
        return 0
        """)

    /// KEYS: today's apps.
    static let appsScript = RedisScript("return redis.call('SMEMBERS', KEYS[1])")

    /// KEYS: outcome counts, quota counter, forced refreshes. Returns [forced, used, field, count, …].
    static let readScript = RedisScript("""
        local out = {tonumber(redis.call('GET', KEYS[3]) or '0'), tonumber(redis.call('GET', KEYS[2]) or '0')}
        local counts = redis.call('HGETALL', KEYS[1])
        for i = 1, #counts, 2 do
          out[#out + 1] = counts[i]
          out[#out + 1] = tonumber(counts[i + 1])
        end
        return out
        """)

    public func record(app: String, outcome: String, at now: Date = Date()) async throws {
        let day = BeijingTime.day(now)
        let reply = try await redis.evalSHA([(Self.recordScript, [Self.outcomesKey(app, day: day), Self.appsKey(day: day)],
                                              [outcome, app, Self.lifetime])]).first
        if case .error(let message)? = reply { throw RedisError(.server, message) }
    }

    public struct AppDay: Sendable, Equatable {
        public let app: String
        public let outcomes: [String: Int]
        /// Messages that passed the pace today (each counts against the quota).
        public let used: Int
        public let quotaLeft: Int
        public let forcedRefreshes: Int
    }

    /// Today's figures for every app that pushed today, in app order.
    public func today(dailyQuota: Int, at now: Date = Date()) async throws -> (day: String, apps: [AppDay]) {
        let day = BeijingTime.day(now)
        let members = try await redis.evalSHA([(Self.appsScript, [Self.appsKey(day: day)], [])]).first ?? .null
        if case .error(let message) = members { throw RedisError(.server, message) }
        guard case .array(let items) = members else { return (day, []) }
        let apps = items.compactMap(\.string).sorted()
        guard !apps.isEmpty else { return (day, []) }
        let replies = try await redis.evalSHA(apps.map { app in
            (Self.readScript, [Self.outcomesKey(app, day: day), PushPace.quotaKey(app, day: day), AccessTokenBroker.forcedKey(app, day: day)],
             [String]())
        })
        return (day, zip(apps, replies).map { app, reply in
            guard case .array(let values) = reply, values.count >= 2 else {
                return AppDay(app: app, outcomes: [:], used: 0, quotaLeft: dailyQuota, forcedRefreshes: 0)
            }
            var outcomes: [String: Int] = [:]
            for index in stride(from: 2, to: values.count - 1, by: 2) {
                if let name = values[index].string, let count = values[index + 1].int { outcomes[name] = Int(count) }
            }
            let used = Int(values[1].int ?? 0)
            return AppDay(app: app, outcomes: outcomes, used: used, quotaLeft: max(0, dailyQuota - used),
                          forcedRefreshes: Int(values[0].int ?? 0))
        })
    }
}
