import Foundation
import Platforms
import RedisClient

/// How fast, and how many a day, one app may send: a token bucket per app in Redis shared by every
/// push worker (so the pace holds however many run), and a daily counter against the platform's
/// quota (WeChat: 100k template messages a day unless raised), reset at midnight Beijing time. Both
/// are one call of `Resources/pace.lua` before each send.
public struct PushPace: Sendable {
    let redis: RedisPool
    /// Messages per second per app; 0 lifts the limit.
    public let ratePerSecond: Int
    public let dailyQuota: Int

    static func quotaKey(_ app: String, day: String) -> String { "fanflow:{wx:\(app)}:sent:\(day)" }
    static func bucketKey(_ app: String) -> String { "fanflow:{wx:\(app)}:bucket" }

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

        /// `pace.lua`'s answer: 0, -1, or the milliseconds to wait; anything else throws.
        init(reply: RedisReply, now: Date) throws(PushScripts.UnexpectedReply) {
            switch reply {
            case .integer(0): self = .go
            case .integer(-1): self = .quotaSpent(resetsAt: BeijingTime.nextMidnight(after: now))
            case .integer(let wait) where wait > 0 && wait <= Int64(Int32.max): self = .wait(Int(wait))
            default: throw PushScripts.UnexpectedReply(script: "pace", reply: reply)
            }
        }
    }

    /// Takes one message's place for `app`, or says how long to wait.
    public func take(app: String, now: Date = Date()) async throws -> Decision {
        let script = try PushScripts.named("pace")
        let replies = try await redis.evalSHA([(script, [Self.bucketKey(app), Self.quotaKey(app, day: BeijingTime.day(now))],
                                                [String(ratePerSecond), String(Int64(now.timeIntervalSince1970 * 1000)), String(dailyQuota),
                                                 String(2 * 86_400)])])
        return try Decision(reply: try PushScripts.reply(replies, of: "pace"), now: now)
    }

    /// How many sends of one app this pace lets through in `duration`; nil when it sets no limit.
    /// A push job runner claims no more than this for half its lease, so a batch of one app's sends
    /// finishes, at the pace, long before another runner could take the batch back.
    public func sends(within duration: Duration) -> Int? {
        guard ratePerSecond > 0 else { return nil }
        let seconds = Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
        return max(1, Int(min(Double(Int32.max), Double(ratePerSecond) * seconds)))
    }
}
