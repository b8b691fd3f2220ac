import Foundation

/// Compares a campaign's books in PostgreSQL with its live state in Redis, and repairs Redis from
/// PostgreSQL: at once when Redis lost the campaign (nothing live can be lost then), and when
/// asked (`repair`) when both exist and disagree. Reservations the orders pool has not written
/// yet are in Redis but not in PostgreSQL, so a live campaign can disagree for a moment: repair
/// one that still has Redis state only once the orders queue is drained.
public struct Reconciler: Sendable {
    let store: FlashSaleStore
    let stock: FlashSaleStock

    public init(store: FlashSaleStore, stock: FlashSaleStock) {
        self.store = store
        self.stock = stock
    }

    public struct Report: Sendable, Equatable {
        public let postgres: Inventory
        public let redisBefore: Inventory?
        public let redisAfter: Inventory?
        public let repaired: Bool
        public var agree: Bool { redisAfter == postgres }
    }

    public enum Problem: Error, Equatable { case unknownSale(String) }

    public func reconcile(_ id: String, repair: Bool) async throws -> Report {
        guard let sale = try await store.get(id), let books = try await store.inventory(id) else { throw Problem.unknownSale(id) }
        let before = try await stock.inventory(sale: id, slots: sale.stockSlots)
        guard before != books, before == nil || repair else {
            return Report(postgres: books, redisBefore: before, redisAfter: before, repaired: false)
        }
        try await stock.restore(sale, books: books, orders: try await store.orders(sale: id))
        if sale.audienceTag != nil { _ = try await stock.load(sale, from: store) }
        return Report(postgres: books, redisBefore: before, redisAfter: try await stock.inventory(sale: id, slots: sale.stockSlots), repaired: true)
    }
}
