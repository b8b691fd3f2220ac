import AMQPClient
import Contracts
import Crypto
import _CryptoExtras
import FlashSales
import Foundation
import Glibc
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import PostgresClient
import RedisClient
import Runtime
import Synchronization
import Testing
import Workers

/// A reservation's hold ends exactly once, whichever of the gateway's rollback, the order, the
/// expiry, a payment or the periodic reconcile gets there first; and a hold nobody knows about (a
/// lost Redis reply) comes back by itself. Real Redis, RabbitMQ and PostgreSQL throughout.
@Suite("Flash-sale holds")
struct FlashSaleReleaseTests {
    static let logger = Logger(label: "test.flashsale.holds")

    static func port(of url: String, default fallback: Int) -> Int {
        Int(url.split(separator: ":").last?.split(separator: "/").first ?? "") ?? fallback
    }

    /// The orders pool's work on one batch, as its consumer hands it over.
    static func pool(_ database: PostgresPool, _ redis: RedisPool) -> OrdersPool {
        OrdersPool(store: FlashSaleStore(database: database), stock: FlashSaleStock(redis: redis), logger: logger)
    }

    static func expiry(_ reservation: String, sale: String) -> Envelope {
        Envelope(id: "fanflow:job:test-\(UUID().uuidString)", platform: .fanflow, app: "", kind: FlashSaleStore.expireKind, subject: .init(),
                 occurredAt: Date(), receivedAt: Date(), attributes: ["reservationId": .string(reservation), "saleId": .string(sale)])
    }

    /// The periodic reconcile of holds, as the scheduler publishes it, limited to one sale (other
    /// tests' sales share this Redis) and with a bound of the test's choosing.
    static func reconcileHolds(sale: String, olderThanSeconds: Int, kind: EventKind = FlashSaleStore.reconcileKind) -> Envelope {
        Envelope(id: "fanflow:job:test-\(UUID().uuidString)", platform: .fanflow, app: "", kind: kind,
                 subject: .init(), occurredAt: Date(), receivedAt: Date(),
                 attributes: ["saleId": .string(sale), "olderThanSeconds": .integer(Int64(olderThanSeconds))])
    }

    static func held(_ redis: RedisPool, sale: String, member: Int64) async throws -> Int64 {
        let reply = try await redis.connection.command(["GET", FlashSaleStock.home(sale, slots: 1, member: member).key("held:\(member)")])
        return reply.string.flatMap { Int64($0) } ?? 0
    }

    /// Units PostgreSQL's orders hold for a member (reserved or paid).
    static func ordered(_ database: PostgresPool, sale: String, member: Int64) async throws -> Int64 {
        Int64(try await FlashSaleTests.count(database, """
            SELECT coalesce(sum(quantity), 0)::int AS n FROM flash_orders WHERE sale_id = $1 AND member_id = $2 AND status IN ('reserved', 'paid')
            """, [sale, member]))
    }

