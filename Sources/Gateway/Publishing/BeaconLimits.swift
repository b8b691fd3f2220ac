import Synchronization

/// Token buckets per beacon site and per client IP, kept in this process: beacons are the only
/// unauthenticated traffic, and one noisy page must not starve webhooks of the gateway's time.
/// Each gateway process limits on its own (N gateways allow N times the rate), which is enough
/// for the purpose and costs no round trip.
final class BeaconLimits: Sendable {
    struct Bucket { var tokens: Double; var updated: ContinuousClock.Instant }

    private let perSite: Double
    private let perIP: Double
    private let buckets = Mutex<[String: Bucket]>([:])
    private static let maxBuckets = 100_000

    init(perSite: Int, perIP: Int) {
        self.perSite = Double(perSite)
        self.perIP = Double(perIP)
    }

    enum Verdict: Equatable { case allowed, siteLimited, ipLimited }

    /// Takes `cost` tokens from both buckets, or none if either is short.
    func take(site: String, ip: String, cost: Int) -> Verdict {
        let now = ContinuousClock.now
        return buckets.withLock { buckets in
            if buckets.count > Self.maxBuckets {
                // Idle buckets are full buckets: forgetting them changes nothing.
                buckets = buckets.filter { now - $0.value.updated < .seconds(2) }
            }
            let siteKey = "s:" + site, ipKey = "i:" + ip
            var siteBucket = refill(buckets[siteKey], rate: perSite, now: now)
            var ipBucket = refill(buckets[ipKey], rate: perIP, now: now)
            let amount = Double(cost)
            if perSite > 0, siteBucket.tokens < amount { buckets[siteKey] = siteBucket; return .siteLimited }
            if perIP > 0, ipBucket.tokens < amount { buckets[ipKey] = ipBucket; return .ipLimited }
            siteBucket.tokens -= amount
            ipBucket.tokens -= amount
            if perSite > 0 { buckets[siteKey] = siteBucket }
            if perIP > 0 { buckets[ipKey] = ipBucket }
            return .allowed
        }
    }

    /// A bucket holds up to two seconds' worth, so short bursts (a page's first beacons) pass.
    private func refill(_ bucket: Bucket?, rate: Double, now: ContinuousClock.Instant) -> Bucket {
        let capacity = rate * 2
        guard var bucket else { return Bucket(tokens: capacity, updated: now) }
        let elapsed = now - bucket.updated
        bucket.tokens = min(capacity, bucket.tokens + rate * elapsed.seconds)
        bucket.updated = now
        return bucket
    }
}
