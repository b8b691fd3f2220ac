import ClientSupport
/// Token buckets per beacon site and per client, kept in this process: beacons are the only
/// unauthenticated traffic, and one noisy page must not starve webhooks of the gateway's time.
/// Each gateway process limits on its own (N gateways allow N times the rate), which is enough
/// for the purpose and costs no round trip. Clients count by address, IPv6 clients by their /64
/// (``IPAddress/limitKey``); the buckets are sharded (``TokenBuckets``), not behind one lock.
final class BeaconLimits: Sendable {
    private let perSite: TokenBuckets.Limit?
    private let perIP: TokenBuckets.Limit?
    private let buckets = TokenBuckets()

    /// A bucket holds up to two seconds' worth, so short bursts (a page's first beacons) pass.
    init(perSite: Int, perIP: Int) {
        self.perSite = .perSecond(perSite)
        self.perIP = .perSecond(perIP)
    }

    enum Verdict: Equatable { case allowed, siteLimited, ipLimited }

    /// Takes `cost` tokens from both buckets, or none if either is short.
    func take(site: String, ip: String, cost: Int) -> Verdict {
        let key = IPAddress(ip)?.limitKey ?? ip
        switch buckets.take(perSite.map { ("s:" + site, $0) }, perIP.map { ("i:" + key, $0) }, cost: cost) {
        case .allowed: return .allowed
        case .firstLimited: return .siteLimited
        case .secondLimited: return .ipLimited
        }
    }
}
