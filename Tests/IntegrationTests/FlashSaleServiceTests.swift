import Contracts
import FlashSales
import Foundation
import Logging
import PostgresClient
import RedisClient
import Synchronization
import Testing

/// The flash-sale service's outcomes against real Redis and PostgreSQL, with a journal of the
/// test's own standing in for the broker: what the journal says decides whether a reservation
/// stands, and nothing is reserved that is not recorded.
@Suite("Flash-sale service")
struct FlashSaleServiceTests {
    /// Keeps what it was given, and answers as told; `before` runs first (an order that arrives
    /// while the publish is still unconfirmed).
    final class Journal: ReservationJournal, Sendable {
        let confirms: Bool
        let recorded = Mutex<[Envelope]>([])
        let before: (@Sendable (Envelope) async throws -> Void)?

        init(confirms: Bool, before: (@Sendable (Envelope) async throws -> Void)? = nil) {
            self.confirms = confirms
            self.before = before
        }

        func record(_ envelope: Envelope) async -> Bool {
            recorded.withLock { $0.append(envelope) }
            do { try await before?(envelope) } catch { Issue.record("\(error)") }
            return confirms
        }
    }

    static func service(_ database: PostgresPool, _ redis: RedisPool, _ journal: Journal?) -> FlashSaleService {
        FlashSaleService(store: FlashSaleStore(database: database), stock: FlashSaleStock(redis: redis), journal: journal,
                         logger: FlashSaleReleaseTests.logger)
    }

    static func status(_ database: PostgresPool, _ reservation: String) async throws -> String? {
        try await database.query("SELECT status FROM flash_orders WHERE reservation_id = $1", [reservation]).first?.string("status")
    }

