import Synchronization

/// Token buckets by key, in this process, split over 16 independently locked shards: every
/// beacon, reservation and code check takes a bucket, and with one lock the gateway's event loops
/// queued behind each other on it. Two buckets taken together (a site's and an IP's) lock their
/// shards in index order, so there is no deadlock and the pair is taken all or nothing.
public final class TokenBuckets: Sendable {
    /// One bucket's rule: refills `rate` tokens per second up to `capacity`.
    public struct Limit: Sendable, Equatable {
        public let rate: Double
        public let capacity: Double
        /// `perSecond` a second, bursting to `burstSeconds` seconds' worth; nil for 0 (unlimited).
        public static func perSecond(_ perSecond: Int, burstSeconds: Double = 2) -> Limit? {
            perSecond > 0 ? Limit(rate: Double(perSecond), capacity: Double(perSecond) * burstSeconds) : nil
        }
        /// `perMinute` a minute, all of it available at once; nil for 0 (unlimited).
        public static func perMinute(_ perMinute: Int) -> Limit? {
            perMinute > 0 ? Limit(rate: Double(perMinute) / 60, capacity: Double(perMinute)) : nil
        }
    }

    struct Bucket { var tokens: Double; var updated: ContinuousClock.Instant; let limit: Limit }

    final class Shard: Sendable {
        let buckets = Mutex<[String: Bucket]>([:])
    }

    static let shardCount = 16
    private let shards: [Shard]
    private let maxBucketsPerShard: Int

    public init(maxBuckets: Int = 100_000) {
        shards = (0..<Self.shardCount).map { _ in Shard() }
        maxBucketsPerShard = max(1, maxBuckets / Self.shardCount)
    }

    private func shardIndex(_ key: String) -> Int { Int(UInt(bitPattern: key.hashValue) % UInt(Self.shardCount)) }

    public enum Verdict: Equatable { case allowed, firstLimited, secondLimited }

    /// Takes `cost` from both buckets (a nil limit: no bucket), or from neither if either is short.
    public func take(_ first: (key: String, limit: Limit)?, _ second: (key: String, limit: Limit)? = nil, cost: Int = 1) -> Verdict {
        let now = ContinuousClock.now
        let amount = Double(max(0, cost))
        switch (first, second) {
        case (nil, nil):
            return .allowed
        case (let only?, nil):
            return withShard(only.key) { $0.takeAll([(only.key, only.limit, Verdict.firstLimited)], amount, now, maxBucketsPerShard) }
        case (nil, let only?):
            return withShard(only.key) { $0.takeAll([(only.key, only.limit, Verdict.secondLimited)], amount, now, maxBucketsPerShard) }
        case (let a?, let b?):
            let (ia, ib) = (shardIndex(a.key), shardIndex(b.key))
            if ia == ib {
                return withShard(a.key) {
                    $0.takeAll([(a.key, a.limit, .firstLimited), (b.key, b.limit, .secondLimited)], amount, now, maxBucketsPerShard)
                }
            }
            let (low, high) = ia < ib ? (ia, ib) : (ib, ia)
            let bound = maxBucketsPerShard
            return shards[low].buckets.withLock { lowMap in
                shards[high].buckets.withLock { highMap in
                    ia == low ? Self.takePair(&lowMap, a, &highMap, b, amount, now, bound)
                              : Self.takePair(&highMap, a, &lowMap, b, amount, now, bound)
                }
            }
        }
    }

    /// Both buckets of a pair whose keys live in different shards (in place: a copy of a shard's
    /// map would cost its whole size on every request).
    private static func takePair(_ mapA: inout [String: Bucket], _ a: (key: String, limit: Limit),
                                 _ mapB: inout [String: Bucket], _ b: (key: String, limit: Limit),
                                 _ amount: Double, _ now: ContinuousClock.Instant, _ bound: Int) -> Verdict {
        mapA.prune(now, bound)
        mapB.prune(now, bound)
        let bucketA = mapA.refilled(a.key, a.limit, now)
        let bucketB = mapB.refilled(b.key, b.limit, now)
        var verdict = Verdict.allowed
        if bucketA.tokens < amount { verdict = .firstLimited } else if bucketB.tokens < amount { verdict = .secondLimited }
        mapA[a.key] = verdict == .allowed ? Bucket(tokens: bucketA.tokens - amount, updated: now, limit: a.limit) : bucketA
        mapB[b.key] = verdict == .allowed ? Bucket(tokens: bucketB.tokens - amount, updated: now, limit: b.limit) : bucketB
        return verdict
    }

    private func withShard<R>(_ key: String, _ body: (inout [String: Bucket]) -> R) -> R {
        shards[shardIndex(key)].buckets.withLock { body(&$0) }
    }

    public var count: Int { shards.reduce(0) { $0 + $1.buckets.withLock { $0.count } } }
}

extension Dictionary where Key == String, Value == TokenBuckets.Bucket {
    /// A bucket with what it refilled since it was last touched (a new key starts full).
    func refilled(_ key: String, _ limit: TokenBuckets.Limit, _ now: ContinuousClock.Instant) -> TokenBuckets.Bucket {
        guard var bucket = self[key] else { return .init(tokens: limit.capacity, updated: now, limit: limit) }
        bucket.tokens = Swift.min(limit.capacity, bucket.tokens + limit.rate * (now - bucket.updated).seconds)
        bucket.updated = now
        return bucket
    }

    /// Past the bound, buckets that have refilled completely go: a full bucket and no bucket are the same.
    mutating func prune(_ now: ContinuousClock.Instant, _ bound: Int) {
        guard count >= bound else { return }
        self = filter { $0.value.tokens + $0.value.limit.rate * (now - $0.value.updated).seconds < $0.value.limit.capacity }
    }

    mutating func takeAll(_ items: [(key: String, limit: TokenBuckets.Limit, refusal: TokenBuckets.Verdict)], _ amount: Double,
                          _ now: ContinuousClock.Instant, _ bound: Int) -> TokenBuckets.Verdict {
        prune(now, bound)
        let buckets = items.map { refilled($0.key, $0.limit, now) }
        for (item, bucket) in zip(items, buckets) where bucket.tokens < amount {
            for (other, refilled) in zip(items, buckets) { self[other.key] = refilled }
            return item.refusal
        }
        for (item, bucket) in zip(items, buckets) {
            self[item.key] = .init(tokens: bucket.tokens - amount, updated: now, limit: item.limit)
        }
        return .allowed
    }
}
