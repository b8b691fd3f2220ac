import AsyncHTTPClient
import Contracts
import Foundation
import Jobs
import Loyalty
import Members
import NIOCore
import NIOHTTP1
import PostgresClient
import Testing

/// Real `fanflow worker` processes (the binary `swift build` made beside the tests) sharing one
/// jobs table: no job is claimed twice, and a process killed while it holds a batch loses nothing.
@Suite("Scheduler processes")
struct SchedulerProcessTests {
    static var binary: URL {
        if let path = ProcessInfo.processInfo.environment["FANFLOW_BINARY"], !path.isEmpty { return URL(fileURLWithPath: path) }
        // Tests/IntegrationTests/<this file> → the package root → .build/debug/fanflow.
        return URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent(".build/debug/fanflow")
    }

    /// A pipeline worker (which runs the loyalty jobs) on the scratch database, with a broker vhost
    /// of its own so its consumer takes no other test's events.
    static func startWorker(databaseURL: String, amqpURL: String, log: URL) throws -> Process {
        let process = Process()
        process.executableURL = binary
        process.arguments = ["worker", "--pool", "pipeline=1", "--job-lease-seconds", "10"]
        var environment = ProcessInfo.processInfo.environment
        environment["FANFLOW_DATABASE_URL"] = databaseURL
        environment["FANFLOW_AMQP_URL"] = amqpURL
        environment["FANFLOW_SECRET_KEY"] = GatewayHarness.secretKey
        environment["FANFLOW_LOG_LEVEL"] = "notice"
        process.environment = environment
        FileManager.default.createFile(atPath: log.path, contents: nil)
        let handle = try FileHandle(forWritingTo: log)
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        return process
    }

