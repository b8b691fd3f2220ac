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
                if try await rebuild(sale) { sweep.restored.append(sale.id) }
                continue
            }
            sweep.reclaimed += try await reclaim(sale, olderThan: olderThan)
        }
        return sweep
    }

    /// The rebuilding half of ``sweep`` alone: every campaign of `sale` (or every recent one) that
    /// Redis lost, rebuilt. Answers those rebuilt.
    public func rebuildLost(sale id: String? = nil) async throws -> [String] {
        let sales: [FlashSale]
        if let id { sales = try await store.get(id).map { [$0] } ?? [] } else { sales = try await store.recent() }
        var rebuilt: [String] = []
        for sale in sales where try await stock.inventory(sale: sale.id, slots: sale.stockSlots) == nil {
            if try await rebuild(sale) { rebuilt.append(sale.id) }
        }
        return rebuilt
    }

    /// How long a rebuild may keep others waiting: the lock's expiry, far above the time one
    /// takes (a campaign of 10,000 orders is rebuilt in well under a second).
    static let rebuildLock = Duration.seconds(60)

    /// Rebuilds a campaign Redis lost from PostgreSQL (the orders pool does it as soon as an order
    /// or expiry finds it lost, the periodic job a minute at most later). True when this call
    /// rebuilt it; false when Redis holds it (someone else rebuilt it) or PostgreSQL does not know it.
    ///
    /// Safe with orders on their way: while Redis lacks the campaign every hold change answers
    /// `lost` and changes nothing, so no order can be written in PostgreSQL against it, and the
    /// books read here are every order there is (but one a pool had moved in Redis *before* the
    /// loss and not committed yet: a window of one batch's transaction, milliseconds). Orders that
    /// come later find their hold record gone and are adopted (units taken again while there are
    /// enough, else cancelled), so stock is never oversold. Two rebuilds at once would not be safe
    /// (the second would overwrite what an order took from the first), so one process at a time
    /// holds a Redis lock and checks again that the campaign is still lost; the others wait for it
    /// (up to ``rebuildLock``) and then find the campaign there.
    public func rebuild(_ sale: FlashSale) async throws -> Bool {
        let token = UUID().uuidString
        let deadline = ContinuousClock.now + Self.rebuildLock
        let milliseconds = Int(Self.rebuildLock.components.seconds) * 1000
        while try await stock.inventory(sale: sale.id, slots: sale.stockSlots) == nil {
            guard try await stock.lockRebuild(sale.id, token: token, milliseconds: milliseconds) else {
                guard ContinuousClock.now < deadline else { throw FlashSaleStock.CampaignLost(sale: sale.id) }
                try await Task.sleep(for: .milliseconds(50))
                continue
            }
            do {
                let rebuilt = try await rebuildLocked(sale)
                try await stock.unlockRebuild(sale.id, token: token)
                return rebuilt
            } catch {
                try? await stock.unlockRebuild(sale.id, token: token)
                throw error
            }
        }
        return false
    }

    func rebuildLocked(_ sale: FlashSale) async throws -> Bool {
        guard try await stock.inventory(sale: sale.id, slots: sale.stockSlots) == nil,
              let books = try await store.inventory(sale.id) else { return false }
        try await stock.restore(sale, books: books, orders: try await store.orders(sale: sale.id))
        if sale.audienceTag != nil { _ = try await stock.load(sale, from: store) }
        return true
    }
}
