import Contracts
import Foundation
import Jobs
import Logging
import PostgresClient
import ServiceLifecycle
import Synchronization

/// Enqueues periodic jobs while this process leads (``LeaderElection``).
///
/// Each schedule remembers, in `periodic_jobs`, the last period it enqueued. Every tick the leader
/// enqueues every period from there up to `lookahead` past now, each under the period's unique
/// key, and moves the mark, in one transaction with the row locked. A leader change therefore
/// never skips a period (the next leader continues from the mark, catching up what fell due while
/// nobody led) and never doubles one (the unique key). A schedule seen for the first time starts
/// from now; catching up is bounded per tick so a long outage does not make one huge transaction.
public final class PeriodicEnqueuer: Service, Sendable {
    private let leading = Atomic<Bool>(false)
    let database: PostgresPool
    let jobs: [PeriodicJob]
    let tick: Duration
    let lookahead: Duration
    let metrics: JobMetrics
    let logger: Logger
    static let catchUpPerTick = 1000

    public init(database: PostgresPool, jobs: [PeriodicJob], tick: Duration = .seconds(1), lookahead: Duration = .seconds(30),
                metrics: JobMetrics = JobMetrics(), logger: Logger) {
        self.database = database
        self.jobs = jobs
        self.tick = tick
        self.lookahead = lookahead
        self.metrics = metrics
        self.logger = logger
    }

    /// For ``LeaderElection``'s `onChange`.
    public func setLeading(_ value: Bool) { leading.store(value, ordering: .relaxed) }
    public var isLeading: Bool { leading.load(ordering: .relaxed) }

    public func run() async throws {
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            if isLeading {
                do {
                    let added = try await enqueueDue(now: Date())
                    if added > 0 { logger.debug("periodic jobs enqueued", metadata: ["count": "\(added)"]) }
                } catch {
                    logger.error("enqueuing periodic jobs failed; the next tick retries", metadata: ["error": "\(error)"])
                }
            }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: self.tick) }
        }
    }

    /// Enqueues every period of every schedule due by `now` plus the lookahead; returns how many
    /// jobs were new.
    @discardableResult
    public func enqueueDue(now: Date) async throws -> Int {
        var added = 0
        let horizon = now.addingTimeInterval(JobStore.seconds(lookahead))
        for periodic in jobs {
            added += try await database.transaction { connection in
                try connection.query("""
                    INSERT INTO periodic_jobs (name, cron, time_zone, last_fire_at) VALUES ($1, $2, $3, $4)
                    ON CONFLICT (name) DO NOTHING
                    """, [periodic.name, periodic.schedule.expression, periodic.schedule.timeZone.identifier, now])
                let row = try connection.query("""
                    SELECT extract(epoch FROM last_fire_at)::float8 AS last, cron, time_zone FROM periodic_jobs WHERE name = $1 FOR UPDATE
                    """, [periodic.name])
                guard let last = row.first?.string("last").flatMap(Double.init).map(Date.init(timeIntervalSince1970:)) else {
                    return 0
                }
                var mark = last
                var batch: [NewJob] = []
                while batch.count < Self.catchUpPerTick, let fire = periodic.schedule.next(after: mark), fire <= horizon {
                    var payload = periodic.payload
                    payload["scheduledFor"] = .string(RFC3339.format(fire))
                    batch.append(NewJob(kind: periodic.kind, payload: payload, dueAt: fire, uniqueKey: periodic.uniqueKey(fireAt: fire),
                                        maxAttempts: periodic.maxAttempts))
                    mark = fire
                }
                guard !batch.isEmpty || row.first?.string("cron") != periodic.schedule.expression
                        || row.first?.string("time_zone") != periodic.schedule.timeZone.identifier else { return 0 }
                let inserted = try JobStore.enqueue(batch, on: connection)
                try connection.query("""
                    UPDATE periodic_jobs SET last_fire_at = $2, cron = $3, time_zone = $4, updated_at = now() WHERE name = $1
                    """, [periodic.name, mark, periodic.schedule.expression, periodic.schedule.timeZone.identifier])
                return inserted
            }
        }
        if added > 0 { metrics.count(.periodicEnqueued, by: added) }
        return added
    }
}
