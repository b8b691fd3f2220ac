import Foundation
import Synchronization

/// Campaign definitions for the reservation path, read from PostgreSQL at most every
/// `refreshInterval` per campaign: at the opening second every request needs the campaign, and
/// none of them should cost a database round trip. Unknown ids are remembered too (briefly), so a
/// flood aimed at a wrong id does not reach the database either.
public final class FlashSaleCatalog: Sendable {
    let store: FlashSaleStore
    let refreshInterval: Duration
    private let cache = Mutex<[String: (sale: FlashSale?, loadedAt: ContinuousClock.Instant)]>([:])

    public init(store: FlashSaleStore, refreshInterval: Duration = .seconds(2)) {
        self.store = store
        self.refreshInterval = refreshInterval
    }

    public func sale(_ id: String) async throws -> FlashSale? {
        guard FlashSale.isValidID(id) else { return nil }
        if let cached = cache.withLock({ $0[id] }), ContinuousClock.now - cached.loadedAt < refreshInterval { return cached.sale }
        let sale = try await store.get(id)
        cache.withLock { cache in
            if cache.count > 10_000 { cache.removeAll() }
            cache[id] = (sale, .now)
        }
        return sale
    }
}