    /// Creates (or deletes) a vhost through the management API, guest allowed everything in it.
    static func vhost(_ name: String, delete: Bool = false) async throws -> String {
        let management = ProcessInfo.processInfo.environment["FANFLOW_AMQP_MANAGEMENT_URL"] ?? "http://guest:guest@127.0.0.1:15672"
        guard let url = URL(string: management), let host = url.host, let port = url.port else { throw PostgresError(.usage, "bad management URL") }
        let base = "http://\(host):\(port)/api"
        let auth = "Basic " + Data("\(url.user ?? "guest"):\(url.password ?? "guest")".utf8).base64EncodedString()
        func call(_ method: HTTPMethod, _ path: String, _ body: String?) async throws {
            var request = HTTPClientRequest(url: base + path)
            request.method = method
            request.headers.add(name: "Authorization", value: auth)
            request.headers.add(name: "Content-Type", value: "application/json")
            if let body { request.body = .bytes(ByteBuffer(string: body)) }
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
            guard (200..<300).contains(Int(response.status.code)) else { throw PostgresError(.usage, "management API \(path): \(response.status)") }
        }
        if delete {
            try await call(.DELETE, "/vhosts/\(name)", nil)
        } else {
            try await call(.PUT, "/vhosts/\(name)", "{}")
            try await call(.PUT, "/permissions/\(name)/guest", #"{"configure":".*","write":".*","read":".*"}"#)
        }
        let amqp = ProcessInfo.processInfo.environment["FANFLOW_AMQP_URL"] ?? "amqp://guest:guest@127.0.0.1:5672/%2F"
        guard let slash = amqp.range(of: "/", options: .backwards) else { throw PostgresError(.usage, "bad AMQP URL") }
        return String(amqp[..<slash.lowerBound]) + "/" + name
    }

    @Test("two pipeline workers and 10,000 due maturation jobs: each claimed once; one killed holding a batch loses none and doubles none")
    func twoWorkersOneKilled() async throws {
        guard FileManager.default.isExecutableFile(atPath: Self.binary.path) else {
            Issue.record("no fanflow binary at \(Self.binary.path): run through scripts/test, which builds it")
            return
        }
        try await ScratchDatabase.with { database, url in
            // 10,000 pending purchase grants over 100 members, all already due: 10,000 jobs.
            let directory = MemberDirectory(database: database)
            var members: [Int64] = []
            for n in 0..<100 { members.append(try await directory.resolve(Identity(platform: .wechat, app: "wx", openid: "o\(n)"))) }
            let past = Date().addingTimeInterval(-20 * 86_400)
            let ledger = Ledger(database: database)
            for chunk in 0..<20 {
                let grants = (0..<500).map { i -> LedgerGrant in
                    let n = chunk * 500 + i
                    return LedgerGrant(member: members[n % 100], kind: .pending, rule: "mall.purchase", points: 3, growth: 1,
                                       reason: "purchase", eventID: "order-\(n)", ref: "\(n)", occurredAt: past,
                                       dueAt: past.addingTimeInterval(15 * 86_400),
                                       subject: Identity(platform: .wechat, app: "wx", openid: "o\(n % 100)"))
                }
                try await ledger.apply(grants: grants, reversals: [], levels: .standard)
            }
            #expect(try await database.query("SELECT count(*) AS n FROM jobs WHERE kind = 'loyalty.mature'")[0].int("n") == 10_000)

            let logs = FileManager.default.temporaryDirectory.appendingPathComponent("fanflow-scheduler-test-\(UUID().uuidString.prefix(8))")
            try FileManager.default.createDirectory(at: logs, withIntermediateDirectories: true)
            let vhost = "fanflow-jobs-" + UUID().uuidString.prefix(8).lowercased()
            let amqpURL = try await Self.vhost(vhost)
            let victim = try Self.startWorker(databaseURL: url, amqpURL: amqpURL, log: logs.appendingPathComponent("victim.log"))
            let survivor = try Self.startWorker(databaseURL: url, amqpURL: amqpURL, log: logs.appendingPathComponent("survivor.log"))
            defer {
                for process in [victim, survivor] where process.isRunning { process.terminate() }
            }

            // Freeze the victim while it holds claimed jobs, check it still does, then kill it.
            let pid = victim.processIdentifier
            var held = 0
            let deadline = ContinuousClock.now + .seconds(30)
            while held == 0, ContinuousClock.now < deadline {
                let holding = try await database.query("""
                    SELECT count(*) AS n FROM jobs WHERE status = 'running' AND locked_by LIKE '%:' || $1 || ':%'
                    """, [Int(pid)])[0].int("n") ?? 0
                guard holding > 0 else { try await Task.sleep(for: .milliseconds(2)); continue }
                kill(pid, SIGSTOP)
                held = try await database.query("""
                    SELECT count(*) AS n FROM jobs WHERE status = 'running' AND locked_by LIKE '%:' || $1 || ':%'
                    """, [Int(pid)])[0].int("n") ?? 0
                if held == 0 { kill(pid, SIGCONT) }
            }
            #expect(held > 0, "the victim never held a batch")
            kill(pid, SIGKILL)
            victim.waitUntilExit()

            // The survivor finishes everything, the victim's batch after its lease ran out.
            let finish = ContinuousClock.now + .seconds(60)
            var done = 0
            while done < 10_000, ContinuousClock.now < finish {
                try await Task.sleep(for: .milliseconds(200))
                done = try await database.query("SELECT count(*) AS n FROM jobs WHERE kind = 'loyalty.mature' AND status = 'done'")[0]
                    .int("n") ?? 0
            }
            #expect(done == 10_000)
            let attempts = try await database.query("""
                SELECT attempts, count(*) AS n FROM jobs WHERE kind = 'loyalty.mature' GROUP BY attempts ORDER BY attempts
                """).map { ($0.int("attempts") ?? 0, $0.int("n") ?? 0) }
            // Every job was claimed once, except the batch the victim held: claimed once more after its lease.
            #expect(attempts.map(\.0) == [1, 2])
            #expect(attempts.last?.1 == held)
            // Exactly one maturation per entry, and balances that add up: 100 grants of 3p 1g per member.
            #expect(try await database.query("SELECT count(*) AS n FROM ledger WHERE kind = 'matured'")[0].int("n") == 10_000)
            let balances = try await database.query("""
                SELECT count(*) AS n FROM members WHERE points = 300 AND growth = 100 AND pending_points = 0 AND pending_growth = 0
                """)[0].int("n")
            #expect(balances == 100)
            survivor.terminate()
            survivor.waitUntilExit()
            #expect(survivor.terminationStatus == 0, "the survivor stops cleanly on SIGTERM")
            _ = try? await Self.vhost(vhost, delete: true)
            try? FileManager.default.removeItem(at: logs)
        }
    }

    /// Runs `fanflow jobs …` against `databaseURL`; returns the exit status and what it printed.
    static func jobsCommand(_ arguments: [String], databaseURL: String) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = binary
        process.arguments = ["jobs"] + arguments
        var environment = ProcessInfo.processInfo.environment
        environment["FANFLOW_DATABASE_URL"] = databaseURL
        process.environment = environment
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: output, as: UTF8.self))
    }

    @Test("fanflow jobs list, show, retry and cancel, as an operator types them")
    func operatorCommands() async throws {
        guard FileManager.default.isExecutableFile(atPath: Self.binary.path) else {
            Issue.record("no fanflow binary at \(Self.binary.path): run through scripts/test, which builds it")
            return
        }
        try await ScratchDatabase.with { database, url in
            let store = JobStore(database: database)
            let kind = JobKind("test.cli")
            let waiting = try #require(try await store.enqueue(NewJob(kind: kind, dueAt: Date().addingTimeInterval(3600), uniqueKey: "cli-1")))
            let broken = try #require(try await store.enqueue(NewJob(kind: kind, payload: ["order": .string("A1")], dueAt: Date(), maxAttempts: 1)))
            let claimed = try await store.claim(owner: "test", kinds: [kind], limit: 10, lease: .seconds(30))
            try await store.record(claimed.map { ($0, JobOutcome.fail(error: "token expired: 40001")) }, owner: "test")

            var (status, output) = try Self.jobsCommand(["list", "--status", "failed"], databaseURL: url)
            #expect(status == 0)
            #expect(output.contains("\(broken)\tfailed\ttest.cli"))
            #expect(output.contains("token expired: 40001"))
            #expect(!output.contains("\(waiting)\t"))
            (status, output) = try Self.jobsCommand(["show", "\(broken)"], databaseURL: url)
            #expect(status == 0)
            #expect(output.contains(#""order" : "A1""#))
            #expect(output.contains(#""lastError" : "token expired: 40001""#))
            (status, _) = try Self.jobsCommand(["retry", "\(broken)"], databaseURL: url)
            #expect(status == 0)
            #expect(try await store.job(id: broken).map { ($0.status, $0.attempts) } ?? (.failed, 9) == (.scheduled, 0))
            (status, output) = try Self.jobsCommand(["retry", "\(waiting)"], databaseURL: url)
            #expect(status == 1)
            #expect(output.contains("is not failed or cancelled"))
            (status, _) = try Self.jobsCommand(["cancel", "--key", "cli-1"], databaseURL: url)
            #expect(status == 0)
            #expect(try await store.job(id: waiting)?.status == .cancelled)
            (status, output) = try Self.jobsCommand(["list", "--status", "sleeping"], databaseURL: url)
            #expect(status != 0)
            #expect(output.contains("--status must be one of"))
            (status, _) = try Self.jobsCommand(["show", "999999"], databaseURL: url)
            #expect(status == 1)
        }
    }
}
