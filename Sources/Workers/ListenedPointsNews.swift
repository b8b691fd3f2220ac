import Contracts
import Loyalty
import Pushes
import Synchronization

/// `FANFLOW_POINTS_NEWS=auto`: points news of a kind are published while an enabled push trigger
/// names its event. The triggers are read at most every `refresh`, so a trigger saved or disabled
/// shows within that; a read that fails publishes (a message too many is dropped by the push pool,
/// one missing is a member never told).
public final class ListenedPointsNews: PointsNewsPolicy {
    let store: PushStore
    let refresh: Duration
    private let cache = Mutex<(events: Set<String>, at: ContinuousClock.Instant?)>(([], nil))

    public init(store: PushStore, refresh: Duration = .seconds(5)) {
        self.store = store
        self.refresh = refresh
    }

    public func announces(_ kind: EventKind) async -> Bool {
        let event = "\(Platform.fanflow.rawValue).\(kind.rawValue)"
        let cached = cache.withLock { state -> Set<String>? in
            guard let at = state.at, ContinuousClock.now - at < refresh else { return nil }
            return state.events
        }
        if let cached { return cached.contains(event) }
        guard let triggers = try? await store.triggers() else { return true }
        let events = Set(triggers.filter(\.enabled).map(\.event))
        cache.withLock { $0 = (events, .now) }
        return events.contains(event)
    }
}

extension PointsNews {
    /// The policy this setting stands for; `auto` reads the push triggers from `store`.
    public func policy(pushes store: PushStore) -> any PointsNewsPolicy {
        switch self {
        case .auto: ListenedPointsNews(store: store)
        case .on: AlwaysAnnounce()
        case .off: NeverAnnounce()
        }
    }
}
