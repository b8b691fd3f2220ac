import Foundation
import Platforms
import RedisClient

/// How fast, and how many a day, one app may send: a token bucket per app in Redis shared by every
/// push worker (so the pace holds however many run), and a daily counter against the platform's
/// quota (WeChat: 100k template messages a day unless raised), reset at midnight Beijing time.
public struct PushPace: Sendable {
    let redis: RedisPool
    /// Messages per second per app; 0 lifts the limit.
    public let ratePerSecond: Int
    public let dailyQuota: Int

    static func quotaKey(_ app: String, day: String) -> String { "fanflow:{wx:\(app)}:sent:\(day)" }

    /// Where the outcomes of what this pace let through are counted.
    public var stats: PushStats { PushStats(redis: redis) }

    public init(redis: RedisPool, ratePerSecond: Int, dailyQuota: Int) {
        self.redis = redis
        self.ratePerSecond = ratePerSecond
        self.dailyQuota = dailyQuota
    }

    public enum Decision: Sendable, Equatable {
        case go
        /// Try again after this many milliseconds (the bucket is empty).
        case wait(Int)
        /// Today's quota is spent; it resets at the given time.
        case quotaSpent(resetsAt: Date)
    }

    /// KEYS: bucket, daily counter. ARGV: rate per second, now (ms), daily quota, counter TTL (s).
    /// The bucket holds 250 ms of messages (at least one): a burst runs ahead of the pace by no
    /// more than that, and a worker that stalled for up to that long makes the time up. An empty
    /// one says how long until a token.
    static let script = RedisScript("""
        local rate = tonumber(ARGV[1])
        local now = tonumber(ARGV[2])
        if tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(ARGV[3]) then return -1 end
        if rate > 0 then
          local capacity = math.max(1, rate / 4)
          local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
          local tokens = tonumber(b[1] or capacity)
          local at = tonumber(b[2] or now)
          tokens = math.min(capacity, tokens + (now - at) * rate / 1000)
          if tokens < 1 then
            redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
            return math.ceil((1 - tokens) * 1000 / rate)
          end
          redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - 1), 'at', now)
          redis.call('PEXPIRE', KEYS[1], 60000)
        end
        redis.call('INCR', KEYS[2])
        redis.call('EXPIRE', KEYS[2], ARGV[4])
        return 0
        """)

    /// Takes one message's place for `app`, or says how long to wait.
    public func take(app: String, now: Date = Date()) async throws -> Decision {
        let day = BeijingTime.day(now)
        let reply = try await redis.evalSHA([(Self.script, ["fanflow:{wx:\(app)}:bucket", Self.quotaKey(app, day: day)],
                                              [String(ratePerSecond), String(Int64(now.timeIntervalSince1970 * 1000)), String(dailyQuota),
                                               String(2 * 86_400)])]).first ?? .null
        if case .error(let message) = reply { throw RedisError(.server, message) }
        switch reply.int ?? 0 {
        case 0: return .go
        case -1: return .quotaSpent(resetsAt: BeijingTime.nextMidnight(after: now))
        case let wait: return .wait(Int(wait))
        }
    }
}
