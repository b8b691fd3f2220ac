import AMQPClient
import Contracts
import Foundation
import Jobs
import Logging
import Loyalty
import Members
import PostgresClient
import Runtime
import Scheduler
import Synchronization
import Testing

/// The job store, runner and periodic enqueuer against real PostgreSQL (a database per test).
@Suite("Scheduler: durable jobs against PostgreSQL")
struct SchedulerTests {
    static let logger = Logger(label: "test.scheduler")
    static let shanghai = TimeZone(identifier: "Asia/Shanghai") ?? .current

    /// Records every run, so a test can see how often each job ran.
    final class Recorder: JobHandler {
        let runs = Mutex<[Int64]>([])
        let outcome: @Sendable (Job) -> JobOutcome
        init(outcome: @escaping @Sendable (Job) -> JobOutcome = { _ in .done }) { self.outcome = outcome }
        func run(_ jobs: [Job]) async -> [JobOutcome] {
            runs.withLock { $0 += jobs.map(\.id) }
            return jobs.map(outcome)
        }
        var count: Int { runs.withLock { $0.count } }
    }

    static func runner(_ store: JobStore, _ handlers: [JobKind: any JobHandler], owner: String = JobRunner.defaultOwner(),
                       batch: Int = 500) -> JobRunner {
        var configuration = JobRunner.Configuration(owner: owner)
        configuration.batchSize = batch
        return JobRunner(store: store, handlers: handlers, configuration: configuration, logger: logger)
    }

    @Test("unique keys dedupe; cancel by id or key; only handled kinds are claimed")
    func enqueueAndCancel() async throws {
        try await ScratchDatabase.with { database, _ in
            let store = JobStore(database: database)
            let kind = JobKind("test.ping"), other = JobKind("test.other")
            let now = Date()
            let first = try await store.enqueue(NewJob(kind: kind, payload: ["n": .integer(1)], dueAt: now, uniqueKey: "ping-1"))
            #expect(first != nil)
            #expect(try await store.enqueue(NewJob(kind: kind, payload: ["n": .integer(2)], dueAt: now, uniqueKey: "ping-1")) == nil)
            let keyless = try await store.enqueue(NewJob(kind: kind, dueAt: now))
            let cancelledByKey = try await store.enqueue(NewJob(kind: kind, dueAt: now, uniqueKey: "ping-2"))
            let cancelledByID = try #require(try await store.enqueue(NewJob(kind: kind, dueAt: now)))
            _ = try await store.enqueue(NewJob(kind: other, dueAt: now))
            #expect(try await store.cancel(uniqueKey: "ping-2"))
            #expect(try await store.cancel(id: cancelledByID))
            #expect(try await !store.cancel(id: cancelledByID))
            // Still cancelled: a unique key stays taken for the job's life.
            #expect(try await store.enqueue(NewJob(kind: kind, dueAt: now, uniqueKey: "ping-2")) == nil)

            let recorder = Recorder()
            #expect(try await Self.runner(store, [kind: recorder]).runOnce() == 2)
            #expect(Set(recorder.runs.withLock { $0 }) == Set([first, keyless].compactMap { $0 }))
            #expect(try await store.job(id: try #require(first))?.payload == ["n": .integer(1)])
            #expect(try await store.job(id: try #require(cancelledByKey))?.status == .cancelled)
            // The kind nobody handles waits in the backlog.
            let stats = try await store.stats()
            #expect(stats.dueBacklog == 1)
            #expect(stats.byStatus[.done] == 2)
            #expect(stats.byStatus[.cancelled] == 2)
        }
    }

