import AMQPClient
import Contracts
import Crypto
import FlashSales
import Foundation
import Gateway
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Jobs
import Logging
import Loyalty
import Members
import Platforms
import PostgresClient
import RedisClient
import Runtime
import Scheduler
import Synchronization
import Testing
import Workers
import _CryptoExtras

/// Flash sales over real HTTP, Redis, RabbitMQ and PostgreSQL: never oversold, never past a
/// member's limit, every reservation an order, unpaid ones back in stock exactly once.
@Suite("Flash sales")
struct FlashSaleTests {
    static let logger = Logger(label: "test.flashsale")
    static let tokens = GatewayHarness.memberTokens

    /// `count` fresh members (WeChat openids of an app of the test's own) and a token for each.
    static func members(_ count: Int, database: PostgresPool) async throws -> [(id: Int64, token: String)] {
        let app = TestEnvironment.unique("wx")
        let identities = (0..<count).map { Identity(platform: .wechat, app: app, openid: "fan\($0)") }
        let ids = try await MemberDirectory(database: database).resolve(Dictionary(uniqueKeysWithValues: identities.map { ($0, String?.none) }))
        return identities.compactMap { ids[$0] }.map { ($0, tokens.mint(member: $0, expiresAt: Date().addingTimeInterval(3600))) }
    }

