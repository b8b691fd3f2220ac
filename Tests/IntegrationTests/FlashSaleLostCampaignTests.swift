import AMQPClient
import Contracts
import FlashSales
import Foundation
import Pipeline
import PostgresClient
import RedisClient
import Runtime
import Testing
import Workers

/// Redis loses a campaign mid-sale: the orders queue heals by itself (no `fanflow reconcile` by
/// hand), and the per-minute reconcile job reaches the orders queue only. Real servers throughout.
@Suite("Flash-sale campaign lost by Redis")
struct FlashSaleLostCampaignTests {
    /// Deletes only this sale's keys (`fanflow:{fs:<id>}:*`), as a Redis that lost it would have
    /// them: the Redis is shared, so never FLUSHDB.
    static func forget(_ redis: RedisPool, sale: String) async throws {
        var cursor = "0", keys: [String] = []
        repeat {
            let reply = try await redis.connection.command(["SCAN", cursor, "MATCH", "fanflow:{fs:\(sale)}:*", "COUNT", "1000"])
            let parts = try #require(reply.array)
            cursor = try #require(parts[0].string)
            keys += parts[1].array?.compactMap(\.string) ?? []
        } while cursor != "0"
        #expect(!keys.isEmpty)
        _ = try await redis.connection.command(["DEL"] + keys)
    }

