import Audiences
import Pushes

/// A segment's members as a broadcast reads them: Pushes asks through its own small protocol
/// (``BroadcastAudience``), Audiences answers from its segment store, and neither domain imports
/// the other. Here, in the layer both processes that need it share: the gateway checks a
/// segment exists when a broadcast is created, the push worker pages its members per batch.
public struct SegmentAudience: BroadcastAudience {
    let store: SegmentStore

    public init(store: SegmentStore) { self.store = store }

    public func segmentExists(_ code: String) async throws -> Bool {
        // No member id is past Int64.max: the page is empty, and nil only when there is no segment,
        // without counting the segment's members as a GET of it does.
        try await store.members(segment: code, after: .max, limit: 1) != nil
    }

    public func members(segment code: String, after cursor: Int64, limit: Int) async throws -> [Int64]? {
        try await store.members(segment: code, after: cursor, limit: limit)
    }
}
