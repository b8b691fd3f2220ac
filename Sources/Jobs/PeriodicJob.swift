import Contracts
import Foundation

/// A job enqueued on a cron schedule, declared in code. `name` is stable: it keys the periods
/// already enqueued, so renaming it starts the schedule afresh.
public struct PeriodicJob: Sendable {
    public let name: String
    public let schedule: CronSchedule
    public let kind: JobKind
    public let payload: [String: JSONValue]
    public let maxAttempts: Int

    public init(name: String, schedule: CronSchedule, kind: JobKind, payload: [String: JSONValue] = [:], maxAttempts: Int = 5) {
        self.name = name
        self.schedule = schedule
        self.kind = kind
        self.payload = payload
        self.maxAttempts = maxAttempts
    }

    /// The unique key of one period: a second leader enqueuing the same period is a no-op.
    public func uniqueKey(fireAt: Date) -> String { "periodic:\(name):\(RFC3339.format(fireAt))" }
}
