import Contracts
import FlashSales
import Foundation
import Logging

/// The orders pool: flash-sale reservations become orders, and unpaid ones expire.
///
/// `flashsale.reserved` (published by the gateway once Redis reserved the unit): the order is
/// created, keyed by the reservation id (a redelivery makes no second order), with its expiry job
/// due at the pay-by time in the same transaction. `flashsale.expire` (published by the scheduler
/// at that time): an order still unpaid is expired in PostgreSQL first (the row's status decides
/// a race with a payment), then its units go back to Redis, once per reservation; a redelivery
/// after a crash between the two releases what the first attempt did not. `flashsale.load` (the
/// scheduler, a minute before a campaign opens): stock and audience are loaded into Redis again.
public struct OrdersPool: EnvelopeProcessor {
    let store: FlashSaleStore
    let stock: FlashSaleStock
    let logger: Logger

    public init(store: FlashSaleStore, stock: FlashSaleStock, logger: Logger) {
        self.store = store
        self.stock = stock
        self.logger = logger
    }

    public func process(_ events: [Envelope]) async throws {
        var reservations: [FlashSaleStore.ReservationEvent] = []
        var expiring: [String] = []
        var loading: Set<String> = []
        for event in events {
            switch event.kind {
            case FlashSaleStore.reservedKind:
                guard let reservation = FlashSaleStore.ReservationEvent(event) else { throw EventRefused("malformed reservation \(event.id)") }
                reservations.append(reservation)
            case FlashSaleStore.expireKind:
                guard let id = event.attributes["reservationId"]?.string else { throw EventRefused("expiry without a reservationId \(event.id)") }
                expiring.append(id)
            case FlashSaleStore.loadKind:
                guard let sale = event.attributes["saleId"]?.string else { throw EventRefused("load without a saleId \(event.id)") }
                loading.insert(sale)
            default:
                // Other flash-sale events (payments) belong to later pools; nothing to do here.
                continue
            }
        }
        for id in loading {
            guard let sale = try await store.get(id) else { continue }
            if try await !stock.load(sale, from: store) {
                logger.error("flash sale stock is below what Redis holds as reserved or paid; reconcile it", metadata: ["sale": "\(id)"])
            }
        }
        try await store.createOrders(reservations)
        for order in try await store.expire(expiring) {
            if try await stock.release(sale: order.sale, slots: order.stockSlots, member: order.member, reservationID: order.reservationID, quantity: order.quantity) {
                logger.info("reservation expired, units back in stock",
                            metadata: ["sale": "\(order.sale)", "reservation": "\(order.reservationID)", "quantity": "\(order.quantity)"])
            }
        }
    }
}
