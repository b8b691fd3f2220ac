import ClientSupport
import Contracts
import Foundation
import PostgresClient

/// The jobs table: enqueue, claim under a lease, record outcomes, and what operators need.
///
/// Claims take due jobs with `FOR UPDATE SKIP LOCKED`, so several schedulers never claim one job
/// twice; a claim is a lease, and a lease that ran out (its scheduler died) is taken back by
/// whichever scheduler looks next. Outcomes are recorded only by the lease holder: a scheduler
/// that comes back after its lease was taken over cannot overwrite the new holder's record.
public struct JobStore: Sendable {
    let database: PostgresPool
    public let backoff: JobBackoff

    public init(database: PostgresPool, backoff: JobBackoff = JobBackoff()) {
        self.database = database
        self.backoff = backoff
    }

    static let columns = """
        id, kind, payload::text AS payload, status, extract(epoch FROM due_at)::float8 AS due_at, unique_key, attempts,
        max_attempts, last_error, locked_by, extract(epoch FROM created_at)::float8 AS created_at,
        extract(epoch FROM started_at)::float8 AS started_at, extract(epoch FROM finished_at)::float8 AS finished_at
        """

    // MARK: Enqueue and cancel

    /// Enqueues a job; returns its id, or nil when a job with the same unique key exists.
    @discardableResult
    public func enqueue(_ job: NewJob) async throws -> Int64? {
        let rows = try await database.query("""
            INSERT INTO jobs (kind, payload, unique_key, due_at, max_attempts) VALUES ($1, $2::jsonb, $3, $4, $5)
            ON CONFLICT (unique_key) DO NOTHING RETURNING id
            """, Self.parameters(job))
        return rows.first?.int("id").map(Int64.init)
    }

    /// Enqueues inside the caller's transaction, so a job exists exactly when the change that
    /// needs it was committed. Returns how many were new (the rest had a unique key already taken).
    @discardableResult
    public static func enqueue(_ jobs: [NewJob], on connection: isolated PostgresConnection) throws -> Int {
        guard !jobs.isEmpty else { return 0 }
        // PostgreSQL takes at most 65,535 parameters a statement: 5 a job.
        guard jobs.count <= 10_000 else {
            return try stride(from: 0, to: jobs.count, by: 10_000).reduce(0) { added, start in
                added + (try enqueue(Array(jobs[start..<min(start + 10_000, jobs.count)]), on: connection))
            }
        }
        var rows: [String] = []
        var parameters: [any PostgresEncodable] = []
        for (index, job) in jobs.enumerated() {
            let b = index * 5
            rows.append("($\(b + 1),$\(b + 2)::jsonb,$\(b + 3),$\(b + 4)::timestamptz,$\(b + 5)::int)")
            parameters += Self.parameters(job)
        }
        return try connection.query("""
            INSERT INTO jobs (kind, payload, unique_key, due_at, max_attempts) VALUES \(rows.joined(separator: ","))
            ON CONFLICT (unique_key) DO NOTHING
            """, parameters).affectedRows
    }

    static func parameters(_ job: NewJob) -> [any PostgresEncodable] {
        [job.kind.rawValue, encode(job.payload), job.uniqueKey, job.dueAt, max(1, job.maxAttempts)]
    }

    /// Cancels a job that has not started (scheduled, or failed and waiting for an operator).
    /// Returns whether it was cancelled.
    public func cancel(id: Int64) async throws -> Bool {
        try await database.query("""
            UPDATE jobs SET status = 'cancelled', finished_at = now(), updated_at = now()
            WHERE id = $1 AND status IN ('scheduled', 'failed')
            """, [id]).affectedRows > 0
    }

    public func cancel(uniqueKey: String) async throws -> Bool {
        try await database.query("""
            UPDATE jobs SET status = 'cancelled', finished_at = now(), updated_at = now()
            WHERE unique_key = $1 AND status IN ('scheduled', 'failed')
            """, [uniqueKey]).affectedRows > 0
    }

    /// Puts a failed or cancelled job back to run now with fresh attempts. Returns whether it did.
    public func retry(id: Int64) async throws -> Bool {
        try await database.query("""
            UPDATE jobs SET status = 'scheduled', due_at = now(), attempts = 0, locked_by = NULL, locked_until = NULL,
                   finished_at = NULL, updated_at = now()
            WHERE id = $1 AND status IN ('failed', 'cancelled')
            """, [id]).affectedRows > 0
    }

    // MARK: Claim and settle

