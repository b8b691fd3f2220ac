import ArgumentParser
import Foundation
import PostgresClient

/// One round of `scripts/bench scheduler` against the schedulers the wrapper started: a burst of
/// due maturation jobs, then a steady stream; every time is PostgreSQL's own (created_at,
/// started_at, finished_at), so polling does not blur the figures.
struct SchedulerRound: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scheduler-round", abstract: "Burst and steady maturation jobs against running schedulers.")

    @Option(help: "Schedulers running (a label for the table).") var schedulers: Int
    @Option(help: "Jobs in the burst, all due at once.") var jobs: Int = 10_000
    @Option(help: "Seconds of steady load.") var steadySeconds: Int = 20
    @Option(help: "Jobs a second coming due in the steady phase.") var rate: Int = 500
    @Option(help: "Append the result here.") var results: String

    struct Line: Codable {
        var schedulers: Int
        var jobs: Int
        var burstSeconds: Double
        var burstLagP99: Double
        var steadyRate: Int
        var steadyLag: [Double]
        var claimedTwice: Int
        var matured: Int
        var total: Int
    }

    func validate() throws {
        guard (1...1_000_000).contains(jobs), (1...3600).contains(steadySeconds), (1...100_000).contains(rate) else {
            throw ValidationError("--jobs 1-1000000, --steady-seconds 1-3600, --rate 1-100000")
        }
    }

    /// `count` pending grants over 1000 members, each with its maturation job due `due` (SQL in i,
    /// seconds from now), in one transaction.
    static func enqueue(_ db: PostgresConnection, count: Int, due: String) async throws {
        try await db.execute("""
            BEGIN;
            INSERT INTO members (id, pending_points, pending_growth) SELECT m, 0, 0 FROM generate_series(1, 1000) m ON CONFLICT DO NOTHING;
            WITH added AS (
              INSERT INTO ledger (member_id, kind, rule, points, growth, reason, event_id, ref, occurred_at, due_at)
              SELECT 1 + i % 1000, 'pending', 'mall.purchase', 3, 1, 'purchase', 'bench-' || txid_current() || '-' || i, i::text,
                     now() - interval '15 days', now() + make_interval(secs => \(due))
              FROM generate_series(0, \(count) - 1) i RETURNING id, member_id, due_at)
            , moved AS (UPDATE members m SET pending_points = m.pending_points + 3 * c.n, pending_growth = m.pending_growth + c.n
                        FROM (SELECT member_id, count(*) AS n FROM added GROUP BY member_id) c WHERE m.id = c.member_id)
            INSERT INTO jobs (kind, payload, unique_key, due_at)
            SELECT 'loyalty.mature', jsonb_build_object('ledgerId', id), 'loyalty.mature:' || id, due_at FROM added;
            COMMIT;
            """)
    }

    static func waitDone(_ db: PostgresConnection) async throws {
        let started = now()
        while try await db.one("SELECT count(*) AS n FROM jobs WHERE kind = 'loyalty.mature' AND status <> 'done'").number("n") > 0 {
            if now() - started > 300 { throw BenchError("jobs did not finish in 300 s") }
            try await Task.sleep(for: .milliseconds(200))
        }
    }

    func run() async throws {
        let db = try await PostgresConnection(url: try environment("FANFLOW_DATABASE_URL"))
        FileHandle.standardError.write(Data("[bench] \(schedulers) scheduler(s): burst of \(jobs) due jobs\n".utf8))
        try await Self.enqueue(db, count: jobs, due: "0")
        try await Self.waitDone(db)
        let burst = try await db.one("""
            SELECT extract(epoch FROM max(finished_at) - min(created_at))::float8 AS took,
                   (percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - due_at)))::float8 AS p99,
                   count(*) FILTER (WHERE attempts <> 1) AS twice
            FROM jobs WHERE kind = 'loyalty.mature'
            """)
        var twice = try burst.number("twice")
        try await db.execute("DELETE FROM jobs WHERE kind = 'loyalty.mature'")
        FileHandle.standardError.write(Data("[bench] \(schedulers) scheduler(s): steady, \(rate) jobs/s coming due for \(steadySeconds)s\n".utf8))
        let steady = rate * steadySeconds
        try await Self.enqueue(db, count: steady, due: "2 + i / \(rate).0")
        try await Self.waitDone(db)
        let lags = try await db.one("""
            SELECT (percentile_cont(0.5) WITHIN GROUP (ORDER BY l))::float8 AS p50,
                   (percentile_cont(0.99) WITHIN GROUP (ORDER BY l))::float8 AS p99, max(l)::float8 AS max,
                   count(*) FILTER (WHERE attempts <> 1) AS twice
            FROM (SELECT extract(epoch FROM started_at - due_at) AS l, attempts FROM jobs WHERE kind = 'loyalty.mature') t
            """)
        twice += try lags.number("twice")
        let matured = try await db.one("SELECT count(*) AS n FROM ledger WHERE kind = 'matured'").number("n")
        await db.close()
        try ResultLines.append(Line(schedulers: schedulers, jobs: jobs, burstSeconds: try burst.real("took"), burstLagP99: try burst.real("p99"),
                                    steadyRate: rate, steadyLag: [try lags.real("p50"), try lags.real("p99"), try lags.real("max")],
                                    claimedTwice: twice, matured: matured, total: jobs + steady), to: results)
    }
}

struct SchedulerTable: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "scheduler-table", abstract: "Print the scheduler figure.")

    @Option(help: "The rounds' result lines.") var results: String

    func run() async throws {
        let rounds = try ResultLines.read(SchedulerRound.Line.self, from: results)
        let rate = rounds.first?.steadyRate ?? 500
        var table = Table(["schedulers", "burst jobs", "burst dispatched in", "burst jobs/s", "burst lag p99",
                           "steady (\(rate)/s) lag p50 \\| p99 \\| max", "claimed twice", "matured / jobs"])
        for r in rounds {
            table.add(["\(r.schedulers)", "\(r.jobs)", "\(Format.fixed(r.burstSeconds, 2)) s", Format.int(Double(r.jobs) / r.burstSeconds),
                       "\(Format.fixed(r.burstLagP99, 3)) s", r.steadyLag.map { Format.fixed($0, 3) }.joined(separator: " | ") + " s",
                       "\(r.claimedTwice)", "\(r.matured) / \(r.total)"])
        }
        print("")
        print("\(banner("scheduler")): maturation jobs (one ledger transaction per batch), batch 500, poll 200 ms, load average \(loadAverage())")
        print("")
        print(table.text)
    }
}
