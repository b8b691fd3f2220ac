import Contracts
import Foundation
import Jobs

/// A brand's points rule, as the admin API takes it (`PUT /admin/v1/points-rules/{code}`) and
/// PostgreSQL stores it. JSON field names are the public contract.
///
/// A rule matches events by kind (optionally platform and attribute values), decides how much it
/// grants (per occurrence, or per amount: purchase 10 yuan = 1), how often (once ever, once per
/// natural day, unlimited) and how much at most per natural day, week and month.
public struct PointsRule: Codable, Sendable, Equatable {
    public enum Frequency: String, Codable, Sendable {
        case once, daily, unlimited
    }

    /// Points and growth, either of which may be absent (no cap on it).
    public struct Amounts: Codable, Sendable, Equatable {
        public var points: Int64?
        public var growth: Int64?
        public init(points: Int64? = nil, growth: Int64? = nil) {
            self.points = points
            self.growth = growth
        }
    }

    /// Caps per natural period, counted by the event's own time in the configured zone.
    public struct Caps: Codable, Sendable, Equatable {
        public var daily: Amounts?
        public var weekly: Amounts?
        public var monthly: Amounts?
        public init(daily: Amounts? = nil, weekly: Amounts? = nil, monthly: Amounts? = nil) {
            self.daily = daily
            self.weekly = weekly
            self.monthly = monthly
        }
    }

    /// Grant `points`/`growth` once per whole `unit` of an integer attribute (amount in fen: 1000 = 10 yuan).
    public struct PerAmount: Codable, Sendable, Equatable {
        public var attribute: String
        public var unit: Int64
        public init(attribute: String, unit: Int64) {
            self.attribute = attribute
            self.unit = unit
        }
    }

    /// An event that takes this rule's grant back (a refund): matched to the grant by `key`, an
    /// attribute both events carry (the order id). Pending grants are cancelled, granted ones reversed.
    public struct Reversal: Codable, Sendable, Equatable {
        public var kind: EventKind
        public var key: String
        public init(kind: EventKind, key: String) {
            self.kind = kind
            self.key = key
        }
    }

    public var code: String
    public var kinds: [EventKind]
    public var platforms: [Platform]?
    /// Attribute values the event must carry, compared exactly (`{"channel":"moments"}`).
    public var conditions: [String: JSONValue]?
    public var frequency: Frequency
    public var points: Int64
    public var growth: Int64
    public var perAmount: PerAmount?
    public var caps: Caps?
    public var enabled: Bool
    public var validFrom: Date?
    public var validUntil: Date?
    /// Shown on every ledger entry the rule makes.
    public var reason: String
    /// Earned now, granted this many days after the event (purchases: 15), unless reversed first.
    public var maturesAfterDays: Int?
    /// Earned now, granted on the same wall-clock time this many working days after the event (a
    /// review period for community posts: 5), per the business calendar, unless reversed first.
    public var maturesAfterWorkingDays: Int?
    /// Granted points expire this many days after the event (an `expiry` ledger entry takes back
    /// what is left of them, oldest points spent first).
    public var pointsExpireAfterDays: Int?
    /// Also grant the member named by the event's `referredBy` attribute (an openid on the same app).
    public var referral: Bool?
    public var reversal: Reversal?
    /// Also grant for events whose subject is only claimed. Absent or false: verified subjects only.
    /// A claimed H5 beacon (no member token: any page, or anyone with curl, can name any openid)
    /// earns nothing even so: Loyalty resolves no member from a beacon's openid.
    public var allowClaimed: Bool?

