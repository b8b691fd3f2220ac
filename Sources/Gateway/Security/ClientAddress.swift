import Contracts

// `IPAddress` and `CIDR` live in Contracts: configuration checks `FANFLOW_TRUSTED_PROXIES` with the
// same parser the gateway then uses, so nothing it accepts is dropped here. The aliases keep them
// in scope for every gateway file, importing Contracts or not.
typealias IPAddress = Contracts.IPAddress
typealias CIDR = Contracts.CIDR

/// Who the client is: the peer's address, or, when the peer is one of `FANFLOW_TRUSTED_PROXIES`,
/// the rightmost `X-Forwarded-For` hop that is not itself a trusted proxy. Hops left of that one
/// were written by the client and prove nothing, so they are never believed.
struct TrustedProxies: Sendable {
    let networks: [CIDR]

    func trusts(_ address: IPAddress) -> Bool { networks.contains { $0.contains(address) } }

    /// The client's address, or nil when the peer's address is unknown (a Unix socket).
    func client(peer: IPAddress?, forwardedFor: [String]) -> IPAddress? {
        guard var current = peer else { return nil }
        guard !networks.isEmpty, trusts(current) else { return current }
        // Several X-Forwarded-For headers are one list, in order.
        let hops = forwardedFor.flatMap { $0.split(separator: ",") }
        for hop in hops.reversed().prefix(32) {
            // A hop that is not an address cannot be followed further: the last proxy's word stands.
            guard let address = IPAddress(hop) else { return current }
            current = address
            if !trusts(address) { return address }
        }
        return current
    }
}