    /// Claims up to `limit` due jobs of `kinds` for `lease`, earliest due first, and among jobs due
    /// at the same time the first enqueued first (a batch written in one transaction, such as a
    /// broadcast's next batch and its sends, is claimed in the order it was written). Kinds nobody
    /// handles stay scheduled (and show in the backlog) rather than failing. The jobs are picked
    /// once, in a materialized CTE (see ``Outbox/claim(limit:lease:)`` for what `IN (subquery)` did).
    public func claim(owner: String, kinds: [JobKind], limit: Int, lease: Duration, now: Date? = nil) async throws -> [Job] {
        guard !kinds.isEmpty else { return [] }
        let rows = try await database.query("""
            WITH picked AS MATERIALIZED (
                SELECT id AS picked_id FROM jobs WHERE status = 'scheduled' AND due_at <= coalesce($4::timestamptz, now())
                  AND kind = ANY($5::text[])
                ORDER BY due_at, id LIMIT $2 FOR UPDATE SKIP LOCKED)
            UPDATE jobs SET status = 'running', attempts = attempts + 1, locked_by = $1,
                   locked_until = now() + make_interval(secs => $3), started_at = now(), updated_at = now()
            FROM picked WHERE jobs.id = picked.picked_id
            RETURNING \(Self.columns)
            """, [owner, limit, Self.seconds(lease), now, PostgresArray(kinds.map(\.rawValue))])
        return try rows.map(Self.job).sorted { ($0.dueAt, $0.id) < ($1.dueAt, $1.id) }
    }

    /// Takes back jobs whose lease ran out (their scheduler died or hung): scheduled again at
    /// once, or failed if that was their last attempt. Returns how many.
    @discardableResult
    public func reclaimExpired() async throws -> Int {
        try await database.query("""
            UPDATE jobs SET status = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'scheduled' END,
                   finished_at = CASE WHEN attempts >= max_attempts THEN now() END,
                   last_error = 'lease expired: the scheduler running it stopped or hung (' || coalesce(locked_by, '?') || ')',
                   locked_by = NULL, locked_until = NULL, updated_at = now()
            WHERE id IN (SELECT id FROM jobs WHERE status = 'running' AND locked_until < now() FOR UPDATE SKIP LOCKED)
            """).affectedRows
    }

    /// What recording one batch's outcomes did, for metrics.
    public struct Settled: Sendable, Equatable {
        public var done = 0, retried = 0, failed = 0
        /// Outcomes not recorded because the lease had passed to another scheduler.
        public var lostLease = 0
    }

    /// Records the outcomes of jobs `owner` claimed: at most three statements per batch.
    @discardableResult
    public func record(_ results: [(job: Job, outcome: JobOutcome)], owner: String) async throws -> Settled {
        var done: [Int64] = []
        var retries: [(id: Int64, delay: Duration, error: String)] = []
        var failures: [(id: Int64, error: String)] = []
        for (job, outcome) in results {
            switch outcome {
            case .done:
                done.append(job.id)
            case .retry(let error, let delay):
                if job.attempts >= job.maxAttempts {
                    failures.append((job.id, "gave up after \(job.attempts) attempts: \(error)"))
                } else {
                    retries.append((job.id, delay ?? backoff.delay(afterAttempt: job.attempts), error))
                }
            case .fail(let error):
                failures.append((job.id, error))
            }
        }
        return try await database.transaction { [done, retries, failures] connection in
            var settled = Settled()
            if !done.isEmpty {
                settled.done = try connection.query("""
                    UPDATE jobs SET status = 'done', finished_at = now(), locked_by = NULL, locked_until = NULL, updated_at = now()
                    WHERE id = ANY($1::bigint[]) AND status = 'running' AND locked_by = $2
                    """, [PostgresArray(done), owner]).affectedRows
            }
            if !retries.isEmpty {
                settled.retried = try connection.query("""
                    UPDATE jobs SET status = 'scheduled', due_at = now() + make_interval(secs => r.delay), last_error = r.error,
                           locked_by = NULL, locked_until = NULL, updated_at = now()
                    FROM unnest($1::bigint[], $2::float8[], $3::text[]) AS r(id, delay, error)
                    WHERE jobs.id = r.id AND jobs.status = 'running' AND jobs.locked_by = $4
                    """, [PostgresArray(retries.map(\.id)), PostgresArray(retries.map { String(Self.seconds($0.delay)) }),
                          PostgresArray(retries.map(\.error)), owner]).affectedRows
            }
            if !failures.isEmpty {
                settled.failed = try connection.query("""
                    UPDATE jobs SET status = 'failed', last_error = r.error, finished_at = now(), locked_by = NULL,
                           locked_until = NULL, updated_at = now()
                    FROM unnest($1::bigint[], $2::text[]) AS r(id, error)
                    WHERE jobs.id = r.id AND jobs.status = 'running' AND jobs.locked_by = $3
                    """, [PostgresArray(failures.map(\.id)), PostgresArray(failures.map(\.error)), owner]).affectedRows
            }
            settled.lostLease = results.count - settled.done - settled.retried - settled.failed
            return settled
        }
    }

