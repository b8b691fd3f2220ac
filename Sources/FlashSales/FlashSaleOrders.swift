import Foundation

/// The orders pool's work, as service calls: reservations become orders, unpaid ones expire,
/// campaigns are loaded, and the periodic reconcile rebuilds what Redis lost and returns holds
/// nobody will settle.
///
/// A reservation: Redis decides first, one compare-and-set per reservation
/// (``FlashSaleStock/order``): a hold still `held` or `confirmed` becomes `ordered`, and its order
/// is created, keyed by the reservation id (a redelivery makes no second order), with its expiry
/// job due at the pay-by time in the same transaction. A hold already `released` (the gateway
/// rolled it back after an unconfirmed publish the broker took anyway, or the periodic reconcile
/// reclaimed it) becomes a `cancelled` order with no expiry: its units went back once already.
/// An expiry: an order still unpaid is expired in PostgreSQL first (the row's status decides a
/// race with a payment), then its hold is released in Redis, once; a redelivery after a crash
/// between the two releases what the first attempt did not. An order or expiry that finds its
/// campaign lost by Redis rebuilds it from PostgreSQL there and then (``rebuildingLost``).
extension FlashSaleService {
    /// One batch of the orders pool's events, decoded.
    public struct OrdersWork: Sendable {
        public var reservations: [(event: FlashSaleStore.ReservationEvent, requestID: String?)] = []
        /// Reservation ids whose pay-by time came.
        public var expiring: [String] = []
        /// Campaigns to load into Redis again (a minute before they open).
        public var loading: Set<String> = []
        /// Reconcile runs: one campaign (or every recent one, nil) and the age of the holds to return.
        public var reconciling: [(sale: String?, olderThan: Duration)] = []

        public init() {}

        public var isEmpty: Bool { reservations.isEmpty && expiring.isEmpty && loading.isEmpty && reconciling.isEmpty }
    }

    /// A reservation names a campaign the books do not know: the event itself is at fault.
    public struct UnknownSale: Error, CustomStringConvertible {
        public let sale: String
        public var description: String { "reservation for unknown flash sale \(sale)" }
    }

    /// Does a batch's work in the order that keeps every unit counted once: loads; the reconcile's
    /// rebuild of lost campaigns (the orders behind it in the batch would otherwise find theirs
    /// lost); the orders; the expiries; then the reconcile's reclaim of stale holds, after the
    /// orders, so an order in this batch for a hold still `held` makes it `ordered` before it could
    /// be reclaimed. Idempotent: every step is a compare-and-set in Redis or keyed by reservation
    /// in PostgreSQL, so a redelivered batch changes nothing twice. Throws ``UnknownSale`` for a
    /// reservation of an unknown campaign; other errors are outages.
    public func handle(_ work: OrdersWork) async throws {
        for id in work.loading {
            guard let sale = try await store.get(id) else { continue }
            if try await !stock.load(sale, from: store) {
                logger.error("flash sale stock is below what Redis holds as reserved or paid; reconcile it", metadata: ["sale": "\(id)"])
            }
        }
        let reconciler = Reconciler(store: store, stock: stock)
        var rebuilt: Set<String> = []
        for sale in Set(work.reconciling.map { $0.sale ?? "" }) where !rebuilt.contains("") {
            for id in try await reconciler.rebuildLost(sale: sale.isEmpty ? nil : sale) {
                logger.warning("Redis had lost the flash sale; rebuilt from PostgreSQL", metadata: ["sale": "\(id)"])
            }
            rebuilt.insert(sale)
        }
        try await rebuildingLost(reconciler) { try await createOrders(work.reservations) }
        // Again after a rebuild: PostgreSQL answers the orders it expired before as well (a
        // redelivery's path), and the rebuilt hold records say `released` for those, so no unit
        // comes back twice.
        try await rebuildingLost(reconciler) { try await expire(work.expiring) }
        // One sweep of every campaign serves every period in the batch (a catch-up after an outage).
        var swept: Set<String> = []
        for (sale, olderThan) in work.reconciling where !swept.contains(sale ?? "") && !swept.contains("") {
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
    /// held as an outage and retried forever: the periodic sweep that rebuilds travels on the
    /// orders queue, in the held batch or behind it, so the queue stalled until someone ran
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
    /// their jobs, released ones as `cancelled`. Answers how many orders were new.
    @discardableResult
    public func createOrders(_ reservations: [(event: FlashSaleStore.ReservationEvent, requestID: String?)]) async throws -> Int {
        guard !reservations.isEmpty else { return 0 }
        var slots: [String: Int] = [:]
        for sale in Set(reservations.map(\.event.sale)) {
            guard let campaign = try await store.get(sale) else { throw UnknownSale(sale: sale) }
            slots[sale] = campaign.stockSlots
        }
        var arrivals: [FlashSaleStock.Arrival] = []
        for r in reservations {
            guard let stripes = slots[r.event.sale] else { throw UnknownSale(sale: r.event.sale) }
            arrivals.append(FlashSaleStock.Arrival(sale: r.event.sale, slots: stripes, member: r.event.member, reservationID: r.event.reservationID,
                                                   quantity: r.event.quantity, requestID: r.requestID))
        }
        let changes = try await stock.order(arrivals)
        var live: [FlashSaleStore.ReservationEvent] = [], cancelled: [FlashSaleStore.ReservationEvent] = []
        for (r, change) in zip(reservations, changes) {
            if change.state == .released { cancelled.append(r.event) } else { live.append(r.event) }
        }
        let new = try await store.createOrders(live, cancelled: cancelled)
        if !cancelled.isEmpty {
            logger.notice("reservations released before their order arrived were written cancelled",
                          metadata: ["count": "\(cancelled.count)", "new": "\(new)"])
        }
        return new
    }

    /// Expires the unpaid orders among `reservationIDs` whose pay-by time passed and releases their
    /// units, once however often it is called. Answers the reservations whose units this call returned.
    @discardableResult
    public func expire(_ reservationIDs: [String]) async throws -> [String] {
        var released: [String] = []
        for order in try await store.expire(reservationIDs) {
            if try await stock.release(sale: order.sale, slots: order.stockSlots, member: order.member, reservationID: order.reservationID,
                                       quantity: order.quantity) {
                released.append(order.reservationID)
                logger.info("reservation expired, units back in stock",
                            metadata: ["sale": "\(order.sale)", "reservation": "\(order.reservationID)", "quantity": "\(order.quantity)"])
            }
        }
        return released
    }
}
