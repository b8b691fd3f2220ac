import Contracts
import FlashSales
import Foundation
import Logging

/// The orders pool: flash-sale reservations become orders, and unpaid ones expire.
///
/// `flashsale.reserved` (published by the gateway once Redis reserved the unit): Redis decides
/// first, one compare-and-set per reservation (``FlashSaleStock/order``): a hold still `held` or
/// `confirmed` becomes `ordered`, and its order is created, keyed by the reservation id (a
/// redelivery makes no second order), with its expiry job due at the pay-by time in the same
/// transaction. A hold already `released` (the gateway rolled it back after an unconfirmed
/// publish the broker took anyway, or the periodic reconcile reclaimed it) becomes a `cancelled`
/// order with no expiry: its units went back once already. `flashsale.expire` (published by the
/// scheduler at that time): an order still unpaid is expired in PostgreSQL first (the row's
/// status decides a race with a payment), then its hold is released in Redis, once; a redelivery
/// after a crash between the two releases what the first attempt did not. `flashsale.load` (the
/// scheduler, a minute before a campaign opens): stock and audience are loaded into Redis again.
/// `orders.reconcile` (the scheduler, every minute; `flashsale.reconcile` before): ``Reconciler/sweep``,
/// run before the batch's orders. An order or expiry that finds its campaign lost by Redis
/// rebuilds it from PostgreSQL there and then (``rebuildingLost``).
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
        var reservations: [(event: FlashSaleStore.ReservationEvent, requestID: String?)] = []
        var expiring: [String] = []
        var loading: Set<String> = []
        var reconciling: [(sale: String?, olderThan: Duration)] = []
        for event in events {
            switch event.kind {
            case FlashSaleStore.reservedKind:
                guard let reservation = FlashSaleStore.ReservationEvent(event) else { throw EventRefused("malformed reservation \(event.id)") }
                reservations.append((reservation, event.attributes["requestId"]?.string))
            case FlashSaleStore.expireKind:
                guard let id = event.attributes["reservationId"]?.string else { throw EventRefused("expiry without a reservationId \(event.id)") }
                expiring.append(id)
            case FlashSaleStore.loadKind:
                guard let sale = event.attributes["saleId"]?.string else { throw EventRefused("load without a saleId \(event.id)") }
                loading.insert(sale)
            case FlashSaleStore.reconcileKind, FlashSaleStore.legacyReconcileKind:
                // A bound below the default only for one campaign (an operator's or a test's call).
                let seconds = event.attributes["olderThanSeconds"]?.int ?? Int64(Reconciler.holdBound.components.seconds)
                guard (0...86_400).contains(seconds) else { throw EventRefused("olderThanSeconds must be 0-86400 in \(event.id)") }
                reconciling.append((event.attributes["saleId"]?.string, .seconds(seconds)))
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
        // The reconcile job's rebuild first: the orders behind it in the batch would otherwise
        // find their campaign lost. Its reclaim of stale holds stays after the orders, so an order
        // in this batch for a hold still `held` makes it `ordered` before it could be reclaimed.
        let reconciler = Reconciler(store: store, stock: stock)
        var rebuilt: Set<String> = []
        for sale in Set(reconciling.map { $0.sale ?? "" }) where !rebuilt.contains("") {
            for id in try await reconciler.rebuildLost(sale: sale.isEmpty ? nil : sale) {
                logger.warning("Redis had lost the flash sale; rebuilt from PostgreSQL", metadata: ["sale": "\(id)"])
            }
            rebuilt.insert(sale)
        }
        try await rebuildingLost(reconciler) { try await order(reservations) }
        try await rebuildingLost(reconciler) {
            // Again after a rebuild: PostgreSQL answers the orders it expired before as well (a
            // redelivery's path), and the rebuilt hold records say `released` for those, so no unit
            // comes back twice.
            for order in try await store.expire(expiring) {
                if try await stock.release(sale: order.sale, slots: order.stockSlots, member: order.member, reservationID: order.reservationID,
                                           quantity: order.quantity) {
                    logger.info("reservation expired, units back in stock",
                                metadata: ["sale": "\(order.sale)", "reservation": "\(order.reservationID)", "quantity": "\(order.quantity)"])
                }
            }
        }
        // One sweep of every campaign serves every period in the batch (a catch-up after an outage).
        var swept: Set<String> = []
        for (sale, olderThan) in reconciling where !swept.contains(sale ?? "") && !swept.contains("") {
            let sweep = try await reconciler.sweep(sale: sale, olderThan: olderThan)
            swept.insert(sale ?? "")
            for id in sweep.restored { logger.warning("Redis had lost the flash sale; rebuilt from PostgreSQL", metadata: ["sale": "\(id)"]) }
            if !sweep.reclaimed.isEmpty {
                logger.warning("unconfirmed holds with no order returned to stock (a lost reply or a gateway that died)",
                               metadata: ["count": "\(sweep.reclaimed.count)", "reservations": "\(sweep.reclaimed.prefix(20).joined(separator: ","))"])
            }
        }
    }

    /// Runs `work`, and when it finds a campaign Redis lost, rebuilds that campaign from PostgreSQL
    /// (``Reconciler/rebuild``) and runs it again, once per campaign. Without this the batch was
    /// held as an outage and retried forever: the periodic sweep that rebuilds travels on this
    /// same queue, in the held batch or behind it, so the queue stalled until someone ran
    /// `fanflow reconcile` by hand. `work` may run again: every step in it is a compare-and-set in
    /// Redis or keyed by reservation in PostgreSQL, so what its first run did is not done twice.
    func rebuildingLost(_ reconciler: Reconciler, _ work: () async throws -> Void) async throws {
        var rebuilt: Set<String> = []
        while true {
            do { return try await work() } catch let lost as FlashSaleStock.CampaignLost {
                guard rebuilt.insert(lost.sale).inserted, let sale = try await store.get(lost.sale) else { throw lost }
                if try await reconciler.rebuild(sale) {
                    logger.warning("Redis had lost the flash sale; rebuilt from PostgreSQL before its orders", metadata: ["sale": "\(lost.sale)"])
                }
            }
        }
    }

    /// Redis first (the hold's state decides), then the orders: ordered ones as `reserved` with
    /// their jobs, released ones as `cancelled`.
    func order(_ reservations: [(event: FlashSaleStore.ReservationEvent, requestID: String?)]) async throws {
        guard !reservations.isEmpty else { return }
        var slots: [String: Int] = [:]
        for sale in Set(reservations.map(\.event.sale)) {
            guard let campaign = try await store.get(sale) else { throw EventRefused("reservation for unknown flash sale \(sale)") }
            slots[sale] = campaign.stockSlots
        }
        let changes = try await stock.order(reservations.map { r in
            FlashSaleStock.Arrival(sale: r.event.sale, slots: slots[r.event.sale] ?? 1, member: r.event.member, reservationID: r.event.reservationID,
                                   quantity: r.event.quantity, requestID: r.requestID)
        })
        var live: [FlashSaleStore.ReservationEvent] = [], cancelled: [FlashSaleStore.ReservationEvent] = []
        for (r, change) in zip(reservations, changes) {
            if change.state == .released { cancelled.append(r.event) } else { live.append(r.event) }
        }
        let new = try await store.createOrders(live, cancelled: cancelled)
        if !cancelled.isEmpty {
            logger.notice("reservations released before their order arrived were written cancelled",
                          metadata: ["count": "\(cancelled.count)", "new": "\(new)"])
        }
    }
}