    @Test("recorded: reserved with its receipt and envelope; the same request id replays it; the limit and the stock refuse")
    func reservedAndReplayed() async throws {
        try await FlashSaleReleaseTests.withClients { database, redis in
            let sale = try await FlashSaleReleaseTests.sale(database, redis, stock: 1, timeout: 600)
            let journal = Journal(confirms: true)
            let service = Self.service(database, redis, journal)
            let member = FlashSaleReleaseTests.member(), other = FlashSaleReleaseTests.member()
            guard case .reserved(let receipt) = await service.reserve(sale, member: member, quantity: 1, requestID: "service-request-1") else {
                Issue.record("not reserved")
                return
            }
            #expect(receipt.sale == sale.id && receipt.quantity == 1 && receipt.amount == 9900 && receipt.reservationID.utf8.count == 32)
            let envelopes = journal.recorded.withLock { $0 }
            #expect(envelopes.count == 1)
            #expect(envelopes.first.flatMap(FlashSaleStore.ReservationEvent.init)?.reservationID == receipt.reservationID)
            #expect(envelopes.first?.attributes["requestId"] == .string("service-request-1"))
            // Confirmed in Redis: the same request id gets the same reservation, recorded once.
            #expect(await service.reserve(sale, member: member, quantity: 1, requestID: "service-request-1") == .replayed(receipt))
            #expect(journal.recorded.withLock { $0.count } == 1)
            #expect(await service.reserve(sale, member: member, quantity: 1, requestID: "service-request-2") == .limitReached)
            #expect(await service.reserve(sale, member: other, quantity: 1, requestID: "service-request-3") == .soldOut)
            // The order follows from the envelope, as the orders pool makes it.
            #expect(try await service.createOrders([(try #require(envelopes.first.flatMap(FlashSaleStore.ReservationEvent.init)),
                                                     "service-request-1")]) == 1)
            #expect(try await Self.status(database, receipt.reservationID) == OrderStatus.reserved.rawValue)
            try await FlashSaleReleaseTests.expectConserved(database, redis, sale: sale.id, members: [member, other])
            try await FlashSaleReleaseTests.cleanUp(database, sales: [sale.id])
        }
    }

    @Test("unrecorded: the hold is rolled back and the request id may try again; an order that got there first makes it stand")
    func unrecorded() async throws {
        try await FlashSaleReleaseTests.withClients { database, redis in
            let sale = try await FlashSaleReleaseTests.sale(database, redis, stock: 2, timeout: 600)
            let member = FlashSaleReleaseTests.member()
            let refusing = Self.service(database, redis, Journal(confirms: false))
            #expect(await refusing.reserve(sale, member: member, quantity: 1, requestID: "unrecorded-1") == .unrecorded)
            #expect(try await FlashSaleStock(redis: redis).inventory(sale: sale.id, slots: 1) == Inventory(initial: 2, remaining: 2, reserved: 0, paid: 0))
            // No journal at all (a process that takes no reservations): never reserved either.
            #expect(await Self.service(database, redis, nil).reserve(sale, member: member, quantity: 1, requestID: "unrecorded-1") == .unrecorded)
            #expect(try await FlashSaleStock(redis: redis).inventory(sale: sale.id, slots: 1)?.remaining == 2)

            // The broker took it after all and the order arrived before the confirm was given up.
            let orders = Self.service(database, redis, nil)
            let late = Journal(confirms: false) { envelope in
                let event = try #require(FlashSaleStore.ReservationEvent(envelope))
                try await orders.createOrders([(event, envelope.attributes["requestId"]?.string)])
            }
            guard case .reserved(let receipt) = await Self.service(database, redis, late).reserve(sale, member: member, quantity: 1,
                                                                                                    requestID: "unrecorded-1") else {
                Issue.record("the reservation whose order arrived first did not stand")
                return
            }
            #expect(try await Self.status(database, receipt.reservationID) == OrderStatus.reserved.rawValue)
            try await FlashSaleReleaseTests.expectConserved(database, redis, sale: sale.id, members: [member])
            try await FlashSaleReleaseTests.cleanUp(database, sales: [sale.id])
        }
    }

    @Test("payments: unknown order, wrong amount, paid once however often, and late ones flagged with their units returned")
    func payments() async throws {
        try await FlashSaleReleaseTests.withClients { database, redis in
            let sale = try await FlashSaleReleaseTests.sale(database, redis, stock: 2, timeout: 600)
            let service = Self.service(database, redis, Journal(confirms: true))
            let payer = FlashSaleReleaseTests.member(), late = FlashSaleReleaseTests.member()
            var receipts: [FlashSaleService.Receipt] = []
            for (member, request) in [(payer, "pay-request-1"), (late, "pay-request-2")] {
                guard case .reserved(let receipt) = await service.reserve(sale, member: member, quantity: 1, requestID: request) else {
                    Issue.record("not reserved")
                    return
                }
                receipts.append(receipt)
                try await service.createOrders([(FlashSaleStore.ReservationEvent(reservationID: receipt.reservationID, sale: sale.id, member: member,
                                                                                 quantity: 1, amount: receipt.amount, payBy: receipt.payBy), request)])
            }
            func pay(_ reservation: String, _ amount: Int64, at: Date = Date()) async -> FlashSaleService.PaymentOutcome {
                await service.pay(.init(reservationID: reservation, amount: amount, paidAt: at, reference: "test:\(reservation)"))
            }
            #expect(await pay("no-such-reservation", 9900) == .unknownOrder)
            #expect(await pay(receipts[0].reservationID, 100) == .amountMismatch(expected: 9900))
            #expect(try await Self.status(database, receipts[0].reservationID) == OrderStatus.reserved.rawValue)
            #expect(await pay(receipts[0].reservationID, 9900) == .paid)
            #expect(await pay(receipts[0].reservationID, 9900) == .paid)
            #expect(await pay(receipts[1].reservationID, 9900, at: receipts[1].payBy.addingTimeInterval(1)) == .refundRequired)
            #expect(try await Self.status(database, receipts[1].reservationID) == OrderStatus.refundRequired.rawValue)
            #expect(try await FlashSaleStock(redis: redis).inventory(sale: sale.id, slots: 1) == Inventory(initial: 2, remaining: 1, reserved: 0, paid: 1))
            try await FlashSaleReleaseTests.expectConserved(database, redis, sale: sale.id, members: [payer, late])
            try await FlashSaleReleaseTests.cleanUp(database, sales: [sale.id])
        }
    }
}
