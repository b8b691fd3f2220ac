import Foundation
import Jobs

/// The scheduler jobs of pushes (published by the scheduler to the push queue as
/// `fanflow.<kind>`): the gateway enqueues a broadcast's first batch, the push pool the rest.
public enum PushJobs {
    /// A push's next attempt after a transient failure or a spent quota.
    public static let retry = JobKind("push.retry")
    /// A broadcast push's first attempt, one job per push.
    public static let send = JobKind("push.send")
    /// One batch of a broadcast's audience (payload `broadcastId`, `after`: the last member id done).
    public static let broadcast = JobKind("push.broadcast")
    /// Every kind the scheduler publishes for the push pool.
    public static let kinds = [retry, send, broadcast]

    /// The routing key a job of `kind` arrives under.
    public static func routingKey(_ kind: JobKind) -> String { "fanflow.\(kind.rawValue)" }

    public static func broadcastBatch(_ id: Int64, after: Int64, at due: Date) -> NewJob {
        NewJob(kind: broadcast, payload: ["broadcastId": .integer(id), "after": .integer(after)], dueAt: due,
               uniqueKey: "push.broadcast:\(id):\(after)", maxAttempts: 20)
    }

    /// Attempt `attempt` (0: the first) of the push `id`.
    public static func attempt(_ id: String, attempt: Int, at due: Date) -> NewJob {
        NewJob(kind: attempt == 0 ? send : retry, payload: ["pushId": .string(id), "pushAttempt": .integer(Int64(attempt))], dueAt: due,
               uniqueKey: "\(attempt == 0 ? "push.send" : "push.retry"):\(id)\(attempt == 0 ? "" : ":\(attempt)")", maxAttempts: 20)
    }
}
