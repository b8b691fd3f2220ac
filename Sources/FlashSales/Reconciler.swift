import Foundation

/// Compares a campaign's books in PostgreSQL with its live state in Redis, and repairs Redis from
/// PostgreSQL: at once when Redis lost the campaign (nothing live can be lost then), and when
/// asked (`repair`) when both exist and disagree. Reservations the orders pool has not written
/// yet are in Redis but not in PostgreSQL, so a live campaign can disagree for a moment: repair
/// one that still has Redis state only once the orders queue is drained.
///
/// It also returns holds nobody will settle (``reclaim``): a reserve whose reply was lost, or a
/// gateway that died before publishing, leaves a unit `held` with no order on its way. The
/// periodic `flashsale.reconcile` job does that every minute for every recent campaign.
public struct Reconciler: Sendable {
    let store: FlashSaleStore
    let stock: FlashSaleStock

    /// How old an unconfirmed hold must be before it is returned: far past the gateway's 2 s
    /// publish deadline, so a reservation still being published is never taken back from under it.
    public static let holdBound = Duration.seconds(120)

    public init(store: FlashSaleStore, stock: FlashSaleStock) {
        self.store = store
        self.stock = stock
    }

    public struct Report: Sendable, Equatable {
        public let postgres: Inventory
        public let redisBefore: Inventory?
        public let redisAfter: Inventory?
        public let repaired: Bool
        /// Unconfirmed holds with no order, older than ``Reconciler/holdBound``, returned to stock.
        public let reclaimed: Int
        public var agree: Bool { redisAfter == postgres }
    }

    public enum Problem: Error, Equatable { case unknownSale(String) }

    public func reconcile(_ id: String, repair: Bool) async throws -> Report {
        guard let sale = try await store.get(id), let books = try await store.inventory(id) else { throw Problem.unknownSale(id) }
        let before = try await stock.inventory(sale: id, slots: sale.stockSlots)
        var reclaimed = 0, current = before
        if before != nil {
            reclaimed = try await reclaim(sale, olderThan: Self.holdBound).count
            if reclaimed > 0 { current = try await stock.inventory(sale: id, slots: sale.stockSlots) }
        }
        guard current != books, current == nil || repair else {
            return Report(postgres: books, redisBefore: before, redisAfter: current, repaired: false, reclaimed: reclaimed)
        }
        try await stock.restore(sale, books: books, orders: try await store.orders(sale: id))
        if sale.audienceTag != nil { _ = try await stock.load(sale, from: store) }
        return Report(postgres: books, redisBefore: before, redisAfter: try await stock.inventory(sale: id, slots: sale.stockSlots),
                      repaired: true, reclaimed: reclaimed)
    }

    /// Returns the campaign's holds still `held` (the gateway never heard its publish confirmed)
    /// reserved more than `olderThan` ago whose reservation has no order in PostgreSQL, each by the
    /// same compare-and-set as a rollback: an order arriving later finds it released and is
    /// written cancelled. Answers the reservations returned.
    public func reclaim(_ sale: FlashSale, olderThan: Duration, now: Date = Date()) async throws -> [String] {
        let before = now.addingTimeInterval(-Double(olderThan.components.seconds) - Double(olderThan.components.attoseconds) / 1e18)
        let holds = try await stock.unconfirmedHolds(sale: sale.id, slots: sale.stockSlots, before: before)
        guard !holds.isEmpty else { return [] }
        let ordered = try await store.existingOrders(holds.map(\.reservationID))
        return try await stock.reclaim(sale: sale.id, slots: sale.stockSlots, holds.filter { !ordered.contains($0.reservationID) })
    }

    /// What one periodic run did.
    public struct Sweep: Sendable, Equatable {
        /// Campaigns Redis had lost, rebuilt from PostgreSQL.
        public var restored: [String] = []
        public var reclaimed: [String] = []
    }

    /// The periodic job: for `sale`, or every campaign whose Redis state may still live (ended
    /// less than 29 days ago; Redis keeps it 30), a campaign Redis lost is rebuilt (as `fanflow
    /// reconcile flash-sale` does at once), then its stale unconfirmed holds go back.
    public func sweep(sale id: String? = nil, olderThan: Duration = Self.holdBound) async throws -> Sweep {
        var sweep = Sweep()
        let sales: [FlashSale]
        if let id { sales = try await store.get(id).map { [$0] } ?? [] } else { sales = try await store.recent() }
        for sale in sales {
            if try await stock.inventory(sale: sale.id, slots: sale.stockSlots) == nil {
                guard let books = try await store.inventory(sale.id) else { continue }
                try await stock.restore(sale, books: books, orders: try await store.orders(sale: sale.id))
                if sale.audienceTag != nil { _ = try await stock.load(sale, from: store) }
                sweep.restored.append(sale.id)
                continue
            }
            sweep.reclaimed += try await reclaim(sale, olderThan: olderThan)
        }
        return sweep
    }
}
