import Contracts
@preconcurrency import Crypto

/// Deterministic event ids: derived from the platform's own keys, so a retried webhook gets the
/// same id and every consumer can dedupe on it. `<platform>:` + 32 hex characters of SHA-256 over
/// the app and the parts, separated by a byte that cannot occur in them (unit separator).
public enum EventID {
    public static func derive(_ platform: Platform, app: String, _ parts: [String]) -> String {
        var hasher = SHA256()
        hasher.update(data: Array(platform.rawValue.utf8))
        for part in [app] + parts {
            hasher.update(data: [0x1F])
            hasher.update(data: Array(part.utf8))
        }
        return platform.rawValue + ":" + Bytes.hex(hasher.finalize().prefix(16))
    }
}

/// Freshness of a platform's timestamp: replay protection the common SDKs leave out.
struct FreshnessWindow: Sendable {
    let seconds: Int

    /// Accepts unix seconds or milliseconds (Weibo sends milliseconds).
    func check(_ text: String?, now: Double) throws(GatewayError) {
        guard let text, let value = Int64(text), value > 0 else {
            throw GatewayError.badRequest("missing_timestamp", "timestamp is missing or not an integer")
        }
        let seconds = value > 100_000_000_000 ? Double(value) / 1000 : Double(value)
        guard abs(now - seconds) <= Double(self.seconds) else { throw GatewayError.staleTimestamp }
    }
}

extension EventKind {
    /// A platform's own event name as a kind: lower-cased, with anything but [a-z0-9_.] made `_`.
    static func passthrough(_ raw: String, prefix: String = "") -> EventKind {
        let cleaned = raw.lowercased().unicodeScalars.prefix(64).map { c -> Character in
            (c >= "a" && c <= "z") || (c >= "0" && c <= "9") || c == "_" || c == "." ? Character(c) : "_"
        }
        return EventKind(prefix + (cleaned.isEmpty ? "unknown" : String(cleaned)))
    }
}

extension XMLElement {
    /// Every field as JSON, nested elements as objects: the platform's payload kept whole in
    /// `attributes.raw`, so fields we do not name yet are not lost.
    var jsonFields: [String: JSONValue] {
        var out: [String: JSONValue] = [:]
        for child in children {
            out[child.name] = child.children.isEmpty ? .string(child.text) : .object(child.jsonFields)
        }
        return out
    }
}

extension JSONValue {
    /// An integer that is a JSON number, not a string that looks like one.
    var intStrict: Int64? {
        switch self {
        case .integer(let v): v
        case .number(let v): v == v.rounded() && abs(v) < 9.0e15 ? Int64(v) : nil
        default: nil
        }
    }
}
