import Foundation
import PostgresClient
import RedisClient

/// Thrown instead of deciding while Redis's cap counters are not known to be whole (Redis lost its
/// data and the rebuild has not finished). Not a fault of the events: the consumers' failure
/// classification treats any error it does not list as an outage, so the batch is held with
/// backoff and retried, never dead-lettered.
public struct CountersNotReady: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Whether Redis's cap counters can be trusted, and the rebuild that makes them so.
///
/// A marker key without expiry (``markerKey``) says the counters are whole: it is set by the
/// rebuild, so a Redis that lost its data (FLUSHALL, an empty replica, a new instance) has lost the
/// marker with it. Deciding with zeroed counters and rebuilding later cannot be repaired: a rebuild
/// raises each counter to max(Redis, ledger), and by then Redis holds post-loss decisions while the
/// ledger holds the pre-loss total, so `max` drops one of the two (the fault matrix measured 45
/// grants over a cap in the flush phase and 140 more after it). So while the marker is missing
/// nobody decides: one worker takes ``lockKey`` (SET NX PX with its own token), rebuilds every
/// member's counters from the ledger, sets the marker and releases the lock (compare-and-delete);
/// the others throw ``CountersNotReady`` and retry. On a new install (empty Redis, empty ledger)
/// this is the first batch's instant rebuild.
public struct CounterReadiness: Sendable {
    /// No TTL: it must vanish only with the data it vouches for.
    public static let markerKey = "fanflow:counters:ready"
    public static let lockKey = "fanflow:counters:rebuilding"

    let redis: RedisPool
    let rebuild: CounterRebuild
    /// How long the lock outlives a rebuilder that died: only that long do the others wait before
    /// one of them tries again. A rebuild outlasting it lets a second one start, which is harmless
    /// (a rebuild only raises counters to what the ledger proves).
    let lockMilliseconds: Int
    /// Waited after taking the lock, before reading the ledger: a batch decided just before the
    /// data was lost (or just before its worker saw the marker gone) commits meanwhile, so the
    /// ledger read includes it. 2 s is far longer than a batch takes from decision to commit on a
    /// healthy PostgreSQL; a batch still uncommitted after it is missed by the rebuild.
    let settle: Duration

    public init(redis: RedisPool, database: PostgresPool, calendar: PeriodCalendar,
                lockMilliseconds: Int = 60_000, settle: Duration = .seconds(2)) {
        self.redis = redis
        self.rebuild = CounterRebuild(database: database, redis: redis, calendar: calendar)
        self.lockMilliseconds = lockMilliseconds
        self.settle = settle
    }

    /// The readiness of the counters `decider` decides with, rebuilt from `ledger`'s database.
    public init(decider: PointsDecider, ledger: Ledger) {
        self.init(redis: decider.redis, database: ledger.database, calendar: decider.calendar)
    }

    /// Returns once the counters are whole, rebuilding them first when the marker is missing and no
    /// one else is; throws ``CountersNotReady`` while another worker rebuilds.
    public func ensure(rules: [PointsRule]) async throws {
        if try await isReady() { return }
        let release = try LoyaltyScripts.releaseLock()  // a missing script fails before the lock is taken
        let token = UUID().uuidString
        let taken = try await redis.connection.command(["SET", Self.lockKey, token, "NX", "PX", String(lockMilliseconds)])
        guard !taken.isNull else {
            throw CountersNotReady("the cap counters are being rebuilt from the ledger by another worker (Redis lost its data)")
        }
        do {
            // Another worker may have finished between our GET and our SET NX.
            if try await !isReady() {
                try await Task.sleep(for: settle)
                _ = try await rebuild.run(now: Date(), rules: rules)
                try await Self.markReady(redis)
            }
        } catch {
            _ = try? await redis.connection.evalSHA(release, keys: [Self.lockKey], arguments: [token])
            throw error
        }
        // With the marker set nobody looks at the lock: a failed release only lets it expire.
        _ = try? await redis.connection.evalSHA(release, keys: [Self.lockKey], arguments: [token])
    }

    func isReady() async throws -> Bool {
        try await !redis.connection.command(["GET", Self.markerKey]).isNull
    }

    /// Marks the counters whole (the end of a rebuild, also `fanflow rebuild-counters`).
    public static func markReady(_ redis: RedisPool) async throws {
        try await redis.connection.command(["SET", markerKey, "1"])
    }
}