    @Test("a failing job backs off with growing delays, gives up after its attempts with the last error, and an operator retry runs it")
    func retriesThenGivesUp() async throws {
        try await ScratchDatabase.with { database, _ in
            let store = JobStore(database: database, backoff: JobBackoff(base: .milliseconds(100), maximum: .seconds(10)))
            let kind = JobKind("test.flaky")
            let id = try #require(try await store.enqueue(NewJob(kind: kind, dueAt: Date(), maxAttempts: 3)))
            let failing = Recorder { job in .retry(error: "upstream said no (attempt \(job.attempts))") }
            let runner = Self.runner(store, [kind: failing])
            var delays: [Double] = []
            var previousStart = Date()
            for attempt in 1...3 {
                // Wait for the retry to come due; never claimed early.
                let deadline = ContinuousClock.now + .seconds(5)
                while failing.count < attempt, ContinuousClock.now < deadline {
                    try await runner.runOnce()
                    if failing.count < attempt { try await Task.sleep(for: .milliseconds(10)) }
                }
                #expect(failing.count == attempt)
                let job = try #require(try await store.job(id: id))
                if attempt > 1, let started = job.startedAt { delays.append(started.timeIntervalSince(previousStart)) }
                previousStart = job.startedAt ?? previousStart
            }
            let job = try #require(try await store.job(id: id))
            #expect(job.status == .failed)
            #expect(job.attempts == 3)
            #expect(job.lastError == "gave up after 3 attempts: upstream said no (attempt 3)")
            // Delays: 50-100 ms after the first attempt, 100-200 ms after the second.
            #expect(delays.count == 2)
            #expect(delays.first.map { $0 >= 0.05 } == true)
            #expect(delays.last.map { $0 >= 0.1 } == true)
            try await Task.sleep(for: .milliseconds(300))
            #expect(try await runner.runOnce() == 0)

            #expect(try await store.retry(id: id))
            let succeeding = Recorder()
            #expect(try await Self.runner(store, [kind: succeeding]).runOnce() == 1)
            let retried = try #require(try await store.job(id: id))
            #expect((retried.status, retried.attempts) == (.done, 1))
            #expect(try await !store.retry(id: id))
            // A handler that says fail is not retried at all.
            let doomed = try #require(try await store.enqueue(NewJob(kind: kind, dueAt: Date())))
            try await Self.runner(store, [kind: Recorder { _ in .fail(error: "bad payload") }]).runOnce()
            #expect(try await store.job(id: doomed).map { ($0.status, $0.lastError) } ?? (.scheduled, nil) == (.failed, "bad payload"))
        }
    }

    @Test("a runner that stops mid-batch loses nothing: the lease runs out and another runner takes the jobs; its late outcome is not recorded")
    func leaseExpiry() async throws {
        try await ScratchDatabase.with { database, _ in
            let store = JobStore(database: database)
            let kind = JobKind("test.lease")
            for n in 0..<20 { try await store.enqueue(NewJob(kind: kind, dueAt: Date(), uniqueKey: "lease-\(n)")) }
            // The first runner claims everything with a short lease and "dies" (never records).
            let claimed = try await store.claim(owner: "dead-runner", kinds: [kind], limit: 500, lease: .milliseconds(200))
            #expect(claimed.count == 20)
            let survivor = Recorder()
            #expect(try await Self.runner(store, [kind: survivor], owner: "survivor").runOnce() == 0)
            try await Task.sleep(for: .milliseconds(300))
            #expect(try await store.reclaimExpired() == 20)
            #expect(try await Self.runner(store, [kind: survivor], owner: "survivor").runOnce() == 20)
            #expect(Set(survivor.runs.withLock { $0 }) == Set(claimed.map(\.id)))
            // The dead runner coming back cannot overwrite what the survivor recorded.
            let late = try await store.record(claimed.map { ($0, JobOutcome.retry(error: "late")) }, owner: "dead-runner")
            #expect(late.lostLease == 20)
            let jobs = try await store.list(kind: kind.rawValue, limit: 100)
            #expect(jobs.allSatisfy { $0.status == .done && $0.attempts == 2 })
        }
    }

