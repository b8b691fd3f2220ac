#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An IPv4 or IPv6 address as bytes (4 or 16), parsed with `inet_pton` (no name lookup).
public struct IPAddress: Hashable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]

    public init?(_ text: some StringProtocol) {
        var trimmed = Self.trimmed(String(text))
        // `[2001:db8::1]` and `[2001:db8::1]:443`, `1.2.3.4:80` as some proxies write them.
        if trimmed.hasPrefix("["), let close = trimmed.firstIndex(of: "]") {
            trimmed = String(trimmed[trimmed.index(after: trimmed.startIndex)..<close])
        } else if trimmed.filter({ $0 == ":" }).count == 1, trimmed.contains(".") {
            trimmed = String(trimmed.prefix { $0 != ":" })
        }
        guard !trimmed.isEmpty, trimmed.utf8.count <= 64 else { return nil }
        if trimmed.contains(":") {
            var address = in6_addr()
            guard inet_pton(AF_INET6, trimmed, &address) == 1 else { return nil }
            let raw = withUnsafeBytes(of: &address) { Array($0) }
            // IPv4-mapped (::ffff:a.b.c.d) is the IPv4 address: one client, one bucket.
            let mapped = raw[0..<10].allSatisfy({ $0 == 0 }) && raw[10] == 0xFF && raw[11] == 0xFF
            bytes = mapped ? Array(raw[12..<16]) : raw
        } else {
            var address = in_addr()
            guard inet_pton(AF_INET, trimmed, &address) == 1 else { return nil }
            bytes = withUnsafeBytes(of: &address) { Array($0) }
        }
    }

    /// Spaces and tabs around an address (as proxies write `a, b`) are not part of it.
    static func trimmed(_ text: String) -> String {
        let scalars = text.unicodeScalars.drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed()
        return String(String.UnicodeScalarView(scalars))
    }

    public var isV6: Bool { bytes.count == 16 }

    public var description: String {
        if !isV6 { return bytes.map(String.init).joined(separator: ".") }
        var groups: [String] = []
        for index in stride(from: 0, to: 16, by: 2) { groups.append(String(UInt16(bytes[index]) << 8 | UInt16(bytes[index + 1]), radix: 16)) }
        return groups.joined(separator: ":")
    }

    /// The key per-client limits count under: the address for IPv4, its /64 for IPv6, since one
    /// subscriber is routinely handed a whole /64 and could otherwise take a fresh address per request.
    public var limitKey: String {
        guard isV6 else { return description }
        var groups: [String] = []
        for index in stride(from: 0, to: 8, by: 2) { groups.append(String(UInt16(bytes[index]) << 8 | UInt16(bytes[index + 1]), radix: 16)) }
        return groups.joined(separator: ":") + "::/64"
    }
}

/// A network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`; a bare address is a /32 or /128).
public struct CIDR: Hashable, Sendable {
    public let network: [UInt8]
    public let prefix: Int

    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count), let address = IPAddress(parts[0]) else { return nil }
        let width = address.bytes.count * 8
        if parts.count == 2 {
            guard let bits = Int(parts[1]), (0...width).contains(bits) else { return nil }
            prefix = bits
        } else {
            prefix = width
        }
        network = Self.masked(address.bytes, prefix)
    }

    public func contains(_ address: IPAddress) -> Bool {
        address.bytes.count == network.count && Self.masked(address.bytes, prefix) == network
    }

    private static func masked(_ bytes: [UInt8], _ prefix: Int) -> [UInt8] {
        bytes.enumerated().map { index, byte in
            let bits = max(0, min(8, prefix - index * 8))
            return bits == 8 ? byte : byte & UInt8(truncatingIfNeeded: 0xFF << (8 - bits))
        }
    }
}