    @Test("Redis loses a live campaign: reservations published to the orders queue become orders with no manual reconcile, stock conserved")
    func ordersHealAfterLoss() async throws {
        try await FlashSaleReleaseTests.withClients { database, redis in
            let sale = try await FlashSaleReleaseTests.sale(database, redis, stock: 5, timeout: 600)
            let stock = FlashSaleStock(redis: redis), pool = FlashSaleReleaseTests.pool(database, redis)
            let members = (0..<4).map { _ in FlashSaleReleaseTests.member() }
            var events: [Envelope] = []
            for (index, member) in members.enumerated() {
                let requestID = "lost-campaign-\(index)"
                guard case .reserved(let r, .new) = try await stock.reserve(sale: sale.id, slots: 1, member: member, quantity: 1, requestID: requestID,
                                                                           ratePerSecond: 0) else { Issue.record("no reservation"); return }
                try await stock.confirm(sale: sale.id, slots: 1, member: member, requestID: requestID, r)
                events.append(FlashSaleStore.ReservationEvent(reservationID: r.id, sale: sale.id, member: member, quantity: 1, amount: 9900,
                                                              payBy: r.payBy).envelope(requestID: requestID))
            }
            // The first order is written before the loss; the other three are on their way.
            try await pool.process([events[0]])
            try await Self.forget(redis, sale: sale.id)
            #expect(try await stock.inventory(sale: sale.id, slots: 1) == nil)

            let publisher = try await AMQPConnection(url: TestEnvironment.amqpURL)
            try await publisher.enableConfirms()
            try await publisher.declare(Topology.standard)
            for event in events.dropFirst() {
                #expect(await publisher.publish(exchange: ExchangeName.events.rawValue, routingKey: event.routingKey, body: try event.encoded(),
                                                properties: AMQPProperties(messageID: event.id, contentType: "application/json", persistent: true))
                        == .acked)
            }
            await publisher.close()
            let consumer = try FlashSaleTests.ordersPool(database: database, redis: redis)
            try await FlashSaleTests.waitFor("the orders after Redis lost the campaign") {
                try await FlashSaleTests.count(database, "SELECT count(*)::int AS n FROM flash_orders WHERE sale_id = $1 AND status = 'reserved'",
                                               [sale.id]) == 4
            }
            consumer.cancel()
            _ = try? await consumer.value
            #expect(try await stock.inventory(sale: sale.id, slots: 1) == Inventory(initial: 5, remaining: 1, reserved: 4, paid: 0))
            try await FlashSaleReleaseTests.expectConserved(database, redis, sale: sale.id, members: members)
            try await FlashSaleReleaseTests.cleanUp(database, sales: [sale.id])
        }
    }

    @Test("an expiry that finds its campaign lost rebuilds it and returns the unit once")
    func expiryAfterLoss() async throws {
        try await FlashSaleReleaseTests.withClients { database, redis in
            let sale = try await FlashSaleReleaseTests.sale(database, redis, stock: 3, timeout: 600)
            let stock = FlashSaleStock(redis: redis), pool = FlashSaleReleaseTests.pool(database, redis)
            let member = FlashSaleReleaseTests.member()
            guard case .reserved(let r, .new) = try await stock.reserve(sale: sale.id, slots: 1, member: member, quantity: 1, requestID: "exp-1",
                                                                       ratePerSecond: 0) else { Issue.record("no reservation"); return }
            try await pool.process([FlashSaleStore.ReservationEvent(reservationID: r.id, sale: sale.id, member: member, quantity: 1, amount: 9900,
                                                                    payBy: r.payBy).envelope(requestID: "exp-1")])
            // Due now (PostgreSQL expires only what is past its pay-by time).
            _ = try await database.query("UPDATE flash_orders SET pay_by = now() - interval '1 second' WHERE reservation_id = $1", [r.id])
            try await Self.forget(redis, sale: sale.id)
            try await pool.process([FlashSaleReleaseTests.expiry(r.id, sale: sale.id)])
            #expect(try await stock.inventory(sale: sale.id, slots: 1) == Inventory(initial: 3, remaining: 3, reserved: 0, paid: 0))
            try await pool.process([FlashSaleReleaseTests.expiry(r.id, sale: sale.id)])
            try await FlashSaleReleaseTests.expectConserved(database, redis, sale: sale.id, members: [member])
            try await FlashSaleReleaseTests.cleanUp(database, sales: [sale.id])
        }
    }

    @Test("the reconcile job routes to the orders queue only (not push's fanflow.flashsale.# nor the pipeline), and history skips it")
    func reconcileRouting() async throws {
        // The job as the scheduler publishes it (Job.legacyEnvelope: platform fanflow, kind = job kind).
        let job = Envelope(id: "fanflow:job:test-\(UUID().uuidString)", platform: .fanflow, app: "", kind: EventKind(FlashSaleStore.reconcileJob.rawValue),
                           subject: .init(), occurredAt: Date(), receivedAt: Date(), attributes: [:])
        #expect(job.routingKey == "fanflow.orders.reconcile")
        // The standard bindings on a private exchange (the shared one would hand it to live pools).
        let connection = try await AMQPConnection(url: TestEnvironment.amqpURL)
        try await connection.enableConfirms()
        let exchange = TestEnvironment.unique("test.routing")
        try await connection.declareExchange(exchange, type: "topic")
        var queues: [QueueName: String] = [:]
        for queue in Topology.standard.queues {
            let name = TestEnvironment.unique("test.routing.\(queue.name.rawValue)")
            try await connection.declareQueue(name, options: AMQPQueueOptions(kind: .classic, durable: false))
            for pattern in queue.bindings { try await connection.bindQueue(name, exchange: exchange, routingKey: pattern) }
            queues[queue.name] = name
        }
        #expect(await connection.publish(exchange: exchange, routingKey: job.routingKey, body: try job.encoded()) == .acked)
        try await Task.sleep(for: .milliseconds(200))
        var got: [QueueName: Int] = [:]
        for (queue, name) in queues { got[queue] = try await connection.messageCount(queue: name) }
        #expect(got == [.orders: 1, .pipeline: 0, .push: 0])
        for name in queues.values { try? await connection.deleteQueue(name) }
        try? await connection.deleteExchange(exchange)
        await connection.close()

        // A former version's behavior queue (`#`) held such jobs: drained into the pipeline, no row is
        // stored for it nor for another FanFlow follow-up; an external event in the same batch is stored.
        try await GatewayHarness.migrate()
        let database = PostgresPool(url: TestEnvironment.databaseURL, maximumConnections: 2)
        let followUp = Envelope(id: "test:\(UUID().uuidString)", platform: .fanflow, app: "", kind: EventKind("member.created"),
                                subject: .init(), occurredAt: Date(), receivedAt: Date(), attributes: [:])
        let other = Envelope(id: "test:\(UUID().uuidString)", platform: .server, app: "shop", kind: EventKind("member.created"),
                             subject: .init(), occurredAt: Date(), receivedAt: Date(), attributes: [:])
        try await Pipeline(database: database, handlers: []).process([job, followUp, other])
        let rows = try await database.query("SELECT id FROM events WHERE id = ANY($1::text[])",
                                            [PostgresArray([job.id, followUp.id, other.id])])
        #expect(rows.compactMap { $0.string("id") } == [other.id])
        _ = try await database.query("DELETE FROM events WHERE id = $1", [other.id])
        await database.close()
    }
}
