import Contracts
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Jobs
import Logging
import Loyalty
import PostgresClient
import Scheduler
import Testing
import Workers

/// The operator's view of the scheduler over real HTTP (`/admin/v1/jobs`, `/admin/v1/calendar`,
/// the scheduler's `/metrics`), and working-day reviews through the points pool.
@Suite("Scheduler admin API and metrics")
struct SchedulerAdminTests {
    static func call(_ client: any TestClientProtocol, _ method: HTTPRequest.Method, _ uri: String, _ body: String? = nil,
                     headers: HTTPFields = GatewayHarness.adminHeaders) async throws -> (HTTPResponse.Status, [String: Any]) {
        try await PointsAdminTests.call(client, method, uri, body, headers: headers)
    }

    /// A field of the `{"error":{"code","message"}}` answer.
    static func error(_ json: [String: Any], _ field: String) -> String? { (json["error"] as? [String: Any])?[field] as? String }

    @Test("jobs: list by status and kind, page, show, cancel, retry; refusals carry a code")
    func jobs() async throws {
        try await GatewayHarness.run { client, _, gateway in
            let database = PostgresPool(url: TestEnvironment.databaseURL, maximumConnections: 1)
            let store = JobStore(database: database)
            let kind = TestEnvironment.unique("test.admin")
            let future = Date().addingTimeInterval(3600)
            var ids: [Int64] = []
            for n in 0..<3 {
                ids.append(try #require(try await store.enqueue(NewJob(kind: JobKind(kind), payload: ["n": .integer(Int64(n))], dueAt: future))))
            }
            // One of them fails for good.
            let failing = try #require(try await store.enqueue(NewJob(kind: JobKind(kind + ".fail"), dueAt: Date(), maxAttempts: 1)))
            let claimed = try await store.claim(owner: "test", kinds: [JobKind(kind + ".fail")], limit: 10, lease: .seconds(30))
            try await store.record(claimed.map { ($0, JobOutcome.retry(error: "platform answered 45009")) }, owner: "test")

            var (status, json) = try await Self.call(client, .get, "/admin/v1/jobs?kind=\(kind)&limit=2")
            #expect(status == .ok)
            var page = json["jobs"] as? [[String: Any]] ?? []
            #expect(page.compactMap { $0["id"] as? Int }.map(Int64.init) == [ids[2], ids[1]])
            #expect(page.first?["status"] as? String == "scheduled")
            #expect(page.first?["dueAt"] as? String == RFC3339.format(future))
            let next = try #require(json["nextBefore"] as? Int)
            (status, json) = try await Self.call(client, .get, "/admin/v1/jobs?kind=\(kind)&limit=2&before=\(next)")
            page = json["jobs"] as? [[String: Any]] ?? []
            #expect(page.compactMap { $0["id"] as? Int }.map(Int64.init) == [ids[0]])
            #expect(json["nextBefore"] is NSNull)

            (status, json) = try await Self.call(client, .get, "/admin/v1/jobs?status=failed&kind=\(kind).fail")
            page = json["jobs"] as? [[String: Any]] ?? []
            #expect(page.count == 1)
            #expect(page.first?["lastError"] as? String == "gave up after 1 attempts: platform answered 45009")
            #expect(page.first?["attempts"] as? Int == 1)

            (status, json) = try await Self.call(client, .get, "/admin/v1/jobs/\(ids[1])")
            #expect(status == .ok)
            #expect((json["payload"] as? [String: Any])?["n"] as? Int == 1)
            (status, json) = try await Self.call(client, .post, "/admin/v1/jobs/\(ids[1])/cancel")
            #expect((status, json["status"] as? String) == (.ok, "cancelled"))
            (status, json) = try await Self.call(client, .post, "/admin/v1/jobs/\(ids[1])/cancel")
            #expect((status, Self.error(json, "code")) == (.conflict, "not_cancellable"))
            (status, json) = try await Self.call(client, .post, "/admin/v1/jobs/\(ids[0])/retry")
            #expect((status, Self.error(json, "code")) == (.conflict, "not_retryable"))
            (status, json) = try await Self.call(client, .post, "/admin/v1/jobs/\(failing)/retry")
            #expect((status, json["status"] as? String, json["attempts"] as? Int) == (.ok, "scheduled", 0))

            (status, json) = try await Self.call(client, .get, "/admin/v1/jobs/999999999")
            #expect((status, Self.error(json, "code")) == (.notFound, "unknown_job"))
            (status, json) = try await Self.call(client, .get, "/admin/v1/jobs/abc")
            #expect((status, Self.error(json, "code")) == (.badRequest, "invalid_job_id"))
            (status, json) = try await Self.call(client, .get, "/admin/v1/jobs?status=sleeping")
            #expect((status, Self.error(json, "code")) == (.badRequest, "invalid_status"))
            (status, json) = try await Self.call(client, .get, "/admin/v1/jobs?limit=0")
            #expect((status, Self.error(json, "code")) == (.badRequest, "invalid_limit"))
            (status, _) = try await Self.call(client, .get, "/admin/v1/jobs", headers: [:])
            #expect(status == .unauthorized)

            try await database.query("DELETE FROM jobs WHERE kind LIKE $1", [kind + "%"])
            await database.close()
            _ = gateway
        }
    }

    @Test("calendar: declare holidays and make-up workdays, list a range, delete; bad days refused")
    func calendar() async throws {
        try await GatewayHarness.run { client, _, _ in
            // A year no other test uses: workers of other tests read the same table.
            var (status, json) = try await Self.call(client, .put, "/admin/v1/calendar/2199-10-01", #"{"kind":"holiday","name":"National Day"}"#)
            #expect((status, json["kind"] as? String) == (.ok, "holiday"))
            (status, _) = try await Self.call(client, .put, "/admin/v1/calendar/2199-09-28", #"{"kind":"workday"}"#)
            #expect(status == .ok)
            (status, json) = try await Self.call(client, .get, "/admin/v1/calendar?from=2199-09-01&to=2199-10-31")
            let days = json["days"] as? [[String: Any]] ?? []
            #expect(days.compactMap { $0["day"] as? String } == ["2199-09-28", "2199-10-01"])
            #expect(days.last?["name"] as? String == "National Day")

            (status, json) = try await Self.call(client, .put, "/admin/v1/calendar/2199-02-30", #"{"kind":"holiday"}"#)
            #expect((status, Self.error(json, "code")) == (.badRequest, "invalid_day"))
            (status, json) = try await Self.call(client, .put, "/admin/v1/calendar/2199-10-02", #"{"kind":"vacation"}"#)
            #expect((status, Self.error(json, "code")) == (.badRequest, "invalid_day"))
            (status, json) = try await Self.call(client, .put, "/admin/v1/calendar/2199-10-02", #"{"kind":"holiday","when":"x"}"#)
            #expect((status, Self.error(json, "message")) == (.badRequest, "unknown field when"))
            (status, json) = try await Self.call(client, .get, "/admin/v1/calendar?from=yesterday")
            #expect((status, Self.error(json, "code")) == (.badRequest, "invalid_day"))

            for day in ["2199-10-01", "2199-09-28"] {
                (status, _) = try await Self.call(client, .delete, "/admin/v1/calendar/\(day)")
                #expect(status == .noContent)
            }
            (status, json) = try await Self.call(client, .delete, "/admin/v1/calendar/2199-10-01")
            #expect((status, Self.error(json, "code")) == (.notFound, "unknown_day"))
        }
    }

    @Test("the scheduler's /metrics: runs by outcome, lag, due backlog and oldest due age, over live HTTP")
    func metrics() async throws {
        try await ScratchDatabase.with { database, _ in
            let store = JobStore(database: database)
            let metrics = JobMetrics()
            let periodic = PeriodicEnqueuer(database: database, jobs: [], metrics: metrics, logger: Logger(label: "test"))
            periodic.setLeading(true)
            try await store.enqueue(NewJob(kind: JobKind("test.ok"), dueAt: Date().addingTimeInterval(-2)))
            try await store.enqueue(NewJob(kind: JobKind("test.waiting"), dueAt: Date().addingTimeInterval(-30)))
            var configuration = JobRunner.Configuration(owner: "metrics-test")
            configuration.batchSize = 10
            try await JobRunner(store: store, handlers: [JobKind("test.ok"): SchedulerTests.Recorder()], configuration: configuration,
                                metrics: metrics, logger: Logger(label: "test")).runOnce()
            let app = SchedulerHTTP.application(host: "127.0.0.1", port: 0, store: store, metrics: metrics, periodic: periodic,
                                                logger: Logger(label: "test"))
            try await app.test(.live) { client in
                try await client.execute(uri: "/metrics", method: .get) { response in
                    let text = String(buffer: response.body)
                    #expect(response.status == .ok)
                    #expect(text.contains(#"fanflow_scheduler_runs_total{kind="test.ok",outcome="done"} 1"#))
                    #expect(text.contains("fanflow_jobs_due_backlog 1\n"))
                    #expect(text.contains(#"fanflow_jobs{status="done"} 1"#))
                    #expect(text.contains("fanflow_scheduler_lag_seconds_count 1\n"))
                    #expect(text.contains("fanflow_scheduler_leader 1\n"))
                    let oldest = text.split(separator: "\n").first { $0.hasPrefix("fanflow_jobs_oldest_due_age_seconds ") }
                        .flatMap { Double($0.split(separator: " ")[1]) } ?? 0
                    #expect(oldest >= 30 && oldest < 60)
                }
                try await client.execute(uri: "/health", method: .get) { response in #expect(response.status == .ok) }
            }
        }
    }

    @Test("a post reviewed for 5 working days: pending now, its maturation job due on the fifth working day after the holiday")
    func reviewedPost() async throws {
        let h = try await PointsHarness.open()
        let zone = h.timeZone
        let calendar = BusinessCalendar(timeZone: zone, exceptions: [
            "2025-09-28": .workday, "2025-10-01": .holiday, "2025-10-02": .holiday, "2025-10-03": .holiday, "2025-10-04": .holiday,
            "2025-10-05": .holiday, "2025-10-06": .holiday, "2025-10-07": .holiday, "2025-10-08": .holiday, "2025-10-11": .workday,
        ])
        let kind = h.kind("post")
        let program = RuleBook.Program(rules: [PointsRule(code: "\(h.prefix)-review", kinds: [kind], points: 2, growth: 5,
                                                          reason: "post, after review", maturesAfterWorkingDays: 5)],
                                       levels: .standard, calendar: calendar)
        try await h.pool(program).process([h.event("p1", kind, openid: "author", at: "2025-09-30T10:00:00+08:00")])
        let member = try #require(try await h.member("author"))
        #expect((member.points, member.pendingPoints, member.pendingGrowth) == (0, 2, 5))
        let job = try await h.database.query("""
            SELECT extract(epoch FROM j.due_at)::float8 AS due FROM jobs j JOIN ledger l ON l.id = (j.payload->>'ledgerId')::bigint
            WHERE j.kind = 'loyalty.mature' AND l.member_id = $1
            """, [member.id])
        #expect(job.count == 1)
        #expect(job.first?.string("due").flatMap(Double.init) == RFC3339.parse("2025-10-14T10:00:00+08:00")?.timeIntervalSince1970)
        await h.close()
    }
}
