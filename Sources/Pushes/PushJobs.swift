import Foundation

/// The scheduler jobs of pushes, by kind (published by the scheduler to the push queue as
/// `fanflow.<kind>`): the gateway enqueues a broadcast's first batch, the push pool the rest.
public enum PushJobs {
    /// A push's next attempt after a transient failure or a spent quota.
    public static let retry = "push.retry"
    /// A broadcast push's first attempt, one job per push.
    public static let send = "push.send"
    /// One batch of a broadcast's audience (payload `broadcastId`, `after`: the last member id done).
    public static let broadcast = "push.broadcast"

    public static func broadcastBatch(_ id: Int64, after: Int64, at due: Date) -> PushStore.NewJobRow {
        PushStore.NewJobRow(kind: broadcast, payload: .object(["broadcastId": .integer(id), "after": .integer(after)]),
                            uniqueKey: "push.broadcast:\(id):\(after)", dueAt: due)
    }
}
