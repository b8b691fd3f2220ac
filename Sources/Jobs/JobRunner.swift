import ClientSupport
import Foundation
import Logging
import ServiceLifecycle

/// The scheduler's dispatch loop: claims due jobs of the kinds it has handlers for, in batches,
/// runs each kind's handler on its share of the batch (kinds concurrently), and records the
/// outcomes. Lapsed leases of dead schedulers are taken back every `reclaimInterval`.
///
/// Any number of runners may share the table; SKIP LOCKED keeps their batches apart. On graceful
/// shutdown the batch in hand is finished and recorded; a runner killed mid-batch leaves its
/// jobs to be claimed again when the lease ends.
public struct JobRunner: Service {
    public struct Configuration: Sendable {
        /// Identifies this runner's leases (host and pid by default).
        public var owner: String
        public var batchSize: Int = 500
        /// Longer than a batch can take; a dead runner's jobs wait this long to run again.
        public var lease: Duration = .seconds(60)
        /// How long an idle runner waits before looking again: the worst extra lag of a due job.
        public var pollInterval: Duration = .milliseconds(200)
        public var reclaimInterval: Duration = .seconds(5)

        public init(owner: String = JobRunner.defaultOwner()) { self.owner = owner }
    }

    public static func defaultOwner() -> String {
        "\(ProcessInfo.processInfo.hostName):\(ProcessInfo.processInfo.processIdentifier):\(UUID().uuidString.prefix(8))"
    }

    let store: JobStore
    let handlers: [JobKind: any JobHandler]
    let configuration: Configuration
    let metrics: JobMetrics
    let logger: Logger

    public init(store: JobStore, handlers: [JobKind: any JobHandler], configuration: Configuration = Configuration(),
                metrics: JobMetrics = JobMetrics(), logger: Logger) {
        self.store = store
        self.handlers = handlers
        self.configuration = configuration
        self.metrics = metrics
        self.logger = logger
    }

    public func run() async throws {
        let backoff = Backoff(initialMilliseconds: 200, maximumMilliseconds: 5_000)
        var failures = 0
        var lastReclaim = ContinuousClock.now - configuration.reclaimInterval
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            do {
                if ContinuousClock.now - lastReclaim >= configuration.reclaimInterval {
                    let reclaimed = try await store.reclaimExpired()
                    lastReclaim = .now
                    if reclaimed > 0 {
                        metrics.count(.reclaimed, by: reclaimed)
                        logger.warning("took back jobs whose lease ran out", metadata: ["count": "\(reclaimed)"])
                    }
                }
                let claimed = try await runOnce()
                failures = 0
                if claimed < configuration.batchSize {
                    try? await cancelWhenGracefulShutdown { try await Task.sleep(for: configuration.pollInterval) }
                }
            } catch {
                logger.error("job dispatch failed; retrying", metadata: ["error": "\(error)"])
                let delay = backoff.delayMilliseconds(attempt: failures)
                try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .milliseconds(delay)) }
                failures += 1
            }
        }
    }

    /// Claims, runs and records one batch; returns how many jobs it claimed.
    @discardableResult
    public func runOnce(now: Date? = nil) async throws -> Int {
        let jobs = try await store.claim(owner: configuration.owner, kinds: Array(handlers.keys),
                                         limit: configuration.batchSize, lease: configuration.lease, now: now)
        guard !jobs.isEmpty else { return 0 }
        let started = Date()
        for job in jobs { metrics.observeLag(seconds: max(0, started.timeIntervalSince(job.dueAt))) }
        let byKind = Dictionary(grouping: jobs, by: \.kind)
        let results = await withTaskGroup(of: [(job: Job, outcome: JobOutcome)].self) { group in
            for (kind, batch) in byKind {
                guard let handler = handlers[kind] else { continue }
                group.addTask {
                    let outcomes = await handler.run(batch)
                    return batch.enumerated().map { index, job in
                        (job, index < outcomes.count ? outcomes[index] : .retry(error: "the handler gave no outcome"))
                    }
                }
            }
            var all: [(job: Job, outcome: JobOutcome)] = []
            for await part in group { all += part }
            return all
        }
        let settled = try await store.record(results, owner: configuration.owner)
        for (job, outcome) in results { metrics.observe(kind: job.kind, outcome: outcome, lastAttempt: job.attempts >= job.maxAttempts) }
        if settled.lostLease > 0 {
            logger.warning("outcomes not recorded: the lease had passed to another scheduler", metadata: ["count": "\(settled.lostLease)"])
        }
        for (job, outcome) in results {
            switch outcome {
            case .done:
                continue
            case .retry(let error, _) where job.attempts < job.maxAttempts:
                logger.warning("job will be retried", metadata: ["id": "\(job.id)", "kind": "\(job.kind)",
                                                                 "attempt": "\(job.attempts)", "error": "\(error)"])
            case .retry(let error, _), .fail(let error):
                logger.error("job failed; kept for an operator to retry", metadata: ["id": "\(job.id)", "kind": "\(job.kind)",
                                                                                    "attempt": "\(job.attempts)", "error": "\(error)"])
            }
        }
        return jobs.count
    }
}
