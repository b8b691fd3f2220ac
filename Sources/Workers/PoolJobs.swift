import Foundation
import Jobs
import Logging

/// A pool that runs its own job kinds in its worker process: job runners (``Jobs/JobRunner``)
/// claiming only `handlers`' kinds from the jobs table, started beside the pool's consumers, so
/// the pool's follow-up work (a retry, a batch, a reminder) goes from the table to its handler
/// without the scheduler publishing it and the broker delivering it back.
///
/// Any number of worker processes may run the same kinds: claims use SKIP LOCKED under a lease, as
/// the scheduler's do, and a worker killed mid-batch leaves its jobs to be taken back when the
/// lease ends. A scheduler that still has handlers for these kinds (an older build) shares them
/// the same way: each job runs once at a time, in whichever process claimed it.
///
/// A pool adds itself with its handlers (`[JobKind: any JobHandler]`), its runner count and batch
/// size; ``services(store:metrics:logger:)`` gives the `Service`s for the worker's group.
public struct PoolJobs: Sendable {
    public let pool: PoolName
    public let handlers: [JobKind: any JobHandler]
    /// Runners, each claiming and running one batch at a time: while one records its batch and
    /// claims the next, the others keep running theirs.
    public var runners: Int
    /// Jobs a runner claims at once; a handler may run them all concurrently.
    public var batchSize: Int = 500
    /// Longer than a batch can take (see ``Jobs/JobRunner/Configuration/lease``).
    public var lease: Duration = .seconds(60)
    /// How long an idle runner waits before looking again: the most a due job waits for a runner
    /// with nothing to do.
    public var pollInterval: Duration = .milliseconds(200)

    public init(pool: PoolName, handlers: [JobKind: any JobHandler], runners: Int = 1) {
        self.pool = pool
        self.handlers = handlers
        self.runners = max(1, runners)
    }

    /// The kinds this pool runs, by name.
    public var kinds: [JobKind] { handlers.keys.sorted { $0.rawValue < $1.rawValue } }

    /// One runner per ``runners``, each with a lease owner naming the pool (`push@host:pid:…`, the
    /// `lockedBy` of `fanflow jobs show`), stopped gracefully with the worker (the batch in hand is
    /// finished and recorded).
    public func services(store: JobStore, metrics: JobMetrics = JobMetrics(), logger: Logger) -> [JobRunner] {
        (0..<runners).map { _ in
            var configuration = JobRunner.Configuration(owner: "\(pool.rawValue)@\(JobRunner.defaultOwner())")
            configuration.batchSize = max(1, batchSize)
            configuration.lease = lease
            configuration.pollInterval = pollInterval
            return JobRunner(store: store, handlers: handlers, configuration: configuration, metrics: metrics, logger: logger)
        }
    }
}
