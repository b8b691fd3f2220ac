import Foundation

/// What the gateway accepts from outside, in one place: the window of plausible times, the shape
/// of identities, event kinds and attributes, and arithmetic that reports overflow instead of
/// trapping. Everything here is pure, so the gateway's edge and the tests share it.
public enum InputLimits {
    // MARK: Times

    /// 2000-01-01T00:00:00Z. No platform, page or brand system sends an event from before it;
    /// the window keeps every time FanFlow formats, stores or does arithmetic with small.
    public static let earliestTime: Double = 946_684_800
    /// 2100-01-01T00:00:00Z (exclusive).
    public static let latestTime: Double = 4_102_444_800

    /// Whether a time read from input lies in 2000-01-01..2100-01-01 (NaN and infinities do not).
    public static func isPlausible(_ date: Date) -> Bool {
        let seconds = date.timeIntervalSince1970
        return seconds >= earliestTime && seconds < latestTime
    }

    /// Unix seconds from input as a time, or nil outside the window. Never traps (Int64.max,
    /// negative values).
    public static func time(unixSeconds: Int64) -> Date? {
        guard unixSeconds >= Int64(earliestTime), unixSeconds < Int64(latestTime) else { return nil }
        return Date(timeIntervalSince1970: Double(unixSeconds))
    }

    /// Unix milliseconds from input as a time, or nil outside the window.
    public static func time(unixMilliseconds: Int64) -> Date? {
        guard unixMilliseconds >= Int64(earliestTime) * 1000, unixMilliseconds < Int64(latestTime) * 1000 else { return nil }
        return Date(timeIntervalSince1970: Double(unixMilliseconds) / 1000)
    }

    // MARK: Numbers

    /// A Double from input as an Int64, or nil when it is not finite, not whole, or beyond ±2^53
    /// (where doubles stop being exact): `Int64(Double)` traps on NaN, infinities and 1e300.
    public static func wholeNumber(_ value: Double) -> Int64? {
        guard value.isFinite, value == value.rounded(), abs(value) <= 9_007_199_254_740_992 else { return nil }
        return Int64(value)
    }

    /// `a × b`, or nil where it would overflow.
    public static func multiply(_ a: Int64, _ b: Int64) -> Int64? {
        let (product, overflow) = a.multipliedReportingOverflow(by: b)
        return overflow ? nil : product
    }

    /// `a + b`, or nil where it would overflow.
    public static func add(_ a: Int64, _ b: Int64) -> Int64? {
        let (sum, overflow) = a.addingReportingOverflow(b)
        return overflow ? nil : sum
    }

    /// A money amount in fen: 0 to 10^13 (a hundred billion yuan), far above any real order and
    /// far below where `× quantity` or `× 100` could overflow.
    public static let maximumFen: Int64 = 10_000_000_000_000