    // MARK: Operators

    public func job(id: Int64) async throws -> Job? {
        try await database.query("SELECT \(Self.columns) FROM jobs WHERE id = $1", [id]).first.map(Self.job)
    }

    /// Newest first; `before` pages (ids below it).
    public func list(status: JobStatus? = nil, kind: String? = nil, limit: Int = 50, before: Int64? = nil) async throws -> [Job] {
        try await database.query("""
            SELECT \(Self.columns) FROM jobs
            WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR kind = $2) AND ($3::bigint IS NULL OR id < $3)
            ORDER BY id DESC LIMIT $4
            """, [status?.rawValue, kind, before, max(1, min(limit, 500))]).map(Self.job)
    }

    public struct Stats: Sendable, Equatable {
        /// Scheduled jobs whose due time has come.
        public var dueBacklog: Int
        /// How long the earliest of them has been due (0 when none is).
        public var oldestDueSeconds: Double
        public var byStatus: [JobStatus: Int]
    }

    public func stats() async throws -> Stats {
        let due = try await database.query("""
            SELECT count(*) AS backlog, coalesce(extract(epoch FROM now() - min(due_at)), 0)::float8 AS oldest
            FROM jobs WHERE status = 'scheduled' AND due_at <= now()
            """)
        let counts = try await database.query("SELECT status, count(*) AS n FROM jobs GROUP BY status")
        var byStatus: [JobStatus: Int] = [:]
        for row in counts {
            let text = try row.requiredString("status")
            guard let status = JobStatus(rawValue: text) else { throw PostgresRowError(column: "status", problem: .malformed(text)) }
            byStatus[status] = try row.requiredInt("n")
        }
        // An aggregate without GROUP BY always returns one row.
        guard let totals = due.first else { throw PostgresRowError(column: "backlog", problem: .null) }
        return Stats(dueBacklog: try totals.requiredInt("backlog"), oldestDueSeconds: try totals.requiredDouble("oldest"), byStatus: byStatus)
    }

    /// Deletes finished jobs older than `age`; their unique keys become free again.
    @discardableResult
    public func prune(olderThan age: Duration) async throws -> Int {
        try await database.query("""
            DELETE FROM jobs WHERE status IN ('done', 'cancelled') AND finished_at < now() - make_interval(secs => $1)
            """, [Self.seconds(age)]).affectedRows
    }

    // MARK: Rows

    public static func seconds(_ duration: Duration) -> Double { duration.seconds }

    static func encode(_ payload: [String: JSONValue]) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return (try? encoder.encode(payload)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
    }

    static func job(_ row: PostgresRow) throws(PostgresRowError) -> Job {
        func time(_ column: String) throws(PostgresRowError) -> Date? {
            try row.optionalDouble(column).map(Date.init(timeIntervalSince1970:))
        }
        func required(_ column: String) throws(PostgresRowError) -> Date {
            guard let value = try time(column) else { throw PostgresRowError(column: column, problem: .null) }
            return value
        }
        let statusText = try row.requiredString("status")
        guard let status = JobStatus(rawValue: statusText) else { throw PostgresRowError(column: "status", problem: .malformed(statusText)) }
        // The column is jsonb: anything but an object would be a row no enqueue wrote.
        guard case .object(let payload)? = try? JSONValue.parse(Array(try row.requiredString("payload").utf8)) else {
            throw PostgresRowError(column: "payload", problem: .malformed("not a JSON object"))
        }
        return Job(id: try row.requiredInt64("id"), kind: JobKind(try row.requiredString("kind")), payload: payload, status: status,
                   dueAt: try required("due_at"), uniqueKey: try row.optionalString("unique_key"), attempts: try row.requiredInt("attempts"),
                   maxAttempts: try row.requiredInt("max_attempts"), lastError: try row.optionalString("last_error"),
                   lockedBy: try row.optionalString("locked_by"), createdAt: try required("created_at"),
                   startedAt: try time("started_at"), finishedAt: try time("finished_at"))
    }
}
