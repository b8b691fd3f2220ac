import Foundation
import Platforms
import RedisClient
import Synchronization

/// How fast, and how many a day, one app may send: a token bucket per app in Redis shared by every
/// push worker (so the pace holds however many run), and a daily counter against the platform's
/// quota (WeChat: 100k template messages a day unless raised), reset at midnight Beijing time. Both
/// are `Resources/pace.lua`, called for the sends waiting in this process's line (``admit(app:)``).
public struct PushPace: Sendable {
    let redis: RedisPool
    /// Messages per second per app; 0 lifts the limit.
    public let ratePerSecond: Int
    public let dailyQuota: Int

    static func quotaKey(_ app: String, day: String) -> String { "fanflow:{wx:\(app)}:sent:\(day)" }
    static func bucketKey(_ app: String) -> String { "fanflow:{wx:\(app)}:bucket" }

    /// Where the outcomes of what this pace let through are counted.
    public var stats: PushStats { PushStats(redis: redis) }

    /// This process's sends of one app wait for the pace in line (``admit(app:)``).
    let line = PaceLine()

    public init(redis: RedisPool, ratePerSecond: Int, dailyQuota: Int) {
        self.redis = redis
        self.ratePerSecond = ratePerSecond
        self.dailyQuota = dailyQuota
    }

    /// What one call of `pace.lua` decided.
    public enum Decision: Sendable, Equatable {
        /// This many tokens were taken (1 up to those wanted), each counted against the quota.
        case go(granted: Int)
        /// Try again after this many milliseconds (the bucket is empty).
        case wait(Int)
        /// Today's quota is spent; it resets at the given time.
        case quotaSpent(resetsAt: Date)

        /// `pace.lua`'s answer, `{granted, 0}`, `{0, ms}` or `{0, -1}`; anything else throws.
        init(reply: RedisReply, wanted: Int, now: Date) throws(PushScripts.UnexpectedReply) {
            guard case .array(let values) = reply, values.count == 2, case .integer(let granted) = values[0],
                  case .integer(let wait) = values[1] else { throw PushScripts.UnexpectedReply(script: "pace", reply: reply) }
            if granted >= 1, granted <= Int64(wanted), wait == 0 {
                self = .go(granted: Int(granted))
            } else if granted == 0, wait == -1 {
                self = .quotaSpent(resetsAt: BeijingTime.nextMidnight(after: now))
            } else if granted == 0, wait > 0, wait <= Int64(Int32.max) {
                self = .wait(Int(wait))
            } else {
                throw PushScripts.UnexpectedReply(script: "pace", reply: reply)
            }
        }
    }

    /// What a send waiting for the pace gets.
    public enum Admission: Sendable, Equatable {
        /// Send now: its token was taken and the send counted against the quota.
        case go
        /// Today's quota is spent; it resets at the given time.
        case quotaSpent(resetsAt: Date)
    }

    /// Waits until `app` may send one more message, or its quota is spent.
    ///
    /// The sends of one app in this process wait in line, first come first served. Only the one at
    /// the head asks Redis, for a token for itself and one for each send behind it; the bucket
    /// grants what it holds, and the head hands the extra tokens to the next in line, which send
    /// without asking. Without the line every waiting send polled Redis whenever a token might be
    /// there: a push job runner's batch (500 wide by default) made about that many calls per token
    /// sent; in line it is one call per grant plus the head's polls. The tokens go out in bulk
    /// because one at a time would leave each token waiting for the Redis round trip after the one
    /// before: that measured 67/s against 100/s on this loaded machine. And the batch claimed first
    /// is sent first, so one runner records and claims while another's batch sends. Other
    /// processes keep their own lines; the bucket in Redis is shared by all. Without a rate (0)
    /// the line only counts the quota, a grant for the whole line at a time.
    public func admit(app: String) async throws -> Admission {
        if await line.enter(app) == .granted { return .go }
        var extra = 0
        defer { line.leave(app, granting: extra) }
        while true {
            // A send cancelled while it waited in line leaves without asking Redis.
            try Task.checkCancellation()
            switch try await take(app: app, wanted: 1 + min(line.waiting(app), 999)) {
            case .go(let granted):
                extra = granted - 1
                return .go
            case .quotaSpent(let resetsAt):
                return .quotaSpent(resetsAt: resetsAt)
            case .wait(let milliseconds):
                try await Task.sleep(for: .milliseconds(max(1, milliseconds)))
            }
        }
    }

    /// Takes up to `wanted` messages' places for `app`, or says how long to wait.
    public func take(app: String, wanted: Int = 1, now: Date = Date()) async throws -> Decision {
        let wanted = max(1, wanted)
        let script = try PushScripts.named("pace")
        let replies = try await redis.evalSHA([(script, [Self.bucketKey(app), Self.quotaKey(app, day: BeijingTime.day(now))],
                                                [String(ratePerSecond), String(Int64(now.timeIntervalSince1970 * 1000)), String(dailyQuota),
                                                 String(2 * 86_400), String(wanted)])])
        return try Decision(reply: try PushScripts.reply(replies, of: "pace"), wanted: wanted, now: now)
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

/// Per app, the sends of this process waiting for the pace, first come first served: one holds the
/// app's place and asks Redis; the rest wait behind it, and get a token it took for them or the
/// place when it leaves. Entering is not cancellable (a cancelled send leaves as soon as its turn
/// comes, ``PushPace/admit(app:)``).
final class PaceLine: Sendable {
    enum Turn: Equatable {
        /// The app's place: ask Redis.
        case hold
        /// A token the holder took for this send: send.
        case granted
    }

    private struct Line {
        var waiting: [CheckedContinuation<Turn, Never>] = []
    }

    /// An app present here has its place held; its line is who waits behind the holder.
    private let lines = Mutex<[String: Line]>([:])

    func enter(_ app: String) async -> Turn {
        await withCheckedContinuation { (continuation: CheckedContinuation<Turn, Never>) in
            let holds = lines.withLock { lines -> Bool in
                guard lines[app] != nil else {
                    lines[app] = Line()
                    return true
                }
                lines[app]?.waiting.append(continuation)
                return false
            }
            if holds { continuation.resume(returning: .hold) }
        }
    }

    /// How many sends wait behind the holder.
    func waiting(_ app: String) -> Int { lines.withLock { $0[app]?.waiting.count ?? 0 } }

    /// The holder leaves with `extra` tokens for the first in line; the one after them holds next.
    func leave(_ app: String, granting extra: Int) {
        let (granted, next) = lines.withLock { lines -> ([CheckedContinuation<Turn, Never>], CheckedContinuation<Turn, Never>?) in
            guard var line = lines[app] else { return ([], nil) }
            let count = min(max(0, extra), line.waiting.count)
            let granted = Array(line.waiting.prefix(count))
            line.waiting.removeFirst(count)
            guard !line.waiting.isEmpty else {
                lines[app] = nil
                return (granted, nil)
            }
            let next = line.waiting.removeFirst()
            lines[app] = line
            return (granted, next)
        }
        for waiter in granted { waiter.resume(returning: .granted) }
        next?.resume(returning: .hold)
    }
}
