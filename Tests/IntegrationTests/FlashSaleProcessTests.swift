import Contracts
import FlashSales
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import PostgresClient
import RedisClient
import Synchronization
import Testing

/// Flash sales with real `fanflow` processes killed by the operating system (SIGKILL) mid-sale:
/// no reservation a member was told about is lost, no order is made twice, and nothing is sold
/// beyond the stock once the books are reconciled.
@Suite("Flash-sale processes")
struct FlashSaleProcessTests {
    static func start(_ arguments: [String], environment extra: [String: String] = [:], log: String) throws -> Process {
        let process = Process()
        process.executableURL = SchedulerProcessTests.binary
        process.arguments = arguments
        var environment = ProcessInfo.processInfo.environment
        environment["FANFLOW_AMQP_URL"] = TestEnvironment.amqpURL
        environment["FANFLOW_REDIS_URL"] = TestEnvironment.redisURL
        environment["FANFLOW_DATABASE_URL"] = TestEnvironment.databaseURL
        environment["FANFLOW_ADMIN_TOKEN"] = GatewayHarness.adminToken
        environment["FANFLOW_SECRET_KEY"] = GatewayHarness.secretKey
        environment["FANFLOW_LOG_LEVEL"] = "warning"
        environment["FANFLOW_SCHEDULER_PORT"] = "0"
        environment.merge(extra) { $1 }
        process.environment = environment
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("\(log)-\(UUID().uuidString.prefix(8)).log").path
        FileManager.default.createFile(atPath: path, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        return process
    }

    final class Answered: Sendable { let count = Atomic<Int>(0) }

    static func kill(_ process: Process) {
        Foundation.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    static func stop(_ process: Process) {
        guard process.isRunning else { return }
        process.terminate()
        process.waitUntilExit()
    }

    /// A `fanflow gateway` process on a free port, once it answers `/ready`.
    static func startGateway(log: String) async throws -> (Process, Int) {
        for _ in 0..<5 {
            let port = Int.random(in: 30_000...39_999)
            let process = try start(["gateway"], environment: ["FANFLOW_HTTP_PORT": String(port), "FANFLOW_HTTP_HOST": "127.0.0.1",
                                                               "FANFLOW_FLASHSALE_RATE_PER_MEMBER": "0"], log: log)
            for _ in 0..<100 where process.isRunning {
                if (try? await request(port: port, .get, "/ready").0) == .ok { return (process, port) }
                try await Task.sleep(for: .milliseconds(100))
            }
            stop(process)
        }
        throw CancellationError()
    }

    /// One request on a connection of its own.
    static func request(port: Int, _ method: HTTPRequest.Method, _ path: String, body: String = "", headers: HTTPFields = [:]) async throws
        -> (HTTPResponse.Status, [String: Any]) {
        try await TestClient.withClient(host: "127.0.0.1", port: port, configuration: .init(timeout: .seconds(10))) { client in
            try await send(client, method, path, body: body, headers: headers)
        }
    }

    static func send(_ client: TestClient, _ method: HTTPRequest.Method, _ path: String, body: String = "", headers: HTTPFields = [:]) async throws
        -> (HTTPResponse.Status, [String: Any]) {
        let response = try await client.execute(TestClient.Request(path, method: method, headers: headers, body: ByteBuffer(string: body)))
        let json = (try? JSONSerialization.jsonObject(with: Data(buffer: response.body ?? ByteBuffer()))) as? [String: Any] ?? [:]
        return (response.status, json)
    }

    static func orders(_ database: PostgresPool, sale: String) async throws -> Int {
        try await FlashSaleTests.count(database, "SELECT count(*) AS n FROM flash_orders WHERE sale_id = $1", [sale])
    }

    @Test("an orders worker SIGKILLed mid-drain, as the queue's only consumer, and started again: each of 600 reservations is one order and one expiry job")
    func workerKilled() async throws {
        guard FileManager.default.isExecutableFile(atPath: SchedulerProcessTests.binary.path) else {
            Issue.record("no fanflow binary at \(SchedulerProcessTests.binary.path): build it first"); return
        }
        let total = 600
        try await FlashSaleTests.withServers { client, database, _ in
            let id = TestEnvironment.unique("fs")
            _ = try await PointsAdminTests.call(client, .put, "/admin/v1/flash-sales/\(id)", FlashSaleTests.sale(stock: total, limit: 1))
            let members = try await FlashSaleTests.members(total, database: database)
            // No in-process orders pool consumes meanwhile, from the first reservation on: the orders
            // made before the kill are the first worker's (another test's pool drained all 600 while
            // they were being reserved, in a full-suite run).
            let (killedAt, made) = try await OrdersQueueTurns.shared.exclusively {
                // Over 32 connections of their own: 600 requests queued on the one shared connection
                // passed the client's read timeout in a full-suite run on two busy cores.
                let outcomes = try await FlashSaleTests.reserveAll(client, sale: id, members: members, tries: 1)
                #expect(outcomes.count == total && outcomes.allSatisfy { $0.1 == .created })
                // Small batches: the drain takes many transactions, so the kill lands between them.
                let first = try Self.start(["worker", "--pool", "orders=1", "--prefetch", "5"], log: "orders-worker-1")
                let deadline = ContinuousClock.now + .seconds(30)
                while try await Self.orders(database, sale: id) == 0, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
                Self.kill(first)
                let killedAt = try await Self.orders(database, sale: id)
                let second = try Self.start(["worker", "--pool", "orders=1"], log: "orders-worker-2")
                try await FlashSaleTests.waitFor("every order", timeout: .seconds(60)) { try await Self.orders(database, sale: id) >= total }
                try await Task.sleep(for: .milliseconds(500))
                Self.stop(second)
                return (killedAt, try await Self.orders(database, sale: id))
            }
            FlashSaleTests.logger.notice("orders worker killed", metadata: ["ordersByThen": "\(killedAt)", "of": "\(total)"])
            #expect(killedAt > 0 && killedAt < total, "the kill did not land mid-drain: \(killedAt) orders by then")
            #expect(made == total)
            #expect(try await FlashSaleTests.count(database, """
                SELECT count(*) AS n FROM jobs WHERE kind = 'flashsale.expire' AND payload->>'saleId' = $1
                """, [id]) == total)
            try await database.query("DELETE FROM jobs WHERE kind IN ('flashsale.expire', 'push.flashsale_reminder') AND payload->>'saleId' = $1", [id])
        }
    }

    @Test("a gateway SIGKILLed mid-sale: every 201 has its order, none beyond the stock; after reconcile --repair a new gateway sells exactly the rest")
    func gatewayKilled() async throws {
        guard FileManager.default.isExecutableFile(atPath: SchedulerProcessTests.binary.path) else {
            Issue.record("no fanflow binary at \(SchedulerProcessTests.binary.path): build it first"); return
        }
        try await FlashSaleTests.withServers { _, database, redis in
            let store = FlashSaleStore(database: database), stock = FlashSaleStock(redis: redis)
            let id = TestEnvironment.unique("fs"), stockSize = 150
            let members = try await FlashSaleTests.members(400, database: database)
            let pool = try FlashSaleTests.ordersPool(database: database, redis: redis)
            let (gateway, port) = try await Self.startGateway(log: "gateway-killed")
            let admin: HTTPFields = [.authorization: "Bearer \(GatewayHarness.adminToken)", .contentType: "application/json"]
            #expect(try await Self.request(port: port, .put, "/admin/v1/flash-sales/\(id)",
                                           body: FlashSaleTests.sale(stock: stockSize, limit: 1), headers: admin).0 == .created)

            // 16 connections reserve for the first 300 members; the gateway is killed once 60 have an answer.
            let answered = Answered()
            let outcomes = try await withThrowingTaskGroup(of: [(Int64, String)].self) { group in
                for lane in 0..<16 {
                    group.addTask {
                        var won: [(Int64, String)] = []
                        let client = TestClient(host: "127.0.0.1", port: port, configuration: .init(timeout: .seconds(5)))
                        client.connect()
                        for member in members.prefix(300).enumerated().filter({ $0.offset % 16 == lane }).map(\.element) {
                            let headers: HTTPFields = [.authorization: "Bearer \(member.token)", .contentType: "application/json"]
                            guard let (status, json) = try? await Self.send(client, .post, "/v1/flash-sales/\(id)/reservations",
                                                                            body: #"{"quantity":1,"requestId":"\#(UUID().uuidString)"}"#,
                                                                            headers: headers) else { break }
                            if status == .created, let reservation = json["reservationId"] as? String { won.append((member.id, reservation)) }
                            answered.count.add(1, ordering: .relaxed)
                        }
                        try? await client.shutdown()
                        return won
                    }
                }
                group.addTask {
                    while answered.count.load(ordering: .relaxed) < 60 { try await Task.sleep(for: .milliseconds(5)) }
                    Self.kill(gateway)
                    return []
                }
                var all: [(Int64, String)] = []
                for try await won in group { all += won }
                return all
            }
            #expect(!outcomes.isEmpty)
            #expect(outcomes.count < 300, "the gateway was killed after every member had an answer")

            // Every reservation a member was told about becomes an order, and nothing more than the stock.
            try await FlashSaleTests.waitFor("the told reservations' orders") {
                let ids = PostgresArray(outcomes.map(\.1))
                return try await FlashSaleTests.count(database, "SELECT count(*) AS n FROM flash_orders WHERE reservation_id = ANY($1::text[])",
                                                      [ids]) == outcomes.count
            }
            try await Task.sleep(for: .milliseconds(500))
            let ordered = try await Self.orders(database, sale: id)
            #expect(ordered >= outcomes.count && ordered <= stockSize)
            #expect(try await FlashSaleTests.count(database, """
                SELECT count(*) AS n FROM (SELECT member_id FROM flash_orders WHERE sale_id = $1 GROUP BY member_id HAVING count(*) > 1) t
                """, [id]) == 0)

            // Units held for reservations the dead gateway never published go back; the books agree.
            let report = try await Reconciler(store: store, stock: stock).reconcile(id, repair: true)
            #expect(report.agree)
            #expect(try await stock.inventory(sale: id, slots: 1) == Inventory(initial: Int64(stockSize), remaining: Int64(stockSize - ordered),
                                                                                  reserved: Int64(ordered), paid: 0))

            // A new gateway sells exactly what is left to the members who have nothing yet.
            let (replacement, newPort) = try await Self.startGateway(log: "gateway-replacement")
            let ordering = Set(try await store.orders(sale: id).map(\.member))
            let waiting = members.filter { !ordering.contains($0.id) }
            let more = try await withThrowingTaskGroup(of: Int.self) { group in
                for lane in 0..<8 {
                    group.addTask {
                        try await TestClient.withClient(host: "127.0.0.1", port: newPort) { client in
                            var wins = 0
                            for member in waiting.enumerated().filter({ $0.offset % 8 == lane }).map(\.element) {
                                let headers: HTTPFields = [.authorization: "Bearer \(member.token)", .contentType: "application/json"]
                                let (status, _) = try await Self.send(client, .post, "/v1/flash-sales/\(id)/reservations",
                                                                      body: #"{"quantity":1,"requestId":"\#(UUID().uuidString)"}"#,
                                                                      headers: headers)
                                if status == .created { wins += 1 }
                            }
                            return wins
                        }
                    }
                }
                return try await group.reduce(0, +)
            }
            Self.stop(replacement)
            #expect(more == stockSize - ordered)
            try await FlashSaleTests.waitFor("every unit an order") { try await Self.orders(database, sale: id) >= stockSize }
            try await Task.sleep(for: .milliseconds(300))
            #expect(try await Self.orders(database, sale: id) == stockSize)
            pool.cancel()
            _ = await pool.result
            try await database.query("DELETE FROM jobs WHERE kind IN ('flashsale.expire', 'push.flashsale_reminder') AND payload->>'saleId' = $1", [id])
        }
    }
}
