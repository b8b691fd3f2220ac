import AMQPClient
import Contracts
import FlashSales
import Foundation
import Gateway
import Hummingbird
import HummingbirdTesting
import HTTPTypes
import Logging
import PostgresClient
import RedisClient
import Runtime
import Scheduler
import Synchronization
import Testing
import Workers

/// Flash sales over real HTTP, Redis, RabbitMQ and PostgreSQL: never oversold, never past a
/// member's limit, every reservation an order, unpaid ones back in stock exactly once.
@Suite("Flash sales")
struct FlashSaleTests {
    static let logger = Logger(label: "test.flashsale")
    static let tokens = MemberTokens(secret: GatewayHarness.adminToken)

    /// `count` fresh members and a token for each.
    static func members(_ count: Int, database: PostgresPool) async throws -> [(id: Int64, token: String)] {
        try await database.query("INSERT INTO members (level) SELECT '' FROM generate_series(1, $1) RETURNING id", [count])
            .compactMap { $0.int("id").map(Int64.init) }
            .map { ($0, tokens.mint(member: $0, expiresAt: Date().addingTimeInterval(3600))) }
    }

    static func sale(stock: Int, limit: Int, start: Date = Date().addingTimeInterval(-1), end: Date = Date().addingTimeInterval(3600),
                     timeout: Int = 600, audience: String? = nil) -> String {
        let tag = audience.map { #""\#($0)""# } ?? "null"
        return #"{"sku":"SKU-1","title":"Lucky bag","price":9900,"stock":\#(stock),"perMemberLimit":\#(limit),"startAt":"\#(RFC3339.format(start))","endAt":"\#(RFC3339.format(end))","paymentTimeoutSeconds":\#(timeout),"audienceTag":\#(tag)}"#
    }

    static func reserve(_ client: any TestClientProtocol, sale: String, token: String, requestID: String = UUID().uuidString,
                        quantity: Int = 1) async throws -> (HTTPResponse.Status, [String: Any]) {
        try await PointsAdminTests.call(client, .post, "/v1/flash-sales/\(sale)/reservations",
                                        #"{"quantity":\#(quantity),"requestId":"\#(requestID)"}"#,
                                        headers: [.authorization: "Bearer \(token)", .contentType: "application/json"])
    }

    static func code(_ json: [String: Any]) -> String? { SchedulerAdminTests.error(json, "code") }

    /// The orders pool on `fanflow.orders`, as `fanflow worker --pool orders=1` runs it.
    static func ordersPool(database: PostgresPool, redis: RedisPool) throws -> Task<Void, any Error> {
        var amqp = try AMQPConfiguration(url: TestEnvironment.amqpURL)
        amqp.connectionName = "test-orders"
        let consumer = ConsumerService(amqp: amqp, queue: .orders, prefetch: 200,
                                       handler: EnvelopeBatchHandler(OrdersPool(store: FlashSaleStore(database: database),
                                                                                stock: FlashSaleStock(redis: redis), logger: logger),
                                                                     logger: logger), logger: logger)
        return Task { try await consumer.run() }
    }

    static func waitFor(_ what: String, timeout: Duration = .seconds(30), _ condition: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while try await !condition() {
            guard ContinuousClock.now < deadline else { Issue.record("timed out waiting for \(what)"); return }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    static func count(_ database: PostgresPool, _ sql: String, _ parameters: [any PostgresEncodable]) async throws -> Int {
        try await database.query(sql, parameters).first?.int("n") ?? -1
    }

    @Test("stock 100, 2,000 members trying three times each at once: exactly 100 reservations, one per member, 100 orders")
    func noOversell() async throws {
        try await GatewayHarness.run { client, _, gateway in
            let database = PostgresPool(url: TestEnvironment.databaseURL, maximumConnections: 4)
            let redis = try await RedisPool(url: TestEnvironment.redisURL, size: 1)
            let id = TestEnvironment.unique("fs")
            var (status, json) = try await PointsAdminTests.call(client, .put, "/admin/v1/flash-sales/\(id)", Self.sale(stock: 100, limit: 1))
            #expect(status == .created)
            #expect((json["inventory"] as? [String: Any]).flatMap { $0["redis"] as? [String: Int] } ==
                    ["initial": 100, "remaining": 100, "reserved": 0, "paid": 0])
            let members = try await Self.members(2000, database: database)
            let pool = try Self.ordersPool(database: database, redis: redis)

            let outcomes = try await withThrowingTaskGroup(of: (Int64, HTTPResponse.Status, String?).self) { group in
                for member in members {
                    for _ in 0..<3 {
                        group.addTask {
                            let (status, json) = try await Self.reserve(client, sale: id, token: member.token)
                            return (member.id, status, status == .created ? json["reservationId"] as? String : Self.code(json))
                        }
                    }
                }
                var all: [(Int64, HTTPResponse.Status, String?)] = []
                for try await outcome in group { all.append(outcome) }
                return all
            }
            let won = outcomes.filter { $0.1 == .created }
            #expect(won.count == 100)
            #expect(Set(won.map(\.0)).count == 100, "a member got more than the limit")
            let refusals = Set(outcomes.filter { $0.1 != .created }.compactMap(\.2))
            #expect(refusals.isSubset(of: ["sold_out", "limit_reached"]), "\(refusals)")

            try await Self.waitFor("100 orders") {
                try await Self.count(database, "SELECT count(*) AS n FROM flash_orders WHERE sale_id = $1", [id]) >= 100
            }
            try await Task.sleep(for: .milliseconds(300))
            #expect(try await Self.count(database, "SELECT count(*) AS n FROM flash_orders WHERE sale_id = $1", [id]) == 100)
            #expect(try await Self.count(database, """
                SELECT count(*) AS n FROM (SELECT member_id FROM flash_orders WHERE sale_id = $1 GROUP BY member_id HAVING sum(quantity) > 1) t
                """, [id]) == 0)
            #expect(try await Self.count(database, "SELECT count(*) AS n FROM jobs WHERE kind = 'flashsale.expire' AND payload->>'saleId' = $1",
                                         [id]) == 100)
            (status, json) = try await PointsAdminTests.call(client, .get, "/admin/v1/flash-sales/\(id)")
            let inventory = json["inventory"] as? [String: [String: Int]]
            #expect(inventory?["postgres"] == ["initial": 100, "remaining": 0, "reserved": 100, "paid": 0])
            #expect(inventory?["redis"] == ["initial": 100, "remaining": 0, "reserved": 100, "paid": 0])
            // Less stock than is already reserved is refused.
            (status, json) = try await PointsAdminTests.call(client, .put, "/admin/v1/flash-sales/\(id)", Self.sale(stock: 50, limit: 1))
            #expect((status, Self.code(json)) == (.conflict, "stock_below_held"))

            pool.cancel()
            _ = await pool.result
            try await database.query("DELETE FROM jobs WHERE kind = 'flashsale.expire' AND payload->>'saleId' = $1", [id])
            await redis.close()
            await database.close()
            _ = gateway
        }
    }

    @Test("a retried requestId gets the same reservation; unpaid reservations expire at their pay-by time and return to stock and to the limit, once")
    func expiry() async throws {
        try await GatewayHarness.run { client, _, _ in
            let database = PostgresPool(url: TestEnvironment.databaseURL, maximumConnections: 4)
            let redis = try await RedisPool(url: TestEnvironment.redisURL, size: 1)
            let id = TestEnvironment.unique("fs")
            var (status, _) = try await PointsAdminTests.call(client, .put, "/admin/v1/flash-sales/\(id)",
                                                              Self.sale(stock: 5, limit: 2, timeout: 1))
            #expect(status == .created)
            let members = try await Self.members(2, database: database)
            let (a, b) = (members[0], members[1])
            let pool = try Self.ordersPool(database: database, redis: redis)

            var json: [String: Any]
            (status, json) = try await Self.reserve(client, sale: id, token: a.token, requestID: "retry-me-1")
            #expect(status == .created)
            let first = try #require(json["reservationId"] as? String)
            (status, json) = try await Self.reserve(client, sale: id, token: a.token, requestID: "retry-me-1")
            #expect((status, json["reservationId"] as? String) == (.created, first))
            (status, _) = try await Self.reserve(client, sale: id, token: a.token)
            #expect(status == .created)
            (status, json) = try await Self.reserve(client, sale: id, token: a.token)
            #expect((status, Self.code(json)) == (.conflict, "limit_reached"))
            (status, _) = try await Self.reserve(client, sale: id, token: b.token, quantity: 2)
            #expect(status == .created)
            let stock = FlashSaleStock(redis: redis)
            #expect(try await stock.inventory(sale: id) == Inventory(initial: 5, remaining: 1, reserved: 4, paid: 0))

            // The scheduler publishes each expiry at its pay-by time; the orders pool expires the order and returns its units.
            var amqp = try AMQPConfiguration(url: TestEnvironment.amqpURL)
            amqp.connectionName = "test-scheduler"
            let broker = ManagedAMQPConnection(configuration: amqp, logger: Self.logger) { try await $0.enableConfirms() }
            try await broker.start()
            let runner = JobRunner(store: JobStore(database: database), handlers: [FlashSaleStore.expireJob: PublishJobHandler(broker: broker)],
                                   logger: Self.logger)
            try await Self.waitFor("3 expired orders") {
                try await runner.runOnce()
                return try await Self.count(database, "SELECT count(*) AS n FROM flash_orders WHERE sale_id = $1 AND status = 'expired'",
                                            [id]) == 3
            }
            try await Self.waitFor("units back in Redis") { try await stock.inventory(sale: id)?.remaining == 5 }
            #expect(try await stock.inventory(sale: id) == Inventory(initial: 5, remaining: 5, reserved: 0, paid: 0))
            // Releasing again (a redelivered expiry) returns nothing twice.
            #expect(try await !stock.release(sale: id, member: a.id, reservationID: first, quantity: 1))
            #expect(try await stock.inventory(sale: id)?.remaining == 5)
            // A's limit is free again.
            (status, _) = try await Self.reserve(client, sale: id, token: a.token, quantity: 2)
            #expect(status == .created)
            #expect(try await FlashSaleStore(database: database).inventory(id)?.balances == true)

            pool.cancel()
            _ = await pool.result
            await broker.close()
            try await database.query("DELETE FROM jobs WHERE kind = 'flashsale.expire' AND payload->>'saleId' = $1", [id])
            await redis.close()
            await database.close()
        }
    }

    @Test("refusals: not started, ended, not eligible, bad quantity or request id, no token, unknown sale, too fast; bad campaigns")
    func refusals() async throws {
        try await GatewayHarness.run(["FANFLOW_FLASHSALE_RATE_PER_MEMBER": "3"]) { client, _, _ in
            let database = PostgresPool(url: TestEnvironment.databaseURL, maximumConnections: 2)
            let members = try await Self.members(2, database: database)
            let tagged = members[0], untagged = members[1]
            let tag = TestEnvironment.unique("vip")
            try await database.query("INSERT INTO member_tags (member_id, tag) VALUES ($1, $2)", [tagged.id, tag])
            func put(_ id: String, _ body: String) async throws -> (HTTPResponse.Status, [String: Any]) {
                try await PointsAdminTests.call(client, .put, "/admin/v1/flash-sales/\(id)", body)
            }
            let later = TestEnvironment.unique("fs"), over = TestEnvironment.unique("fs"), vip = TestEnvironment.unique("fs")
            let empty = TestEnvironment.unique("fs")
            _ = try await put(later, Self.sale(stock: 5, limit: 1, start: Date().addingTimeInterval(3600), end: Date().addingTimeInterval(7200)))
            _ = try await put(over, Self.sale(stock: 5, limit: 1, start: Date().addingTimeInterval(-7200), end: Date().addingTimeInterval(-3600)))
            _ = try await put(vip, Self.sale(stock: 5, limit: 1, audience: tag))
            _ = try await put(empty, Self.sale(stock: 0, limit: 1))

            var (status, json) = try await Self.reserve(client, sale: later, token: tagged.token)
            #expect((status, Self.code(json)) == (.forbidden, "not_started"))
            (status, json) = try await Self.reserve(client, sale: over, token: tagged.token)
            #expect((status, Self.code(json)) == (.forbidden, "ended"))
            (status, json) = try await Self.reserve(client, sale: vip, token: untagged.token)
            #expect((status, Self.code(json)) == (.forbidden, "not_eligible"))
            (status, json) = try await Self.reserve(client, sale: vip, token: tagged.token, quantity: 2)
            #expect((status, Self.code(json)) == (.badRequest, "invalid_quantity"))
            (status, json) = try await Self.reserve(client, sale: vip, token: tagged.token, requestID: "short")
            #expect((status, Self.code(json)) == (.badRequest, "invalid_request_id"))
            (status, _) = try await Self.reserve(client, sale: vip, token: "m1.1.1.forged")
            #expect(status == .unauthorized)
            (status, json) = try await Self.reserve(client, sale: TestEnvironment.unique("nosuch"), token: tagged.token)
            #expect((status, Self.code(json)) == (.notFound, "unknown_flash_sale"))
            (status, json) = try await Self.reserve(client, sale: vip, token: tagged.token)
            #expect(status == .created)
            // Three attempts a second per member: the fourth is refused before it touches the stock.
            for _ in 0..<2 {
                (status, json) = try await Self.reserve(client, sale: empty, token: untagged.token)
                #expect((status, Self.code(json)) == (.conflict, "sold_out"))
            }
            (status, json) = try await Self.reserve(client, sale: empty, token: untagged.token)
            #expect(status == .conflict)
            (status, json) = try await Self.reserve(client, sale: empty, token: untagged.token)
            #expect((status, Self.code(json)) == (.tooManyRequests, "rate_limited"))

            let id = TestEnvironment.unique("fs")
            (status, json) = try await put(id, Self.sale(stock: 5, limit: 1, start: Date(), end: Date().addingTimeInterval(-60)))
            #expect((status, Self.code(json)) == (.badRequest, "invalid_flash_sale"))
            (status, json) = try await put(id, #"{"sku":"x"}"#)
            #expect((status, Self.code(json)) == (.badRequest, "invalid_flash_sale"))
            (status, json) = try await put(id, Self.sale(stock: 5, limit: 1).replacingOccurrences(of: "\"price\"", with: "\"prise\""))
            #expect(SchedulerAdminTests.error(json, "message") == "unknown field prise")
            (status, json) = try await PointsAdminTests.call(client, .get, "/admin/v1/flash-sales/\(id)")
            #expect((status, Self.code(json)) == (.notFound, "unknown_flash_sale"))
            try await database.query("DELETE FROM member_tags WHERE tag = $1", [tag])
            await database.close()
        }
    }
}