    public init(code: String, kinds: [EventKind], platforms: [Platform]? = nil, conditions: [String: JSONValue]? = nil,
                frequency: Frequency = .unlimited, points: Int64, growth: Int64, perAmount: PerAmount? = nil,
                caps: Caps? = nil, enabled: Bool = true, validFrom: Date? = nil, validUntil: Date? = nil,
                reason: String, maturesAfterDays: Int? = nil, maturesAfterWorkingDays: Int? = nil, pointsExpireAfterDays: Int? = nil,
                referral: Bool? = nil, reversal: Reversal? = nil, allowClaimed: Bool? = nil) {
        self.code = code
        self.kinds = kinds
        self.platforms = platforms
        self.conditions = conditions
        self.frequency = frequency
        self.points = points
        self.growth = growth
        self.perAmount = perAmount
        self.caps = caps
        self.enabled = enabled
        self.validFrom = validFrom
        self.validUntil = validUntil
        self.reason = reason
        self.maturesAfterDays = maturesAfterDays
        self.maturesAfterWorkingDays = maturesAfterWorkingDays
        self.pointsExpireAfterDays = pointsExpireAfterDays
        self.referral = referral
        self.reversal = reversal
        self.allowClaimed = allowClaimed
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case code, kinds, platforms, conditions, frequency, points, growth, perAmount, caps, enabled, validFrom,
             validUntil, reason, maturesAfterDays, maturesAfterWorkingDays, pointsExpireAfterDays, referral, reversal,
             allowClaimed
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        code = try c.decodeIfPresent(String.self, forKey: .code) ?? ""
        kinds = try c.decode([EventKind].self, forKey: .kinds)
        platforms = try c.decodeIfPresent([Platform].self, forKey: .platforms)
        conditions = try c.decodeIfPresent([String: JSONValue].self, forKey: .conditions)
        frequency = try c.decodeIfPresent(Frequency.self, forKey: .frequency) ?? .unlimited
        points = try c.decodeIfPresent(Int64.self, forKey: .points) ?? 0
        growth = try c.decodeIfPresent(Int64.self, forKey: .growth) ?? 0
        perAmount = try c.decodeIfPresent(PerAmount.self, forKey: .perAmount)
        caps = try c.decodeIfPresent(Caps.self, forKey: .caps)
        enabled = try c.decodeIfPresent(Bool.self, forKey: .enabled) ?? true
        validFrom = try Self.decodeTime(c, .validFrom)
        validUntil = try Self.decodeTime(c, .validUntil)
        reason = try c.decode(String.self, forKey: .reason)
        maturesAfterDays = try c.decodeIfPresent(Int.self, forKey: .maturesAfterDays)
        maturesAfterWorkingDays = try c.decodeIfPresent(Int.self, forKey: .maturesAfterWorkingDays)
        pointsExpireAfterDays = try c.decodeIfPresent(Int.self, forKey: .pointsExpireAfterDays)
        referral = try c.decodeIfPresent(Bool.self, forKey: .referral)
        reversal = try c.decodeIfPresent(Reversal.self, forKey: .reversal)
        allowClaimed = try c.decodeIfPresent(Bool.self, forKey: .allowClaimed)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(code, forKey: .code)
        try c.encode(kinds, forKey: .kinds)
        try c.encodeIfPresent(platforms, forKey: .platforms)
        try c.encodeIfPresent(conditions, forKey: .conditions)
        try c.encode(frequency, forKey: .frequency)
        try c.encode(points, forKey: .points)
        try c.encode(growth, forKey: .growth)
        try c.encodeIfPresent(perAmount, forKey: .perAmount)
        try c.encodeIfPresent(caps, forKey: .caps)
        try c.encode(enabled, forKey: .enabled)
        try c.encodeIfPresent(validFrom.map(RFC3339.format), forKey: .validFrom)
        try c.encodeIfPresent(validUntil.map(RFC3339.format), forKey: .validUntil)
        try c.encode(reason, forKey: .reason)
        try c.encodeIfPresent(maturesAfterDays, forKey: .maturesAfterDays)
        try c.encodeIfPresent(maturesAfterWorkingDays, forKey: .maturesAfterWorkingDays)
        try c.encodeIfPresent(pointsExpireAfterDays, forKey: .pointsExpireAfterDays)
        try c.encodeIfPresent(referral, forKey: .referral)
        try c.encodeIfPresent(reversal, forKey: .reversal)
        try c.encodeIfPresent(allowClaimed, forKey: .allowClaimed)
    }

    private static func decodeTime(_ c: KeyedDecodingContainer<CodingKeys>, _ key: CodingKeys) throws -> Date? {
        guard let text = try c.decodeIfPresent(String.self, forKey: key) else { return nil }
        guard let date = RFC3339.parse(text) else {
            throw DecodingError.dataCorruptedError(forKey: key, in: c, debugDescription: "\(key.rawValue) must be an RFC 3339 time")
        }
        return date
    }
}

/// Why a rule was refused; the message names the field.
public struct RuleProblem: Error, Sendable, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

extension PointsRule {
    static let maximumAmount: Int64 = 100_000_000

    /// Parses an admin request body for the rule `code`. Unknown fields are refused, so a misspelt
    /// cap is an error instead of a cap that silently does nothing.
    public static func parse(code: String, json: [UInt8]) throws(RuleProblem) -> PointsRule {
        guard case .object(let object)? = try? JSONValue.parse(json) else {
            throw RuleProblem("body must be a JSON object")
        }
        let known = Set(CodingKeys.allCases.map(\.rawValue))
        if let unknown = object.keys.sorted().first(where: { !known.contains($0) }) {
            throw RuleProblem("unknown field \(unknown)")
        }
        var rule: PointsRule
        do {
            rule = try JSONDecoder().decode(PointsRule.self, from: Data(json))
        } catch let DecodingError.keyNotFound(key, _) {
            throw RuleProblem("\(key.stringValue) is required")
        } catch let DecodingError.typeMismatch(_, context), let DecodingError.dataCorrupted(context),
                let DecodingError.valueNotFound(_, context) {
            let path = context.codingPath.map(\.stringValue).joined(separator: ".")
            throw RuleProblem("\(path.isEmpty ? "body" : path): \(context.debugDescription)")
        } catch {
            throw RuleProblem("\(error)")
        }
        if !rule.code.isEmpty, rule.code != code { throw RuleProblem("code in the body (\(rule.code)) differs from the path (\(code))") }
        rule.code = code
        try rule.validate()
        return rule
    }