    @Test("periodic jobs: a leader change neither skips nor doubles a period; a monthly job fires at midnight in the zone")
    func periodicAcrossLeaders() async throws {
        try await ScratchDatabase.with { database, _ in
            let kind = JobKind("test.tick")
            let periodic = [PeriodicJob(name: "test.tick", schedule: try CronSchedule("* * * * *", timeZone: Self.shanghai), kind: kind)]
            let a = PeriodicEnqueuer(database: database, jobs: periodic, lookahead: .zero, logger: Self.logger)
            let b = PeriodicEnqueuer(database: database, jobs: periodic, lookahead: .zero, logger: Self.logger)
            let t0 = try #require(RFC3339.parse("2026-12-31T23:55:30+08:00"))
            func at(_ minutes: Double) -> Date { t0.addingTimeInterval(minutes * 60) }
            #expect(try await a.enqueueDue(now: t0) == 0) // first sight: the schedule starts now
            #expect(try await a.enqueueDue(now: at(2)) == 2)
            // A loses the lead; nobody leads for three minutes; B takes over and catches up, while a
            // stale A still enqueues the same periods.
            async let fromB = b.enqueueDue(now: at(4.5))
            async let fromA = a.enqueueDue(now: at(4.5))
            #expect(try await fromB + fromA == 3)
            #expect(try await b.enqueueDue(now: at(4.75)) == 0)
            let dues = try await database.query("""
                SELECT extract(epoch FROM due_at)::float8 AS due FROM jobs WHERE kind = 'test.tick' ORDER BY due_at
                """).compactMap { $0.string("due").flatMap(Double.init) }
            #expect(dues.count == 5)
            #expect(dues == (0..<5).map { t0.addingTimeInterval(30 + Double($0) * 60).timeIntervalSince1970 })
            // The last one is midnight of the new year in Shanghai.
            #expect(dues.last == RFC3339.parse("2027-01-01T00:00:00+08:00")?.timeIntervalSince1970)

            // Only the leader enqueues: a running enqueuer that does not lead adds nothing.
            let idle = PeriodicEnqueuer(database: database, jobs: [PeriodicJob(name: "test.idle",
                schedule: try CronSchedule("* * * * *", timeZone: Self.shanghai), kind: kind)], tick: .milliseconds(20), logger: Self.logger)
            let running = Task { try await idle.run() }
            try await Task.sleep(for: .milliseconds(200))
            #expect(try await database.query("SELECT count(*) AS n FROM periodic_jobs WHERE name = 'test.idle'")[0].int("n") == 0)
            idle.setLeading(true)
            let deadline = ContinuousClock.now + .seconds(5)
            while try await database.query("SELECT count(*) AS n FROM periodic_jobs WHERE name = 'test.idle'")[0].int("n") == 0,
                  ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(try await database.query("SELECT count(*) AS n FROM periodic_jobs WHERE name = 'test.idle'")[0].int("n") == 1)
            running.cancel()
            _ = await running.result

            // A monthly job across the year's end: due at midnight Shanghai time, claimed not a second before.
            let monthly = PeriodicEnqueuer(database: database, jobs: [PeriodicJob(name: "test.monthly",
                schedule: try CronSchedule("0 0 1 * *", timeZone: Self.shanghai), kind: JobKind("test.monthly"))],
                lookahead: .seconds(60), logger: Self.logger)
            let midnight = try #require(RFC3339.parse("2027-01-01T00:00:00+08:00"))
            _ = try await monthly.enqueueDue(now: midnight.addingTimeInterval(-3600))
            #expect(try await monthly.enqueueDue(now: midnight.addingTimeInterval(-30)) == 1)
            let store = JobStore(database: database)
            let recorder = Recorder()
            let runner = Self.runner(store, [JobKind("test.monthly"): recorder])
            #expect(try await runner.runOnce(now: midnight.addingTimeInterval(-1)) == 0)
            #expect(try await runner.runOnce(now: midnight) == 1)
            let job = try #require(try await store.list(kind: "test.monthly").first)
            #expect(job.dueAt == midnight)
            #expect(job.payload["scheduledFor"] == .string("2026-12-31T16:00:00.000Z"))
        }
    }

    @Test("purchase points mature through their job: enqueued with the pending entry, run by the scheduler's handler, once")
    func maturationJob() async throws {
        try await ScratchDatabase.with { database, _ in
            let subject = Identity(platform: .wechat, app: "wx", openid: "o")
            let member = try await MemberDirectory(database: database).resolve(subject)
            let past = Date().addingTimeInterval(-40 * 86_400)
            let due = past.addingTimeInterval(15 * 86_400)
            try await Ledger(database: database).apply(grants: [
                LedgerGrant(member: member, kind: .pending, rule: "mall.purchase", points: 12, growth: 12, reason: "purchase",
                            eventID: "order-1", ref: "1", occurredAt: past, dueAt: due, subject: subject),
                LedgerGrant(member: member, kind: .grant, rule: "old", points: 5, growth: 0, reason: "old", eventID: "old-1", ref: nil,
                            occurredAt: past, dueAt: nil, expiresAt: past.addingTimeInterval(30 * 86_400), subject: subject),
            ], reversals: [], levels: .standard)
            let store = JobStore(database: database)
            let jobs = try await store.list(kind: LoyaltyJobs.mature.rawValue)
            #expect(jobs.count == 1)
            #expect(jobs.first.map { abs($0.dueAt.timeIntervalSince(due)) < 0.001 } == true)

            let handlers = LoyaltyJobs.handlers(ledger: Ledger(database: database), rules: RuleStore(database: database))
            let runner = Self.runner(store, handlers)
            #expect(try await runner.runOnce() == 1)
            // The expiry sweep is a periodic job; run one period of it.
            try await store.enqueue(NewJob(kind: LoyaltyJobs.expire, dueAt: Date(), uniqueKey: "expire-now"))
            #expect(try await runner.runOnce() == 1)
            let queries = MemberQueries(database: database)
            let view = try #require(try await queries.member(member))
            #expect((view.points, view.growth, view.pendingPoints) == (12, 12, 0)) // 5 expired, 12 matured
            let kinds = try await queries.ledger(member: member, LedgerFilter()).map(\.kind).sorted()
            #expect(kinds == ["expiry", "grant", "matured", "pending"])
            // Running the maturation job again (a scheduler died before recording it) changes nothing.
            #expect(try await Ledger(database: database).mature(ids: jobs.compactMap { $0.payload["ledgerId"]?.int }, levels: .standard) == 0)
        }
    }
}