    static func sale(stock: Int, limit: Int, start: Date = Date().addingTimeInterval(-1), end: Date = Date().addingTimeInterval(3600),
                     timeout: Int = 600, audience: String? = nil, slots: Int? = nil) -> String {
        let tag = audience.map { #""\#($0)""# } ?? "null"
        let striped = slots.map { #","stockSlots":\#($0)"# } ?? ""
        return #"{"sku":"SKU-1","title":"Lucky bag","price":9900,"stock":\#(stock),"perMemberLimit":\#(limit),"startAt":"\#(RFC3339.format(start))","endAt":"\#(RFC3339.format(end))","paymentTimeoutSeconds":\#(timeout),"audienceTag":\#(tag)\#(striped)}"#
    }

    static func reserve(_ client: any TestClientProtocol, sale: String, token: String, requestID: String = UUID().uuidString,
                        quantity: Int = 1) async throws -> (HTTPResponse.Status, [String: Any]) {
        try await PointsAdminTests.call(client, .post, "/v1/flash-sales/\(sale)/reservations",
                                        #"{"quantity":\#(quantity),"requestId":"\#(requestID)"}"#,
                                        headers: [.authorization: "Bearer \(token)", .contentType: "application/json"])
    }

    /// Every member reserving `tries` times, all at once over 32 connections of their own (one
    /// shared connection would queue thousands of requests behind each other past the client's read
    /// timeout on a loaded machine): (member, status, reservation id or refusal code).
    static func reserveAll(_ client: any TestClientProtocol, sale: String, members: [(id: Int64, token: String)],
                           tries: Int) async throws -> [(Int64, HTTPResponse.Status, String?)] {
        let port = try #require(client.port)
        let attempts = members.flatMap { member in Array(repeating: member, count: tries) }.shuffled()
        return try await withThrowingTaskGroup(of: [(Int64, HTTPResponse.Status, String?)].self) { group in
            for lane in 0..<32 {
                let mine = attempts.enumerated().filter { $0.offset % 32 == lane }.map(\.element)
                group.addTask {
                    try await TestClient.withClient(host: "127.0.0.1", port: port, configuration: .init(timeout: .seconds(30))) { connection in
                        var outcomes: [(Int64, HTTPResponse.Status, String?)] = []
                        for member in mine {
                            let (status, json) = try await FlashSaleProcessTests.send(
                                connection, .post, "/v1/flash-sales/\(sale)/reservations",
                                body: #"{"quantity":1,"requestId":"\#(UUID().uuidString)"}"#,
                                headers: [.authorization: "Bearer \(member.token)", .contentType: "application/json"])
                            outcomes.append((member.id, status, status == .created ? json["reservationId"] as? String : code(json)))
                        }
                        return outcomes
                    }
                }
            }
            return try await group.reduce(into: []) { $0 += $1 }
        }
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
        return Task {
            await OrdersQueueTurns.shared.enterShared()
            do { try await consumer.run() } catch {
                await OrdersQueueTurns.shared.leaveShared()
                throw error
            }
            await OrdersQueueTurns.shared.leaveShared()
        }
    }

    /// The orders worker's job runner for `kind`, as `fanflow worker --pool orders` runs it.
    static func ordersJobs(database: PostgresPool, redis: RedisPool, kind: JobKind) -> JobRunner {
        let service = FlashSaleService(store: FlashSaleStore(database: database), stock: FlashSaleStock(redis: redis), logger: logger)
        return JobRunner(store: JobStore(database: database), handlers: service.jobHandlers.filter { $0.key == kind }, logger: logger)
    }

    /// A live gateway with the test's own connections to PostgreSQL and Redis, closed afterwards.
    static func withServers(_ overrides: [String: String] = [:],
                            _ body: @Sendable (any TestClientProtocol, PostgresPool, RedisPool) async throws -> Void) async throws {
        let database = PostgresPool(url: TestEnvironment.databaseURL, maximumConnections: 4)
        let redis = try await RedisPool(url: TestEnvironment.redisURL, size: 1)
        do {
            try await GatewayHarness.run(overrides) { client, _, _ in try await body(client, database, redis) }
        } catch {
            await redis.close()
            await database.close()
            throw error
        }
        await redis.close()
        await database.close()
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

    @Test("stock 100, 2,000 members trying twice each at once: exactly 100 reservations, one per member, 100 orders")
    func noOversell() async throws {
        try await Self.withServers { client, database, redis in
            let id = TestEnvironment.unique("fs")
            var (status, json) = try await PointsAdminTests.call(client, .put, "/admin/v1/flash-sales/\(id)", Self.sale(stock: 100, limit: 1))
            #expect(status == .created)
            #expect((json["inventory"] as? [String: Any]).flatMap { $0["redis"] as? [String: Int] } ==
                    ["initial": 100, "remaining": 100, "reserved": 0, "paid": 0])
            let members = try await Self.members(2000, database: database)
            let pool = try Self.ordersPool(database: database, redis: redis)

            let outcomes = try await Self.reserveAll(client, sale: id, members: members, tries: 2)
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
            try await database.query("DELETE FROM jobs WHERE kind IN ('flashsale.expire', 'push.flashsale_reminder') AND payload->>'saleId' = $1", [id])
        }
    }

    @Test("a retried requestId gets the same reservation; unpaid reservations expire at their pay-by time and return to stock and to the limit, once")
    func expiry() async throws {
        try await Self.withServers { client, database, redis in
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
            #expect(try await stock.inventory(sale: id, slots: 1) == Inventory(initial: 5, remaining: 1, reserved: 4, paid: 0))

            // The orders worker runs each expiry at its pay-by time: the order expires and its units return.
            let runner = Self.ordersJobs(database: database, redis: redis, kind: FlashSaleStore.expireJob)
            try await Self.waitFor("3 expired orders") {
                try await runner.runOnce()
                return try await Self.count(database, "SELECT count(*) AS n FROM flash_orders WHERE sale_id = $1 AND status = 'expired'",
                                            [id]) == 3
            }
            try await Self.waitFor("units back in Redis") { try await stock.inventory(sale: id, slots: 1)?.remaining == 5 }
            #expect(try await stock.inventory(sale: id, slots: 1) == Inventory(initial: 5, remaining: 5, reserved: 0, paid: 0))
            // Releasing again (a redelivered expiry) returns nothing twice.
            #expect(try await !stock.release(sale: id, slots: 1, member: a.id, reservationID: first, quantity: 1))
            #expect(try await stock.inventory(sale: id, slots: 1)?.remaining == 5)
            // A's limit is free again.
            (status, _) = try await Self.reserve(client, sale: id, token: a.token, quantity: 2)
            #expect(status == .created)
            #expect(try await FlashSaleStore(database: database).inventory(id)?.balances == true)

            pool.cancel()
            _ = await pool.result
            try await database.query("DELETE FROM jobs WHERE kind IN ('flashsale.expire', 'push.flashsale_reminder') AND payload->>'saleId' = $1", [id])
        }
    }

    @Test("refusals: not started, ended, not eligible, bad quantity or request id, no token, unknown sale, too fast; bad campaigns")
    func refusals() async throws {
        try await Self.withServers(["FANFLOW_FLASHSALE_RATE_PER_MEMBER": "3"]) { client, database, redis in
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
            // Three attempts a second per member: ten at once, and those past three are refused
            // before they touch the stock.
            let burst = try await withThrowingTaskGroup(of: String?.self) { group in
                for _ in 0..<10 { group.addTask { Self.code(try await Self.reserve(client, sale: empty, token: untagged.token).1) } }
                var codes: [String?] = []
                for try await code in group { codes.append(code) }
                return codes
            }
            #expect(burst.filter { $0 == "rate_limited" }.count >= 1, "\(burst)")
            #expect(burst.allSatisfy { $0 == "rate_limited" || $0 == "sold_out" }, "\(burst)")
            #expect(burst.filter { $0 == "sold_out" }.count >= 3)

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
        }
    }

    /// WeChat Pay as the merchant documentation describes its API v3 notification: the transaction
    /// sealed with AES-256-GCM under the API v3 key, the body signed with the platform key.
    static func wechatPayNotification(reservation: String, mchid: String, total: Int64, paidAt: Date, apiV3Key: String,
                                      platformKey: _RSA.Signing.PrivateKey) throws -> (body: String, headers: HTTPFields) {
        let transaction = #"{"mchid":"\#(mchid)","appid":"wx-test","out_trade_no":"\#(reservation)","transaction_id":"42000\#(Int.random(in: 100_000...999_999))","trade_type":"JSAPI","trade_state":"SUCCESS","success_time":"\#(RFC3339.format(paidAt))","amount":{"total":\#(total),"payer_total":\#(total),"currency":"CNY"}}"#
        let sealNonce = String(UUID().uuidString.prefix(12))
        let ciphertext = try WeChatPayCrypto.seal(Array(transaction.utf8), apiV3Key: apiV3Key, nonce: sealNonce, associatedData: "transaction")
        let body = #"{"id":"EV-\#(UUID().uuidString)","create_time":"\#(RFC3339.format(Date()))","resource_type":"encrypt-resource","event_type":"TRANSACTION.SUCCESS","summary":"支付成功","resource":{"original_type":"transaction","algorithm":"AEAD_AES_256_GCM","ciphertext":"\#(ciphertext)","associated_data":"transaction","nonce":"\#(sealNonce)"}}"#
        let timestamp = String(Int(Date().timeIntervalSince1970)), nonce = UUID().uuidString
        let signature = try platformKey.signature(for: SHA256.hash(data: WeChatPayCrypto.signedMessage(timestamp: timestamp, nonce: nonce,
                                                                                                       body: Array(body.utf8))),
                                                  padding: .insecurePKCS1v1_5).rawRepresentation.base64EncodedString()
        return (body, [HTTPField.Name("Wechatpay-Timestamp")!: timestamp, HTTPField.Name("Wechatpay-Nonce")!: nonce,
                       HTTPField.Name("Wechatpay-Signature")!: signature, HTTPField.Name("Wechatpay-Serial")!: "TESTSERIAL",
                       .contentType: "application/json"])
    }

    /// Alipay's asynchronous trade notification: a form signed (RSA2) over every field but sign and sign_type.
    static func alipayNotification(app: String, reservation: String, totalAmount: String, alipayKey: _RSA.Signing.PrivateKey) throws -> String {
        var fields: [(String, String)] = [
            ("notify_time", "2026-12-02 10:00:05"), ("notify_type", "trade_status_sync"), ("notify_id", UUID().uuidString),
            ("app_id", app), ("charset", "utf-8"), ("version", "1.0"), ("trade_no", "2026120222001"), ("out_trade_no", reservation),
            ("trade_status", "TRADE_SUCCESS"), ("total_amount", totalAmount), ("gmt_payment", "2026-12-02 10:00:04"), ("subject", "福袋"),
        ]
        let content = AlipayCrypto.signedContent(fields.map { (name: $0.0, value: Array($0.1.utf8)) })
        let sign = try alipayKey.signature(for: SHA256.hash(data: content), padding: .insecurePKCS1v1_5).rawRepresentation.base64EncodedString()
        fields += [("sign_type", "RSA2"), ("sign", sign)]
        return fields.map { "\($0.0)=\($0.1.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? "")" }.joined(separator: "&")
    }

    @Test("payments: WeChat Pay v3 and Alipay notifications mark orders paid once; forged, wrong-amount and late payments are refused or flagged")
    func payments() async throws {
        try await Self.withServers { client, database, redis in
            let pool = try Self.ordersPool(database: database, redis: redis)
            let platformKey = try _RSA.Signing.PrivateKey(keySize: .bits2048)
            let alipayKey = try _RSA.Signing.PrivateKey(keySize: .bits2048), appKey = try _RSA.Signing.PrivateKey(keySize: .bits2048)
            let mchid = "19" + String(Int.random(in: 10_000_000...99_999_999)), apiV3Key = "0123456789abcdef0123456789ABCDEF"
            let alipayApp = TestEnvironment.unique("2021")
            try await GatewayHarness.register(client, "wechatpay", mchid, ["apiV3Key": apiV3Key, "platformPublicKey": platformKey.publicKey.pemRepresentation])
            try await GatewayHarness.register(client, "alipay", alipayApp, ["alipayPublicKey": alipayKey.publicKey.pemRepresentation,
                                                                            "appPrivateKey": appKey.pemRepresentation])
            let id = TestEnvironment.unique("fs"), late = TestEnvironment.unique("fs")
            _ = try await PointsAdminTests.call(client, .put, "/admin/v1/flash-sales/\(id)", Self.sale(stock: 3, limit: 1))
            _ = try await PointsAdminTests.call(client, .put, "/admin/v1/flash-sales/\(late)", Self.sale(stock: 1, limit: 1, timeout: 1))
            let members = try await Self.members(3, database: database)
            var reservations: [String] = []
            for member in members {
                let (status, json) = try await Self.reserve(client, sale: id, token: member.token)
                #expect(status == .created)
                reservations.append(try #require(json["reservationId"] as? String))
            }
            let (lateStatus, lateJSON) = try await Self.reserve(client, sale: late, token: members[0].token)
            #expect(lateStatus == .created)
            let lateReservation = try #require(lateJSON["reservationId"] as? String)
            try await Self.waitFor("orders") {
                try await Self.count(database, "SELECT count(*) AS n FROM flash_orders WHERE sale_id IN ($1, $2)", [id, late]) == 4
            }
            func notify(_ provider: String, _ body: String, _ headers: HTTPFields) async throws -> (HTTPResponse.Status, String) {
                try await client.execute(uri: "/v1/payments/notify/\(provider)", method: .post, headers: headers,
                                         body: ByteBuffer(string: body)) { ($0.status, String(buffer: $0.body)) }
            }
            // WeChat Pay pays the first, twice (a provider retry): paid once.
            var wechat = try Self.wechatPayNotification(reservation: reservations[0], mchid: mchid, total: 9900, paidAt: Date(),
                                                        apiV3Key: apiV3Key, platformKey: platformKey)
            #expect(try await notify("wechatpay", wechat.body, wechat.headers).0 == .noContent)
            #expect(try await notify("wechatpay", wechat.body, wechat.headers).0 == .noContent)
            // A forged signature, and an amount that is not the order's, are refused.
            var forged = wechat.headers
            forged[HTTPField.Name("Wechatpay-Signature")!] = Data(repeating: 7, count: 256).base64EncodedString()
            #expect(try await notify("wechatpay", wechat.body, forged).0 == .unauthorized)
            wechat = try Self.wechatPayNotification(reservation: reservations[1], mchid: mchid, total: 1, paidAt: Date(),
                                                    apiV3Key: apiV3Key, platformKey: platformKey)
            #expect(try await notify("wechatpay", wechat.body, wechat.headers).0 == .badRequest)
            // Alipay pays the second.
            let form = try Self.alipayNotification(app: alipayApp, reservation: reservations[1], totalAmount: "99.00", alipayKey: alipayKey)
            let formHeaders: HTTPFields = [.contentType: "application/x-www-form-urlencoded; charset=utf-8"]
            var (status, text) = try await notify("alipay", form, formHeaders)
            #expect((status, text) == (.ok, "success"))
            (status, text) = try await notify("alipay", form.replacingOccurrences(of: "99%2E00", with: "98%2E00"), formHeaders)
            #expect(status == .forbidden)
            // An order nobody made yet: the provider is told to retry.
            wechat = try Self.wechatPayNotification(reservation: "0000000000000000nosuchorder00000", mchid: mchid, total: 9900,
                                                    paidAt: Date(), apiV3Key: apiV3Key, platformKey: platformKey)
            #expect(try await notify("wechatpay", wechat.body, wechat.headers).0 == .notFound)

            let orders = try await database.query("SELECT reservation_id, status FROM flash_orders WHERE sale_id = $1", [id])
            let statuses = Dictionary(uniqueKeysWithValues: orders.compactMap { row in row.string("reservation_id").map { ($0, row.string("status") ?? "") } })
            #expect(statuses == [reservations[0]: "paid", reservations[1]: "paid", reservations[2]: "reserved"])
            let stock = FlashSaleStock(redis: redis)
            #expect(try await stock.inventory(sale: id, slots: 1) == Inventory(initial: 3, remaining: 0, reserved: 1, paid: 2))
            #expect(try await FlashSaleStore(database: database).inventory(id) == Inventory(initial: 3, remaining: 0, reserved: 1, paid: 2))

            // Paid after its pay-by time (before the expiry job ran): flagged for refund, and the unit goes back.
            try await Task.sleep(for: .milliseconds(1200))
            wechat = try Self.wechatPayNotification(reservation: lateReservation, mchid: mchid, total: 9900, paidAt: Date(),
                                                    apiV3Key: apiV3Key, platformKey: platformKey)
            #expect(try await notify("wechatpay", wechat.body, wechat.headers).0 == .noContent)
            #expect(try await database.query("SELECT status FROM flash_orders WHERE reservation_id = $1", [lateReservation]).first?
                .string("status") == "refund_required")
            #expect(try await stock.inventory(sale: late, slots: 1) == Inventory(initial: 1, remaining: 1, reserved: 0, paid: 0))
            #expect(try await FlashSaleStore(database: database).inventory(late) == Inventory(initial: 1, remaining: 1, reserved: 0, paid: 0))

            pool.cancel()
            _ = await pool.result
            try await database.query("DELETE FROM jobs WHERE kind IN ('flashsale.expire', 'push.flashsale_reminder') AND payload->>'saleId' IN ($1, $2)", [id, late])
        }
    }

    @Test("reconcile: a Redis that lost the sale is rebuilt from PostgreSQL, counters, limits and settled marks alike")
    func reconcile() async throws {
        try await Self.withServers { client, database, redis in
            let store = FlashSaleStore(database: database), stock = FlashSaleStock(redis: redis)
            let id = TestEnvironment.unique("fs")
            _ = try await PointsAdminTests.call(client, .put, "/admin/v1/flash-sales/\(id)", Self.sale(stock: 5, limit: 1))
            let members = try await Self.members(3, database: database)
            var reservations: [String] = []
            for member in members {
                let (status, json) = try await Self.reserve(client, sale: id, token: member.token)
                #expect(status == .created)
                reservations.append(try #require(json["reservationId"] as? String))
            }
            let pool = try Self.ordersPool(database: database, redis: redis)
            try await Self.waitFor("orders") { try await Self.count(database, "SELECT count(*) AS n FROM flash_orders WHERE sale_id = $1", [id]) == 3 }
            pool.cancel()
            _ = await pool.result
            // The first is paid, the second stays reserved, the third expires.
            guard case .paid(let paid) = try await store.pay(reservationID: reservations[0], amount: 9900, paidAt: Date(), reference: "t") else {
                Issue.record("not paid"); return
            }
            try await stock.markPaid(sale: id, slots: 1, member: paid.member, reservationID: paid.reservationID, quantity: 1)
            try await database.query("UPDATE flash_orders SET pay_by = now() - interval '1 second' WHERE reservation_id = $1", [reservations[2]])
            for order in try await store.expire([reservations[2]]) {
                try await stock.release(sale: id, slots: 1, member: order.member, reservationID: order.reservationID, quantity: order.quantity)
            }
            let books = Inventory(initial: 5, remaining: 3, reserved: 1, paid: 1)
            #expect(try await store.inventory(id) == books)
            #expect(try await stock.inventory(sale: id, slots: 1) == books)

            // Redis loses everything it held for the sale.
            let keys = try await redis.connection.command(["KEYS", "fanflow:{fs:\(id)}:*"]).array?.compactMap(\.string) ?? []
            #expect(keys.count >= 5)
            _ = try await redis.connection.command(["DEL"] + keys)
            #expect(try await stock.inventory(sale: id, slots: 1) == nil)

            // The operator's command rebuilds it (and says the books agree).
            let binary = SchedulerProcessTests.binary.path
            if FileManager.default.isExecutableFile(atPath: binary) {
                let process = Process()
                process.executableURL = URL(fileURLWithPath: binary)
                process.arguments = ["reconcile", "flash-sale", id]
                let pipe = Pipe()
                process.standardOutput = pipe
                try process.run()
                let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                process.waitUntilExit()
                #expect(process.terminationStatus == 0, "\(output)")
                #expect(output.contains(#""repaired" : true"#))
                #expect(output.contains(#""agree" : true"#))
            } else {
                #expect(try await Reconciler(store: store, stock: stock).reconcile(id, repair: false).agree)
            }
            #expect(try await stock.inventory(sale: id, slots: 1) == books)
            // A redelivered expiry or a retried payment still changes nothing, and limits still hold.
            #expect(try await !stock.release(sale: id, slots: 1, member: members[2].id, reservationID: reservations[2], quantity: 1))
            #expect(try await !stock.markPaid(sale: id, slots: 1, member: members[0].id, reservationID: reservations[0], quantity: 1))
            #expect(try await stock.reserve(sale: id, slots: 1, member: members[1].id, quantity: 1, requestID: "after-loss-1", ratePerSecond: 0)
                == .refused(.limitReached))
            #expect(try await stock.inventory(sale: id, slots: 1) == books)
            // Agreeing books need no repair.
            #expect(try await Reconciler(store: store, stock: stock).reconcile(id, repair: false).repaired == false)
            try await database.query("DELETE FROM jobs WHERE kind IN ('flashsale.expire', 'push.flashsale_reminder') AND payload->>'saleId' = $1", [id])
        }
    }

    @Test("the scheduler loads a campaign again a minute before it opens: a Redis loss and tags given since are covered; on demand too")
    func loadBeforeStart() async throws {
        try await Self.withServers { client, database, redis in
            let stock = FlashSaleStock(redis: redis)
            let id = TestEnvironment.unique("fs"), tag = TestEnvironment.unique("vip")
            let start = Date().addingTimeInterval(30)
            var (status, _) = try await PointsAdminTests.call(client, .put, "/admin/v1/flash-sales/\(id)",
                                                              Self.sale(stock: 7, limit: 1, start: start, audience: tag))
            #expect(status == .created)
            let jobs = try await JobStore(database: database).list(kind: FlashSaleStore.loadJob.rawValue, limit: 500)
                .filter { $0.payload["saleId"] == .string(id) }
            #expect(jobs.count == 1)
            #expect(jobs.first.map { $0.dueAt <= Date() } == true) // less than a minute ahead: due now
            // Redis loses the campaign, and a member is tagged after it was saved.
            let keys = try await redis.connection.command(["KEYS", "fanflow:{fs:\(id)}:*"]).array?.compactMap(\.string) ?? []
            _ = try await redis.connection.command(["DEL"] + keys)
            let member = try #require(try await Self.members(1, database: database).first)
            try await database.query("INSERT INTO member_tags (member_id, tag) VALUES ($1, $2)", [member.id, tag])

            let pool = try Self.ordersPool(database: database, redis: redis)
            let runner = Self.ordersJobs(database: database, redis: redis, kind: FlashSaleStore.loadJob)
            try await Self.waitFor("the campaign back in Redis") {
                try await runner.runOnce()
                return try await stock.inventory(sale: id, slots: 1) != nil
            }
            #expect(try await stock.inventory(sale: id, slots: 1) == Inventory(initial: 7, remaining: 7, reserved: 0, paid: 0))
            #expect(try await redis.connection.command(["SISMEMBER", "fanflow:{fs:\(id)}:audience", String(member.id)]).int == 1)
            // The tagged member may reserve once it opens.
            #expect(try await stock.reserve(sale: id, slots: 1, member: member.id, quantity: 1, requestID: "before-open", ratePerSecond: 0)
                == .refused(.notStarted))
            // On demand, through the admin API.
            _ = try await redis.connection.command(["DEL", "fanflow:{fs:\(id)}:sale"])
            var json: [String: Any]
            (status, json) = try await PointsAdminTests.call(client, .post, "/admin/v1/flash-sales/\(id)/load")
            #expect(status == .ok)
            #expect((json["inventory"] as? [String: [String: Int]])?["redis"] == ["initial": 7, "remaining": 7, "reserved": 0, "paid": 0])

            pool.cancel()
            _ = await pool.result
            try await database.query("DELETE FROM member_tags WHERE tag = $1", [tag])
        }
    }

    @Test("an orders pool stopped mid-drain and started again makes each order once; a reservation whose gateway died before publishing is returned by reconcile --repair")
    func crashes() async throws {
        try await Self.withServers { client, database, redis in
            let store = FlashSaleStore(database: database), stock = FlashSaleStock(redis: redis)
            let id = TestEnvironment.unique("fs")
            _ = try await PointsAdminTests.call(client, .put, "/admin/v1/flash-sales/\(id)", Self.sale(stock: 300, limit: 1))
            let members = try await Self.members(201, database: database)
            // 200 reservations queued while no orders pool runs.
            try await withThrowingTaskGroup(of: Void.self) { group in
                for member in members.dropLast() {
                    group.addTask {
                        let status = try await Self.reserve(client, sale: id, token: member.token).0
                        #expect(status == .created)
                    }
                }
                try await group.waitForAll()
            }
            // A pool stopped as soon as it wrote some orders (its unacked batch goes back to the queue), then another.
            let first = try Self.ordersPool(database: database, redis: redis)
            try await Self.waitFor("some orders") {
                try await Self.count(database, "SELECT count(*) AS n FROM flash_orders WHERE sale_id = $1", [id]) > 0
            }
            first.cancel()
            _ = await first.result
            let second = try Self.ordersPool(database: database, redis: redis)
            try await Self.waitFor("200 orders") {
                try await Self.count(database, "SELECT count(*) AS n FROM flash_orders WHERE sale_id = $1", [id]) >= 200
            }
            try await Task.sleep(for: .milliseconds(500))
            #expect(try await Self.count(database, "SELECT count(*) AS n FROM flash_orders WHERE sale_id = $1", [id]) == 200)
            #expect(try await Self.count(database, "SELECT count(*) AS n FROM jobs WHERE kind = 'flashsale.expire' AND payload->>'saleId' = $1",
                                         [id]) == 200)
            second.cancel()
            _ = await second.result

            // A gateway that died between the Lua call and the publish: Redis holds a unit no order has.
            let lost = try #require(members.last)
            guard case .reserved(_, .new) = try await stock.reserve(sale: id, slots: 1, member: lost.id, quantity: 1, requestID: "died-here",
                                                                 ratePerSecond: 0) else { Issue.record("not reserved"); return }
            #expect(try await stock.inventory(sale: id, slots: 1) == Inventory(initial: 300, remaining: 99, reserved: 201, paid: 0))
            let reconciler = Reconciler(store: store, stock: stock)
            let report = try await reconciler.reconcile(id, repair: false)
            #expect((report.repaired, report.agree) == (false, false))
            let repaired = try await reconciler.reconcile(id, repair: true)
            #expect((repaired.repaired, repaired.agree) == (true, true))
            #expect(try await stock.inventory(sale: id, slots: 1) == Inventory(initial: 300, remaining: 100, reserved: 200, paid: 0))
            // The member the dead gateway held a unit for may reserve again.
            #expect(try await Self.reserve(client, sale: id, token: lost.token).0 == .created)
            try await database.query("DELETE FROM jobs WHERE kind IN ('flashsale.expire', 'push.flashsale_reminder') AND payload->>'saleId' = $1", [id])
        }
    }

    @Test("striped stock: 100 units over 8 stripes, 1,000 members twice each at once: exactly 100, one per member; dry stripes borrow; stock changes, expiry and a lost stripe keep the sums")
    func stripedStock() async throws {
        try await Self.withServers { client, database, redis in
            let store = FlashSaleStore(database: database), stock = FlashSaleStock(redis: redis)
            let id = TestEnvironment.unique("fs")
            var (status, json) = try await PointsAdminTests.call(client, .put, "/admin/v1/flash-sales/\(id)",
                                                                 Self.sale(stock: 100, limit: 1, slots: 8))
            #expect(status == .created)
            #expect(json["stockSlots"] as? Int == 8)
            #expect(try await stock.stripeInventories(id, slots: 8).map { $0?.remaining } == [13, 13, 13, 13, 12, 12, 12, 12])
            let members = try await Self.members(1000, database: database)
            let outcomes = try await Self.reserveAll(client, sale: id, members: members, tries: 2)
            let won = outcomes.filter { $0.1 == .created }
            #expect(won.count == 100)
            #expect(Set(won.map(\.0)).count == 100, "a member got more than the limit")
            #expect(Set(outcomes.filter { $0.1 != .created }.compactMap(\.2)).isSubset(of: ["sold_out", "limit_reached"]))
            #expect(try await stock.inventory(sale: id, slots: 8) == Inventory(initial: 100, remaining: 0, reserved: 100, paid: 0))
            #expect(try await stock.stripeInventories(id, slots: 8).allSatisfy { $0.map { $0.balances && $0.remaining >= 0 } == true })

            // Members of one stripe only: they sell out the whole stock by borrowing from the other stripes.
            let narrow = TestEnvironment.unique("fs")
            (status, _) = try await PointsAdminTests.call(client, .put, "/admin/v1/flash-sales/\(narrow)",
                                                          Self.sale(stock: 40, limit: 1, slots: 4))
            #expect(status == .created)
            let homed = members.filter { FlashSaleStock.home(narrow, slots: 4, member: $0.id).index == 0 }.prefix(60)
            #expect(homed.count == 60)
            let narrowWins = try await withThrowingTaskGroup(of: Bool.self) { group in
                for member in homed { group.addTask { try await Self.reserve(client, sale: narrow, token: member.token).0 == .created } }
                var wins = 0
                for try await won in group where won { wins += 1 }
                return wins
            }
            #expect(narrowWins == 40)
            #expect(try await stock.inventory(sale: narrow, slots: 4) == Inventory(initial: 40, remaining: 0, reserved: 40, paid: 0))

            // More stock spreads over the stripes; less than is held is refused; the stripe count is fixed.
            (status, json) = try await PointsAdminTests.call(client, .put, "/admin/v1/flash-sales/\(id)", Self.sale(stock: 108, limit: 1, slots: 8))
            #expect(status == .ok)
            #expect(try await stock.inventory(sale: id, slots: 8) == Inventory(initial: 108, remaining: 8, reserved: 100, paid: 0))
            (status, json) = try await PointsAdminTests.call(client, .put, "/admin/v1/flash-sales/\(id)", Self.sale(stock: 104, limit: 1, slots: 8))
            #expect(status == .ok)
            #expect(try await stock.inventory(sale: id, slots: 8)?.remaining == 4)
            (status, json) = try await PointsAdminTests.call(client, .put, "/admin/v1/flash-sales/\(id)", Self.sale(stock: 104, limit: 1, slots: 4))
            #expect((status, Self.code(json)) == (.conflict, "stock_slots_fixed"))

            // The orders pool writes every order; an expiry returns its unit to the member's stripe.
            let pool = try Self.ordersPool(database: database, redis: redis)
            try await Self.waitFor("140 orders") {
                try await Self.count(database, "SELECT count(*) AS n FROM flash_orders WHERE sale_id IN ($1, $2)", [id, narrow]) >= 140
            }
            pool.cancel()
            _ = await pool.result
            let expiring = try #require(won.first)
            let expiringID = try #require(expiring.2)
            try await database.query("UPDATE flash_orders SET pay_by = now() - interval '1 second' WHERE reservation_id = $1", [expiringID])
            for order in try await store.expire([expiringID]) {
                #expect(order.stockSlots == 8)
                #expect(try await stock.release(sale: id, slots: 8, member: order.member, reservationID: order.reservationID, quantity: 1))
            }
            let books = Inventory(initial: 104, remaining: 5, reserved: 99, paid: 0)
            #expect(try await store.inventory(id) == books)
            #expect(try await stock.inventory(sale: id, slots: 8) == books)

            // Redis loses one stripe: the campaign reads as lost, and reconcile rebuilds every stripe from the orders.
            _ = try await redis.connection.command(["DEL", FlashSaleStock.stripes(id, slots: 8)[3].key("sale")])
            #expect(try await stock.inventory(sale: id, slots: 8) == nil)
            let report = try await Reconciler(store: store, stock: stock).reconcile(id, repair: false)
            #expect((report.repaired, report.agree) == (true, true))
            #expect(try await stock.inventory(sale: id, slots: 8) == books)
            // Limits still hold on every stripe after the rebuild, and the free units can still be had.
            for (member, _, _) in won.prefix(10) where member != expiring.0 {
                #expect(try await stock.reserve(sale: id, slots: 8, member: member, quantity: 1, requestID: UUID().uuidString, ratePerSecond: 0)
                    == .refused(.limitReached))
            }
            let fresh = try await Self.members(6, database: database)
            var reserved = 0
            for member in fresh {
                if case .reserved(_, .new) = try await stock.reserve(sale: id, slots: 8, member: member.id, quantity: 1,
                                                                     requestID: UUID().uuidString, ratePerSecond: 0) { reserved += 1 }
            }
            #expect(reserved == 5)
            try await database.query("DELETE FROM jobs WHERE kind IN ('flashsale.expire', 'push.flashsale_reminder') AND payload->>'saleId' IN ($1, $2)", [id, narrow])
        }
    }

}

/// Who consumes `fanflow.orders` in this test process: the in-process orders pools of the flash-sale
/// tests together, or the worker-process test alone. Its kill proves something only when its
/// worker is the queue's only consumer; otherwise another pool may have drained the queue first.
actor OrdersQueueTurns {
    static let shared = OrdersQueueTurns()
    private var sharing = 0
    private var exclusive = false
    private var waitingExclusive = 0
    private var waiters: [CheckedContinuation<Void, Never>] = []

    func enterShared() async {
        while exclusive || waitingExclusive > 0 { await wait() }
        sharing += 1
    }

    func leaveShared() {
        sharing -= 1
        wakeAll()
    }

    func exclusively<T: Sendable>(_ body: @Sendable () async throws -> T) async throws -> T {
        waitingExclusive += 1
        while exclusive || sharing > 0 { await wait() }
        waitingExclusive -= 1
        exclusive = true
        defer {
            exclusive = false
            wakeAll()
        }
        return try await body()
    }

    private func wait() async { await withCheckedContinuation { waiters.append($0) } }

    private func wakeAll() {
        let woken = waiters
        waiters = []
        for waiter in woken { waiter.resume() }
    }
}