    public static func isValidCode(_ code: String) -> Bool {
        (1...64).contains(code.utf8.count) && code.utf8.allSatisfy {
            ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 95 || $0 == 45 || $0 == 46
        }
    }

    public func validate() throws(RuleProblem) {
        guard Self.isValidCode(code) else { throw RuleProblem("code must be 1-64 characters of [a-z0-9._-]") }
        guard !kinds.isEmpty, kinds.count <= 32 else { throw RuleProblem("kinds must list 1-32 event kinds") }
        for kind in kinds where !InputLimits.isKind(kind.rawValue) {
            throw RuleProblem("kinds: \(kind) is not an event kind")
        }
        func amount(_ value: Int64?, _ name: String) throws(RuleProblem) {
            guard let value else { return }
            guard (0...Self.maximumAmount).contains(value) else { throw RuleProblem("\(name) must be 0-\(Self.maximumAmount)") }
        }
        try amount(points, "points")
        try amount(growth, "growth")
        for (name, period) in [("daily", caps?.daily), ("weekly", caps?.weekly), ("monthly", caps?.monthly)] {
            try amount(period?.points, "caps.\(name).points")
            try amount(period?.growth, "caps.\(name).growth")
        }
        if let perAmount {
            guard !perAmount.attribute.isEmpty else { throw RuleProblem("perAmount.attribute is required") }
            guard perAmount.unit > 0 else { throw RuleProblem("perAmount.unit must be a positive integer") }
        }
        guard (1...200).contains(reason.count) else { throw RuleProblem("reason must be 1-200 characters") }
        if let validFrom, let validUntil, validFrom >= validUntil { throw RuleProblem("validFrom must be before validUntil") }
        if let days = maturesAfterDays, !(0...366).contains(days) { throw RuleProblem("maturesAfterDays must be 0-366") }
        if let days = maturesAfterWorkingDays {
            guard (0...250).contains(days) else { throw RuleProblem("maturesAfterWorkingDays must be 0-250") }
            guard (maturesAfterDays ?? 0) == 0 else { throw RuleProblem("give maturesAfterDays or maturesAfterWorkingDays, not both") }
        }
        if let days = pointsExpireAfterDays {
            guard (1...3660).contains(days) else { throw RuleProblem("pointsExpireAfterDays must be 1-3660") }
            guard days > maturesAfterDays ?? 0, days > 2 * (maturesAfterWorkingDays ?? 0) else {
                throw RuleProblem("pointsExpireAfterDays must be after the grant matures")
            }
        }
        if let reversal {
            guard !reversal.key.isEmpty else { throw RuleProblem("reversal.key is required") }
            guard !kinds.contains(reversal.kind) else { throw RuleProblem("reversal.kind must differ from the kinds the rule grants for") }
        }
        if referral == true, frequency != .once {
            throw RuleProblem("a referral rule grants once per new member: frequency must be once")
        }
    }

    /// Whether this rule grants for `event` (enabled, in its window, kind, platform and conditions,
    /// and a verified subject unless the rule allows claimed ones).
    public func matches(_ event: Envelope) -> Bool {
        guard enabled, kinds.contains(event.kind), accepts(event.subject) else { return false }
        if let platforms, !platforms.contains(event.platform) { return false }
        if let validFrom, event.occurredAt < validFrom { return false }
        if let validUntil, event.occurredAt >= validUntil { return false }
        if let conditions {
            for (name, value) in conditions where event.attributes[name] != value { return false }
        }
        return true
    }

    /// Whether the rule acts on this subject: verified always, claimed only with `allowClaimed`.
    /// Reversals ask the same: a claimed refund must not take back a verified grant.
    public func accepts(_ subject: Envelope.Subject) -> Bool {
        subject.verified || allowClaimed == true
    }

    /// When a grant for an event at `occurredAt` becomes spendable; nil for at once.
    public func maturity(of occurredAt: Date, calendar: BusinessCalendar) -> Date? {
        if let days = maturesAfterWorkingDays, days > 0 { return calendar.adding(workingDays: days, to: occurredAt) }
        if let days = maturesAfterDays, days > 0 { return occurredAt.addingTimeInterval(Double(days) * 86_400) }
        return nil
    }

    /// What one occurrence grants before caps: per occurrence, or per whole unit of the amount.
    public func baseGrant(for event: Envelope) -> (points: Int64, growth: Int64) {
        guard let perAmount else { return (points, growth) }
        let amount = max(0, event.attributes[perAmount.attribute]?.int ?? 0)
        let units = amount / perAmount.unit
        let (p, pOverflow) = units.multipliedReportingOverflow(by: points)
        let (g, gOverflow) = units.multipliedReportingOverflow(by: growth)
        return (pOverflow ? Self.maximumAmount : min(p, Self.maximumAmount), gOverflow ? Self.maximumAmount : min(g, Self.maximumAmount))
    }
}