    /// Yuan with at most two decimals (`"99"`, `"99.5"`, `"99.00"`, as Alipay's `total_amount`)
    /// to fen; nil for anything else or above ``maximumFen``. Digits only: no sign, no exponent.
    public static func fen(fromYuan text: String) -> Int64? {
        let parts = text.utf8.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count) else { return nil }
        func digits(_ part: Substring.UTF8View.SubSequence, _ range: ClosedRange<Int>) -> Int64? {
            guard range.contains(part.count), part.allSatisfy({ $0 >= 48 && $0 <= 57 }) else { return nil }
            return part.reduce(Int64(0)) { $0 * 10 + Int64($1 - 48) }
        }
        // 11 digits of yuan keep yuan × 100 below 10^13 without any overflow check.
        guard let yuan = digits(parts[0], 1...11) else { return nil }
        var cents: Int64 = 0
        if parts.count == 2 {
            guard let fraction = digits(parts[1], 1...2) else { return nil }
            cents = parts[1].count == 1 ? fraction * 10 : fraction
        }
        let fen = yuan * 100 + cents
        return fen <= maximumFen ? fen : nil
    }

    // MARK: Identities

    /// The longest identity accepted. Platforms issue far shorter ones: WeChat openids are 28
    /// characters, unionids 28-29, Alipay user ids 16 (2088 + 12 digits) and its newer open ids
    /// 40-64, QQ bot openids 32, Weibo uids up to 16 digits; 128 leaves room without letting a
    /// 5,000-character "openid" into an index.
    public static let identityMaxBytes = 128

    /// Why an identity (openid, unionid, user id, app id, event id) is not acceptable, or nil:
    /// 1-`maxBytes` bytes of visible ASCII (0x21-0x7E), so no NUL, no control character, no space,
    /// no emoji reaches a queue, a key or an index.
    public static func identityProblem(_ text: String, maxBytes: Int = identityMaxBytes) -> String? {
        let count = text.utf8.count
        guard count >= 1 else { return "is empty" }
        guard count <= maxBytes else { return "is \(count) bytes long, more than \(maxBytes)" }
        guard text.utf8.allSatisfy({ $0 >= 0x21 && $0 <= 0x7E }) else {
            return "must be visible ASCII characters only (no spaces, control characters or NUL)"
        }
        return nil
    }

    // MARK: Event kinds

    /// An AMQP routing key is a short string of at most 255 bytes, and a routing key is
    /// `<platform>.<kind>` (the longest platform name is 7 bytes): 128 fits with room to spare.
    public static let kindMaxBytes = 128

    /// Whether `text` is an acceptable event kind: 1-128 bytes of `[a-z0-9._-]`, dot-separated
    /// words none of which is empty (so the routing key's words are never empty either).
    public static func isKind(_ text: String) -> Bool {
        guard (1...kindMaxBytes).contains(text.utf8.count), text.first != ".", text.last != ".", !text.contains("..") else {
            return false
        }
        return text.utf8.allSatisfy { ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 95 || $0 == 46 || $0 == 45 }
    }

    /// Whether a business kind (from `/v1/events`) is free of the namespaces platform passthrough
    /// kinds live in (`wechat.`, `alipay.`, …, see ``EventKind/passthrough(_:platform:message:)``):
    /// a brand's event can never pass for a platform's, nor a platform's for a brand's.
    public static func isBusinessKind(_ text: String) -> Bool {
        guard isKind(text) else { return false }
        return !Platform.allCases.contains { text.hasPrefix($0.rawValue + ".") }
    }

    // MARK: Attributes

    /// Bounds on an event's attributes. PostgreSQL's text and jsonb cannot hold U+0000, so no
    /// NUL is accepted anywhere, whatever the bounds: one such value would fail its batch's insert.
    public struct AttributeBounds: Sendable {
        public var names: Int
        public var nameBytes: Int
        public var stringBytes: Int
        public var depth: Int

        /// What a brand's system or a page sends: at most 64 names of 1-64 bytes at the top,
        /// strings of at most 8 KiB, nesting at most 8 deep.
        public static let business = AttributeBounds(names: 64, nameBytes: 64, stringBytes: 8 * 1024, depth: 8)
        /// A platform's signed payload kept whole (`raw`): bounded by the 64 KiB body already,
        /// so only NUL and a sane depth are checked.
        public static let webhook = AttributeBounds(names: 64, nameBytes: 64, stringBytes: 64 * 1024, depth: 32)
    }

    /// Why attributes are not acceptable (the message names the attribute), or nil.
    public static func attributesProblem(_ attributes: [String: JSONValue], _ bounds: AttributeBounds = .business) -> String? {
        if attributes.count > bounds.names { return "attributes has \(attributes.count) names, more than \(bounds.names)" }
        for (name, value) in attributes {
            guard (1...bounds.nameBytes).contains(name.utf8.count) else {
                return "attribute names must be 1-\(bounds.nameBytes) bytes"
            }
            if name.utf8.contains(0) { return "attribute names must not contain NUL" }
            if let problem = valueProblem(value, depth: 1, bounds) { return "attributes.\(name) \(problem)" }
        }
        return nil
    }

    private static func valueProblem(_ value: JSONValue, depth: Int, _ bounds: AttributeBounds) -> String? {
        guard depth <= bounds.depth else { return "is nested more than \(bounds.depth) deep" }
        switch value {
        case .string(let text):
            guard text.utf8.count <= bounds.stringBytes else { return "is longer than \(bounds.stringBytes) bytes" }
            return text.utf8.contains(0) ? "must not contain NUL" : nil
        case .number(let number):
            return number.isFinite ? nil : "must be a finite number"
        case .integer, .bool, .null:
            return nil
        case .array(let items):
            for item in items { if let problem = valueProblem(item, depth: depth + 1, bounds) { return problem } }
            return nil
        case .object(let object):
            for (name, item) in object {
                if name.utf8.contains(0) { return "has a name with NUL" }
                if let problem = valueProblem(item, depth: depth + 1, bounds) { return problem }
            }
            return nil
        }
    }
}
