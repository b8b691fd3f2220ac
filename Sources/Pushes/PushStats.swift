import Foundation
import Platforms
import RedisClient

/// What the push workers did today, per app, counted in Redis so every worker process adds to one
/// figure and the gateway can show it (`GET /admin/v1/push-stats`, `/metrics`): outcomes (sent,
/// unsubscribed, user_block, refused, deferred, retried, dead), messages taken against the daily
/// quota, what is left of it, and forced token refreshes. Days are Beijing days, as the quotas.
/// The scripts are `Resources/stats-*.lua`.
public struct PushStats: Sendable {
    let redis: RedisPool

    public init(redis: RedisPool) { self.redis = redis }

    /// An outcome counted for the day, by its wire name (the field in Redis, the key in
    /// `outcomes`, the `outcome` label on `/metrics`).
    public enum Outcome: String, Sendable, CaseIterable {
        case sent
        case unsubscribed
        case userBlock = "user_block"
        case refused
        case deferred
        /// A transient failure with an attempt left: the push is pending again.
        case retried
        case dead

        /// The count for a push refused with `status` (unsubscribed, user_block, or refused).
        public init(refusal status: PushStatus) {
            switch status {
            case .unsubscribed: self = .unsubscribed
            case .userBlock: self = .userBlock
            default: self = .refused
            }
        }
    }

    static func outcomesKey(_ app: String, day: String) -> String { "fanflow:{wx:\(app)}:outcomes:\(day)" }
    static func appsKey(day: String) -> String { "fanflow:push:apps:\(day)" }
    static let lifetime = String(3 * 86_400)

    /// Counts one outcome for `app` today; returns the day's count of it so far.
    @discardableResult
    public func record(app: String, outcome: Outcome, at now: Date = Date()) async throws -> Int64 {
        let day = BeijingTime.day(now)
        let replies = try await redis.evalSHA([(try PushScripts.named("stats-record"), [Self.outcomesKey(app, day: day), Self.appsKey(day: day)],
                                                [outcome.rawValue, app, Self.lifetime])])
        let reply = try PushScripts.reply(replies, of: "stats-record")
        guard case .integer(let count) = reply, count > 0 else { throw PushScripts.UnexpectedReply(script: "stats-record", reply: reply) }
        return count
    }

    public struct AppDay: Sendable, Equatable {
        public let app: String
        /// Counts by outcome name: names another build counted are shown as they are.
        public let outcomes: [String: Int]
        /// Messages that passed the pace today (each counts against the quota).
        public let used: Int
        public let quotaLeft: Int
        public let forcedRefreshes: Int
    }
}

extension PushStats.AppDay {
    /// `stats-read.lua`'s answer, `[forced, used, name, count, …]`; anything else throws.
    init(app: String, reply: RedisReply, dailyQuota: Int) throws(PushScripts.UnexpectedReply) {
        let unexpected = PushScripts.UnexpectedReply(script: "stats-read", reply: reply)
        guard case .array(let values) = reply, values.count >= 2, values.count % 2 == 0,
              case .integer(let forced) = values[0], case .integer(let used) = values[1] else { throw unexpected }
        var outcomes: [String: Int] = [:]
        for index in stride(from: 2, to: values.count, by: 2) {
            guard let name = values[index].string, case .integer(let count) = values[index + 1] else { throw unexpected }
            outcomes[name] = Int(clamping: count)
        }
        self.app = app
        self.outcomes = outcomes
        self.used = max(0, Int(clamping: used))
        let (left, overflow) = dailyQuota.subtractingReportingOverflow(self.used)
        self.quotaLeft = overflow ? 0 : max(0, left)
        self.forcedRefreshes = Int(clamping: forced)
    }
}

extension PushStats {
    /// Today's figures for every app that pushed today, in app order.
    public func today(dailyQuota: Int, at now: Date = Date()) async throws -> (day: String, apps: [AppDay]) {
        let day = BeijingTime.day(now)
        let members = try PushScripts.reply(try await redis.evalSHA([(try PushScripts.named("stats-apps"), [Self.appsKey(day: day)], [])]),
                                            of: "stats-apps")
        guard case .array(let items) = members else { throw PushScripts.UnexpectedReply(script: "stats-apps", reply: members) }
        let names = items.compactMap(\.string)
        guard names.count == items.count else { throw PushScripts.UnexpectedReply(script: "stats-apps", reply: members) }
        let apps = names.sorted()
        guard !apps.isEmpty else { return (day, []) }
        let read = try PushScripts.named("stats-read")
        let replies = try await redis.evalSHA(apps.map { app in
            (read, [Self.outcomesKey(app, day: day), PushPace.quotaKey(app, day: day), AccessTokenBroker.forcedKey(app, day: day)], [String]())
        })
        guard replies.count == apps.count else { throw PushScripts.UnexpectedReply(script: "stats-read", reply: .array(replies)) }
        return (day, try zip(apps, replies).map { app, reply in
            if case .error(let message) = reply { throw RedisError(.server, message) }
            return try AppDay(app: app, reply: reply, dailyQuota: dailyQuota)
        })
    }
}