    /// The promise: Redis and PostgreSQL agree, every counter is whole, no member's held units are
    /// negative or differ from their orders, and nothing beyond the stock is out.
    static func expectConserved(_ database: PostgresPool, _ redis: RedisPool, sale: String, members: [Int64],
                                sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let live = try #require(try await FlashSaleStock(redis: redis).inventory(sale: sale, slots: 1), sourceLocation: sourceLocation)
        let books = try #require(try await FlashSaleStore(database: database).inventory(sale), sourceLocation: sourceLocation)
        #expect(live == books, "Redis \(live) against PostgreSQL \(books)", sourceLocation: sourceLocation)
        #expect(live.balances, "\(live)", sourceLocation: sourceLocation)
        #expect(live.remaining >= 0 && live.reserved >= 0 && live.paid >= 0 && live.remaining <= live.initial, "\(live)",
                sourceLocation: sourceLocation)
        for member in members {
            let held = try await held(redis, sale: sale, member: member)
            #expect(held >= 0, "member \(member) holds \(held)", sourceLocation: sourceLocation)
            #expect(held == (try await ordered(database, sale: sale, member: member)), "member \(member) holds \(held) in Redis",
                    sourceLocation: sourceLocation)
        }
    }

    /// A sale of the test's own, saved and loaded as the admin API does, without a gateway.
    static func sale(_ database: PostgresPool, _ redis: RedisPool, stock: Int, timeout: Int) async throws -> FlashSale {
        let sale = FlashSale(id: TestEnvironment.unique("fs"), sku: "SKU-1", title: "Lucky bag", price: 9900, stock: stock, perMemberLimit: 1,
                             startAt: Date().addingTimeInterval(-3600), endAt: Date().addingTimeInterval(3600), paymentTimeoutSeconds: timeout)
        let store = FlashSaleStore(database: database)
        #expect(try await store.put(sale) == .created)
        #expect(try await FlashSaleStock(redis: redis).load(sale, from: store))
        return sale
    }

    static func member() -> Int64 { Int64.random(in: 1_000_000_000...9_000_000_000_000) }

    static func withClients(_ body: (PostgresPool, RedisPool) async throws -> Void) async throws {
        try await GatewayHarness.migrate()
        let database = PostgresPool(url: TestEnvironment.databaseURL, maximumConnections: 6)
        let redis = try await RedisPool(url: TestEnvironment.redisURL, size: 2)
        do { try await body(database, redis) } catch {
            await redis.close()
            await database.close()
            throw error
        }
        await redis.close()
        await database.close()
    }

    static func cleanUp(_ database: PostgresPool, sales: [String]) async throws {
        try await database.query("DELETE FROM jobs WHERE kind IN ('flashsale.expire', 'push.flashsale_reminder') AND payload->>'saleId' = ANY($1::text[])",
                                 [PostgresArray(sales)])
    }

    // MARK: - (1) the broker took the publish, the confirm came too late

    @Test("a publish the broker took but confirmed too late: rolled back first, the order arrives cancelled and neither expiry nor payment returns the unit again; arrived first, the reservation stands (201) and expires once")
    func publishConfirmLate() async throws {
        let amqp = TestEnvironment.amqpURL
        let brokerPort = Self.port(of: amqp, default: 5672)
        let proxy = try CuttableProxy(targetPort: brokerPort)
        let viaProxy = amqp.replacingOccurrences(of: ":\(brokerPort)", with: ":\(proxy.port)")
        try await FlashSaleTests.withServers(["FANFLOW_AMQP_URL": viaProxy, "FANFLOW_FLASHSALE_RATE_PER_MEMBER": "0"]) { client, database, redis in
            let alipayKey = try _RSA.Signing.PrivateKey(keySize: .bits2048), appKey = try _RSA.Signing.PrivateKey(keySize: .bits2048)
            let alipayApp = TestEnvironment.unique("2021")
            try await GatewayHarness.register(client, "alipay", alipayApp, ["alipayPublicKey": alipayKey.publicKey.pemRepresentation,
                                                                            "appPrivateKey": appKey.pemRepresentation])
            let expiring = TestEnvironment.unique("fs"), paying = TestEnvironment.unique("fs")
            #expect(try await PointsAdminTests.call(client, .put, "/admin/v1/flash-sales/\(expiring)",
                                                    FlashSaleTests.sale(stock: 2, limit: 1, timeout: 1)).0 == .created)
            #expect(try await PointsAdminTests.call(client, .put, "/admin/v1/flash-sales/\(paying)",
                                                    FlashSaleTests.sale(stock: 2, limit: 1, timeout: 600)).0 == .created)
            let members = try await FlashSaleTests.members(3, database: database)
            let pool = Self.pool(database, redis)

            /// The broker's answers held back while one member reserves: the publish reaches the
            /// broker, its confirm does not reach the gateway within its 2 s.
            @Sendable func reserveUnconfirmed(_ sale: String, _ member: (id: Int64, token: String)) async throws
                -> (status: HTTPResponse.Status, code: String?, reservation: String?) {
                proxy.holdReplies()
                let (status, json) = try await FlashSaleTests.reserve(client, sale: sale, token: member.token)
                proxy.releaseReplies()
                return (status, FlashSaleTests.code(json), json["reservationId"] as? String)
            }
            func order(_ sale: String, _ member: Int64) async throws -> (id: String, status: String)? {
                try await database.query("SELECT reservation_id, status FROM flash_orders WHERE sale_id = $1 AND member_id = $2",
                                         [sale, member]).first.flatMap { row in
                    row.string("reservation_id").map { ($0, row.string("status") ?? "") }
                }
            }

            // Rolled back before the order arrives: no in-process orders pool consumes meanwhile.
            for (sale, member) in [(expiring, members[0]), (paying, members[1])] {
                let answer = try await OrdersQueueTurns.shared.exclusively { try await reserveUnconfirmed(sale, member) }
                #expect((answer.status, answer.code) == (.serviceUnavailable, "publish_unconfirmed"))
                #expect(try await FlashSaleStock(redis: redis).inventory(sale: sale, slots: 1)?.remaining == 2, "the rollback returned the unit")
            }
            // The broker had them: the orders pool gets both reservations now.
            let consumer = try FlashSaleTests.ordersPool(database: database, redis: redis)
            try await FlashSaleTests.waitFor("the late orders") {
                let first = try await order(expiring, members[0].id), second = try await order(paying, members[1].id)
                return first != nil && second != nil
            }
            let lateExpiring = try #require(try await order(expiring, members[0].id))
            let latePaid = try #require(try await order(paying, members[1].id))
            #expect(lateExpiring.status == "cancelled" && latePaid.status == "cancelled", "\(lateExpiring) \(latePaid)")
            #expect(try await FlashSaleTests.count(database, "SELECT count(*) AS n FROM jobs WHERE kind = 'flashsale.expire' AND payload->>'reservationId' = ANY($1::text[])",
                                                   [PostgresArray([lateExpiring.id, latePaid.id])]) == 0, "an expiry was scheduled for a cancelled order")
            try await Self.expectConserved(database, redis, sale: expiring, members: [members[0].id])
            try await Self.expectConserved(database, redis, sale: paying, members: [members[1].id])

            // Its expiry comes anyway (a job of an earlier attempt): nothing moves.
            try await Task.sleep(for: .milliseconds(1100))
            try await pool.process([Self.expiry(lateExpiring.id, sale: expiring)])
            try await Self.expectConserved(database, redis, sale: expiring, members: [members[0].id])
            #expect(try await FlashSaleStock(redis: redis).inventory(sale: expiring, slots: 1) == Inventory(initial: 2, remaining: 2, reserved: 0, paid: 0))

            // A payment arrives for the cancelled order: refunded, and no unit moves.
            let form = try FlashSaleTests.alipayNotification(app: alipayApp, reservation: latePaid.id, totalAmount: "99.00", alipayKey: alipayKey)
            let (paidStatus, text) = try await client.execute(uri: "/v1/payments/notify/alipay", method: .post,
                                                              headers: [.contentType: "application/x-www-form-urlencoded; charset=utf-8"],
                                                              body: ByteBuffer(string: form)) { ($0.status, String(buffer: $0.body)) }
            #expect((paidStatus, text) == (.ok, "success"))
            #expect(try await order(paying, members[1].id)?.status == "refund_required")
            try await Self.expectConserved(database, redis, sale: paying, members: [members[1].id])
            #expect(try await FlashSaleStock(redis: redis).inventory(sale: paying, slots: 1) == Inventory(initial: 2, remaining: 2, reserved: 0, paid: 0))

            // The order arrives first: the broker's confirm is held until the orders pool (running)
            // has made the order, so the hold is `ordered` before the gateway's rollback can look
            // at it; the rollback finds it so, the reservation stands and the member hears 201.
            // (Fails, rather than passing the other way, if the pool took over the gateway's 2 s.)
            proxy.holdReplies()
            let token = members[2].token
            let reserving = Task { () async throws -> (HTTPResponse.Status, String?, String?) in
                let (status, json) = try await FlashSaleTests.reserve(client, sale: expiring, token: token)
                return (status, FlashSaleTests.code(json), json["reservationId"] as? String)
            }
            try await FlashSaleTests.waitFor("the order") { try await order(expiring, members[2].id) != nil }
            proxy.releaseReplies()
            let (standingStatus, standingCode, standingReservation) = try await reserving.value
            let standing = try #require(try await order(expiring, members[2].id))
            #expect(standing.status == "reserved")
            #expect(standingStatus == .created, "\(standingCode ?? "")")
            #expect(standingReservation == standing.id)
            try await Self.expectConserved(database, redis, sale: expiring, members: members.map(\.id))
            try await Task.sleep(for: .milliseconds(1100))
            try await pool.process([Self.expiry(standing.id, sale: expiring)])
            try await pool.process([Self.expiry(standing.id, sale: expiring)])
            try await Self.expectConserved(database, redis, sale: expiring, members: members.map(\.id))
            #expect(try await FlashSaleStock(redis: redis).inventory(sale: expiring, slots: 1) == Inventory(initial: 2, remaining: 2, reserved: 0, paid: 0))

            consumer.cancel()
            _ = await consumer.result
            try await Self.cleanUp(database, sales: [expiring, paying])
        }
    }

    // MARK: - (2) every order of rollback, order, expiry and reconcile

    enum Actor: String, CaseIterable, Sendable { case rollback, order, expiry, reconcile }

    static func permutations<T>(_ items: [T]) -> [[T]] {
        guard items.count > 1 else { return [items] }
        return items.indices.flatMap { index in
            var rest = items
            let first = rest.remove(at: index)
            return permutations(rest).map { [first] + $0 }
        }
    }

    @Test("rollback, order, expiry and reconcile on one reservation, in each of the 24 orders, one after another and all at once: its unit comes back exactly once")
    func everyOrder() async throws {
        try await Self.withClients { database, redis in
            let cases = Self.permutations(Actor.allCases)
            #expect(cases.count == 24)
            let sale = try await Self.sale(database, redis, stock: cases.count * 2, timeout: 1)
            let stock = FlashSaleStock(redis: redis), pool = Self.pool(database, redis)
            var members: [Int64] = []
            for concurrent in [false, true] {
                for sequence in cases {
                    let member = Self.member(), requestID = UUID().uuidString
                    members.append(member)
                    // Reserved 200 s ago: its pay-by time has passed, and the reconcile's 2 minutes too.
                    guard case .reserved(let reservation, .new) = try await stock.reserve(
                        sale: sale.id, slots: 1, member: member, quantity: 1, requestID: requestID, now: Date().addingTimeInterval(-200),
                        ratePerSecond: 0) else { Issue.record("not reserved"); return }
                    let event = FlashSaleStore.ReservationEvent(reservationID: reservation.id, sale: sale.id, member: member, quantity: 1,
                                                                amount: 9900, payBy: reservation.payBy)
                    @Sendable func act(_ actor: Actor) async throws {
                        switch actor {
                        case .rollback: try await stock.rollback(sale: sale.id, slots: 1, member: member, requestID: requestID, reservation)
                        case .order: try await pool.process([event.envelope(requestID: requestID)])
                        case .expiry: try await pool.process([Self.expiry(reservation.id, sale: sale.id)])
                        case .reconcile: try await pool.process([Self.reconcileHolds(sale: sale.id, olderThanSeconds: 120)])
                        }
                    }
                    if concurrent {
                        try await withThrowingTaskGroup(of: Void.self) { group in
                            for actor in sequence { group.addTask { try await act(actor) } }
                            try await group.waitForAll()
                        }
                    } else {
                        for actor in sequence { try await act(actor) }
                    }
                    try await Self.expectConserved(database, redis, sale: sale.id, members: [member])
                    #expect(try await Self.held(redis, sale: sale.id, member: member) <= 1, "\(sequence) concurrent: \(concurrent)")
                    // Whatever is left (an order whose expiry came before it) expires now; twice changes nothing.
                    try await act(.expiry)
                    try await act(.expiry)
                    try await act(.rollback)
                    #expect(try await Self.held(redis, sale: sale.id, member: member) == 0, "\(sequence) concurrent: \(concurrent)")
                    let live = try await stock.inventory(sale: sale.id, slots: 1)
                    #expect(live == Inventory(initial: Int64(sale.stock), remaining: Int64(sale.stock), reserved: 0, paid: 0),
                            "\(sequence) concurrent: \(concurrent)")
                }
            }
            try await Self.expectConserved(database, redis, sale: sale.id, members: members)
            try await Self.cleanUp(database, sales: [sale.id])
        }
    }

    // MARK: - (3) the reserve ran, its reply was lost

    @Test("a reserve whose reply was lost comes back through the periodic reconcile after 2 minutes; a hold with an order, a confirmed one and a young one stay")
    func lostReply() async throws {
        try await Self.withClients { database, redis in
            let sale = try await Self.sale(database, redis, stock: 10, timeout: 600)
            let stock = FlashSaleStock(redis: redis), pool = Self.pool(database, redis)
            let old = Date().addingTimeInterval(-180)
            func reserve(_ member: Int64, _ requestID: String, at: Date) async throws -> FlashSaleStock.Reservation? {
                guard case .reserved(let reservation, .new) = try await stock.reserve(sale: sale.id, slots: 1, member: member, quantity: 1,
                                                                                     requestID: requestID, now: at, ratePerSecond: 0) else { return nil }
                return reservation
            }
            let (lost, ordered, confirmed, young) = (Self.member(), Self.member(), Self.member(), Self.member())
            // The Lua ran; nobody heard its answer.
            _ = try await reserve(lost, "lost-request-1", at: old)
            // A reservation whose order was written; one whose publish was confirmed and whose order is on its way; one just made.
            let withOrder = try #require(try await reserve(ordered, "ordered-request-1", at: old))
            try await pool.process([FlashSaleStore.ReservationEvent(reservationID: withOrder.id, sale: sale.id, member: ordered, quantity: 1,
                                                                    amount: 9900, payBy: withOrder.payBy).envelope(requestID: "ordered-request-1")])
            let onItsWay = try #require(try await reserve(confirmed, "confirmed-request-1", at: old))
            try await stock.confirm(sale: sale.id, slots: 1, member: confirmed, requestID: "confirmed-request-1", onItsWay)
            _ = try await reserve(young, "young-request-1", at: Date())
            #expect(try await stock.inventory(sale: sale.id, slots: 1) == Inventory(initial: 10, remaining: 6, reserved: 4, paid: 0))

            try await pool.process([Self.reconcileHolds(sale: sale.id, olderThanSeconds: 120)])
            #expect(try await stock.inventory(sale: sale.id, slots: 1) == Inventory(initial: 10, remaining: 7, reserved: 3, paid: 0))
            #expect(try await Self.held(redis, sale: sale.id, member: lost) == 0)
            for member in [ordered, confirmed, young] { #expect(try await Self.held(redis, sale: sale.id, member: member) == 1) }
            // Again: nothing more comes back. The lost request id is free again.
            try await pool.process([Self.reconcileHolds(sale: sale.id, olderThanSeconds: 120)])
            #expect(try await stock.inventory(sale: sale.id, slots: 1)?.remaining == 7)
            guard case .reserved(_, .new) = try await stock.reserve(sale: sale.id, slots: 1, member: lost, quantity: 1, requestID: "lost-request-1",
                                                                    ratePerSecond: 0) else { Issue.record("the lost request id still answers"); return }
            try await Self.cleanUp(database, sales: [sale.id])
        }
    }

    @Test("an order whose hold record Redis lost is adopted (its unit taken again, or cancelled when none is left); one reserved before hold records is not counted twice")
    func adoption() async throws {
        try await Self.withClients { database, redis in
            let sale = try await Self.sale(database, redis, stock: 2, timeout: 600)
            let store = FlashSaleStore(database: database), stock = FlashSaleStock(redis: redis), pool = Self.pool(database, redis)
            let (early, lost, late) = (Self.member(), Self.member(), Self.member())
            func reserve(_ member: Int64, _ requestID: String) async throws -> FlashSaleStore.ReservationEvent {
                guard case .reserved(let r, .new) = try await stock.reserve(sale: sale.id, slots: 1, member: member, quantity: 1, requestID: requestID,
                                                                           ratePerSecond: 0) else { throw CancellationError() }
                return FlashSaleStore.ReservationEvent(reservationID: r.id, sale: sale.id, member: member, quantity: 1, amount: 9900, payBy: r.payBy)
            }
            func status(_ id: String) async throws -> String? {
                try await database.query("SELECT status FROM flash_orders WHERE reservation_id = $1", [id]).first?.string("status")
            }
            let stripe = FlashSaleStock.home(sale.id, slots: 1, member: early)
            // Reserved by the earlier scheme: units counted, a request answer, no hold record.
            let old = try await reserve(early, "early-request-1")
            _ = try await redis.connection.command(["DEL", stripe.key("hold:\(old.reservationID)")])
            _ = try await redis.connection.command(["ZREM", stripe.key("holds"), old.reservationID])
            try await pool.process([old.envelope(requestID: "early-request-1")])
            #expect(try await status(old.reservationID) == "reserved")
            #expect(try await stock.inventory(sale: sale.id, slots: 1) == Inventory(initial: 2, remaining: 1, reserved: 1, paid: 0))
            try await Self.expectConserved(database, redis, sale: sale.id, members: [early])

            // Reserved, then Redis loses the campaign before the order arrives: the order rebuilds it
            // from the orders first (never written blind, never waiting for a reconcile by hand).
            let inFlight = try await reserve(lost, "lost-request-1")
            let keys = try await redis.connection.command(["KEYS", "fanflow:{fs:\(sale.id)}:*"]).array?.compactMap(\.string) ?? []
            _ = try await redis.connection.command(["DEL"] + keys)
            try await pool.process([inFlight.envelope(requestID: "lost-request-1")])
            #expect(try await Reconciler(store: store, stock: stock).sweep(sale: sale.id).restored == [])
            #expect(try await status(inFlight.reservationID) == "reserved")
            #expect(try await stock.inventory(sale: sale.id, slots: 1) == Inventory(initial: 2, remaining: 0, reserved: 2, paid: 0))
            try await Self.expectConserved(database, redis, sale: sale.id, members: [early, lost])

            // Another such order, with nothing left: cancelled, never oversold.
            let member = late
            let ghost = FlashSaleStore.ReservationEvent(reservationID: UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased(), sale: sale.id, member: member, quantity: 1,
                                                        amount: 9900, payBy: Date().addingTimeInterval(600))
            try await pool.process([ghost.envelope(requestID: "ghost-request-1")])
            #expect(try await status(ghost.reservationID) == "cancelled")
            try await Self.expectConserved(database, redis, sale: sale.id, members: [early, lost, late])
            try await Self.cleanUp(database, sales: [sale.id])
        }
    }

    @Test("the gateway's Redis connection cut after the reserve was sent: 503 without internals; the held unit comes back through reconcile")
    func lostReplyThroughGateway() async throws {
        let redisURL = TestEnvironment.redisURL
        let redisPort = Self.port(of: redisURL, default: 6379)
        let proxy = try CuttableProxy(targetPort: redisPort)
        let viaProxy = redisURL.replacingOccurrences(of: ":\(redisPort)", with: ":\(proxy.port)")
        try await FlashSaleTests.withServers(["FANFLOW_REDIS_URL": viaProxy, "FANFLOW_FLASHSALE_RATE_PER_MEMBER": "0"]) { client, database, redis in
            let id = TestEnvironment.unique("fs")
            #expect(try await PointsAdminTests.call(client, .put, "/admin/v1/flash-sales/\(id)", FlashSaleTests.sale(stock: 5, limit: 1)).0 == .created)
            let members = try await FlashSaleTests.members(2, database: database)
            // One reservation first, so the gateway's connections have the script loaded.
            #expect(try await FlashSaleTests.reserve(client, sale: id, token: members[0].token).0 == .created)

            proxy.holdReplies()
            async let answer = FlashSaleTests.reserve(client, sale: id, token: members[1].token)
            try await Task.sleep(for: .milliseconds(500))
            proxy.cut()
            let (status, json) = try await answer
            proxy.restore()
            proxy.releaseReplies()
            #expect((status, FlashSaleTests.code(json)) == (.serviceUnavailable, "redis_unavailable"))
            let message = SchedulerAdminTests.error(json, "message") ?? ""
            for leak in ["redis ", "errno", "127.0.0.1", "hiredis", "connect", "eof", "timed out", "protocol"] {
                #expect(!message.lowercased().contains(leak), "the 503 says \(message)")
            }
            let stock = FlashSaleStock(redis: redis)
            #expect(try await stock.inventory(sale: id, slots: 1) == Inventory(initial: 5, remaining: 3, reserved: 2, paid: 0),
                    "the reserve did not run before the cut")

            let pool = Self.pool(database, redis)
            // As a job queued before the kind became `orders.reconcile` arrives: still run.
            try await pool.process([Self.reconcileHolds(sale: id, olderThanSeconds: 0, kind: FlashSaleStore.legacyReconcileKind)])
            #expect(try await Self.held(redis, sale: id, member: members[1].id) == 0)
            #expect(try await Self.held(redis, sale: id, member: members[0].id) == 1)
            #expect(try await stock.inventory(sale: id, slots: 1) == Inventory(initial: 5, remaining: 4, reserved: 1, paid: 0))
            try await Self.cleanUp(database, sales: [id])
        }
    }
}
