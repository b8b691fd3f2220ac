import Foundation

/// The normalized event every process speaks: schema `fanflow.event/1`.
///
/// Published as a persistent JSON message on exchange `fanflow.events` with routing key
/// `<platform>.<kind>` and AMQP `message-id` equal to ``id``. The id is derived from the
/// platform's own keys, so a retried webhook yields the same id and consumers dedupe on it.
public struct Envelope: Codable, Sendable, Hashable {
    public static let schemaName = "fanflow.event/1"

    /// Who the event is about, as the platform identifies them, and whether anyone vouched for it.
    public struct Subject: Codable, Sendable, Hashable {
        public var openid: String?
        public var unionid: String?
        /// The FanFlow member, where the sender proved it (a beacon with a member token).
        public var memberId: Int64?
        /// Whether the subject was vouched for: a platform-signed webhook, a signed server event
        /// (`/v1/events`), a beacon with a valid member token. A beacon without one only *claims*
        /// its openid (any page, or anyone with curl, can send any openid): reward rules grant on
        /// claimed subjects only where they opt in (``PointsRule``'s `allowClaimed`).
        ///
        /// On the wire `"verified": true|false`. An envelope written before the field existed
        /// (still queued across an upgrade) is read as claimed when its platform is `h5` and as
        /// verified otherwise: exactly what those envelopes were (``Envelope/legacyVerified(_:)``).
        public var verified: Bool

        public init(openid: String? = nil, unionid: String? = nil, memberId: Int64? = nil, verified: Bool = true) {
            self.openid = openid
            self.unionid = unionid
            self.memberId = memberId
            self.verified = verified
        }

        enum CodingKeys: String, CodingKey { case openid, unionid, memberId, verified }

        /// A subject on its own: a missing `verified` reads as true. Inside an envelope the
        /// envelope's platform decides instead (see ``verified``).
        public init(from decoder: any Decoder) throws {
            try self.init(from: decoder, platform: nil)
        }

        init(from decoder: any Decoder, platform: Platform?) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            openid = try c.decodeIfPresent(String.self, forKey: .openid)
            unionid = try c.decodeIfPresent(String.self, forKey: .unionid)
            memberId = try c.decodeIfPresent(Int64.self, forKey: .memberId)
            verified = try c.decodeIfPresent(Bool.self, forKey: .verified) ?? platform.map(Envelope.legacyVerified) ?? true
        }
    }

    /// How an envelope without `subject.verified` (written before it existed) is read: beacons
    /// (`h5`) were never vouched for, every other platform's subject was.
    public static func legacyVerified(_ platform: Platform) -> Bool { platform != .h5 }

    public var schema: String
    public var id: String
    public var platform: Platform
    public var app: String
    public var kind: EventKind
    public var subject: Subject
    public var occurredAt: Date
    public var receivedAt: Date
    public var attributes: [String: JSONValue]

    public init(id: String, platform: Platform, app: String, kind: EventKind, subject: Subject,
                occurredAt: Date, receivedAt: Date, attributes: [String: JSONValue] = [:]) {
        self.schema = Self.schemaName
        self.id = id
        self.platform = platform
        self.app = app
        self.kind = kind
        self.subject = subject
        self.occurredAt = occurredAt
        self.receivedAt = receivedAt
        self.attributes = attributes
    }

    enum CodingKeys: String, CodingKey {
        case schema, id, platform, app, kind, subject, occurredAt, receivedAt, attributes
    }

    /// By hand only so that the subject's missing `verified` can follow the platform.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        schema = try c.decode(String.self, forKey: .schema)
        id = try c.decode(String.self, forKey: .id)
        platform = try c.decode(Platform.self, forKey: .platform)
        app = try c.decode(String.self, forKey: .app)
        kind = try c.decode(EventKind.self, forKey: .kind)
        subject = try Subject(from: try c.superDecoder(forKey: .subject), platform: platform)
        occurredAt = try c.decode(Date.self, forKey: .occurredAt)
        receivedAt = try c.decode(Date.self, forKey: .receivedAt)
        attributes = try c.decode([String: JSONValue].self, forKey: .attributes)
    }

    /// `<platform>.<kind>`: what topic bindings match on.
    public var routingKey: String { "\(platform.rawValue).\(kind.rawValue)" }

    public enum DecodingProblem: Error, Equatable {
        case unsupportedSchema(String)
        /// Not an envelope: the reason names the field.
        case invalid(String)
    }

    /// Encodes with RFC 3339 times (fractional seconds kept) and sorted keys, so the same event
    /// always has the same bytes.
    public func encoded() throws -> [UInt8] {
        EnvelopeWriter.write(self)
    }

    /// The same bytes through Foundation's `JSONEncoder`: the reference the hand-written writer is
    /// tested against.
    public func encodedWithFoundation() throws -> [UInt8] {
        Array(try Self.encoder.encode(self))
    }

    /// Decodes and checks the schema, so a message of a future major version is refused, not misread.
    /// Every message a worker takes passes here, so it reads through ``JSONValue/parse(_:)`` rather
    /// than `JSONDecoder` (the same result, tested against ``decodedWithFoundation(_:)``).
    public static func decode(_ bytes: [UInt8]) throws -> Envelope {
        guard case .object(let root) = try JSONValue.parse(bytes) else { throw DecodingProblem.invalid("not a JSON object") }
        func text(_ key: String) throws -> String {
            guard case .string(let value)? = root[key] else { throw DecodingProblem.invalid("\(key) must be a string") }
            return value
        }
        func time(_ key: String) throws -> Date {
            guard let date = RFC3339.parse(try text(key)) else { throw DecodingProblem.invalid("\(key) is not an RFC 3339 time") }
            return date
        }
        let schema = try text("schema")
        guard schema == schemaName else { throw DecodingProblem.unsupportedSchema(schema) }
        guard let platform = Platform(rawValue: try text("platform")) else { throw DecodingProblem.invalid("unknown platform") }
        guard case .object(let subject)? = root["subject"] else { throw DecodingProblem.invalid("subject must be an object") }
        func optional(_ key: String) throws -> String? {
            switch subject[key] {
            case nil, .null?: return nil
            case .string(let value)?: return value
            default: throw DecodingProblem.invalid("subject.\(key) must be a string")
            }
        }
        let memberId: Int64?
        switch subject["memberId"] {
        case nil, .null?: memberId = nil
        case .integer(let value)?: memberId = value
        default: throw DecodingProblem.invalid("subject.memberId must be an integer")
        }
        let verified: Bool
        switch subject["verified"] {
        case nil, .null?: verified = legacyVerified(platform)
        case .bool(let value)?: verified = value
        default: throw DecodingProblem.invalid("subject.verified must be a boolean")
        }
        guard case .object(let attributes)? = root["attributes"] else { throw DecodingProblem.invalid("attributes must be an object") }
        return Envelope(id: try text("id"), platform: platform, app: try text("app"), kind: EventKind(try text("kind")),
                        subject: Subject(openid: try optional("openid"), unionid: try optional("unionid"), memberId: memberId,
                                         verified: verified),
                        occurredAt: try time("occurredAt"), receivedAt: try time("receivedAt"), attributes: attributes)
    }

    /// The same through Foundation's `JSONDecoder`: the reference ``decode(_:)`` is tested against.
    public static func decodedWithFoundation(_ bytes: [UInt8]) throws -> Envelope {
        let envelope = try decoder.decode(Envelope.self, from: Data(bytes))
        guard envelope.schema == schemaName else { throw DecodingProblem.unsupportedSchema(envelope.schema) }
        return envelope
    }

    private static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(RFC3339.format(date))
        }
        return encoder
    }()

    private static let decoder: JSONDecoder = {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .custom { decoder in
            let container = try decoder.singleValueContainer()
            let text = try container.decode(String.self)
            guard let date = RFC3339.parse(text) else {
                throw DecodingError.dataCorruptedError(in: container, debugDescription: "not an RFC 3339 time: \(text)")
            }
            return date
        }
        return decoder
    }()
}

/// RFC 3339 times as the envelope carries them: UTC with milliseconds on output; any offset
/// (`Z`, `+08:00`) and any number of fraction digits on input. Written out by hand because it is
/// on every message's path and must not depend on a locale or a formatter's defaults.
public enum RFC3339 {
    /// 0001-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z in milliseconds: the four-digit years
    /// the format can write.
    static let firstMillis: Int64 = -62_135_596_800_000, lastMillis: Int64 = 253_402_300_799_999

    /// Never traps: a time beyond years 1-9999 (or NaN, ±infinity) is written as the nearest end
    /// of that range (NaN as 1970). Times from input are refused at the edge long before that
    /// (``InputLimits/isPlausible(_:)``); this is the second line, for a process that must not die.
    public static func format(_ date: Date) -> String {
        let millis = clampedMillis(date.timeIntervalSince1970)
        let days = millis >= 0 ? millis / 86_400_000 : (millis - 86_399_999) / 86_400_000
        let inDay = millis - days * 86_400_000
        let (year, month, day) = civil(fromDays: days)
        func pad(_ value: Int64, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return "\(pad(year, 4))-\(pad(month, 2))-\(pad(day, 2))T\(pad(inDay / 3_600_000, 2)):"
            + "\(pad(inDay / 60_000 % 60, 2)):\(pad(inDay / 1000 % 60, 2)).\(pad(inDay % 1000, 3))Z"
    }

    /// Seconds since 1970 as whole milliseconds within years 1-9999; `Int64(Double)` would trap
    /// beyond ±9.2e18 and on NaN.
    static func clampedMillis(_ seconds: Double) -> Int64 {
        guard !seconds.isNaN else { return 0 }
        let millis = (seconds * 1000).rounded()
        if millis <= Double(firstMillis) { return firstMillis }
        if millis >= Double(lastMillis) { return lastMillis }
        return Int64(millis)
    }

    public static func parse(_ text: String) -> Date? {
        let b = Array(text.utf8)
        func number(_ from: Int, _ count: Int) -> Int64? {
            guard from + count <= b.count else { return nil }
            var value: Int64 = 0
            for byte in b[from..<(from + count)] {
                guard byte >= 48, byte <= 57 else { return nil }
                value = value * 10 + Int64(byte - 48)
            }
            return value
        }
        guard b.count >= 20, b[4] == UInt8(ascii: "-"), b[7] == UInt8(ascii: "-"),
              [UInt8(ascii: "T"), UInt8(ascii: "t"), UInt8(ascii: " ")].contains(b[10]),
              b[13] == UInt8(ascii: ":"), b[16] == UInt8(ascii: ":"),
              let year = number(0, 4), let month = number(5, 2), let day = number(8, 2),
              let hour = number(11, 2), let minute = number(14, 2), let second = number(17, 2),
              (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60, second < 61
        else { return nil }
        var index = 19
        var fraction = 0.0
        if index < b.count, b[index] == UInt8(ascii: ".") {
            index += 1
            var scale = 0.1
            let start = index
            while index < b.count, b[index] >= 48, b[index] <= 57 {
                fraction += Double(b[index] - 48) * scale
                scale /= 10
                index += 1
            }
            guard index > start else { return nil }
        }
        guard index < b.count else { return nil }
        var offsetSeconds: Int64 = 0
        switch b[index] {
        case UInt8(ascii: "Z"), UInt8(ascii: "z"):
            guard index + 1 == b.count else { return nil }
        case UInt8(ascii: "+"), UInt8(ascii: "-"):
            guard index + 6 == b.count, b[index + 3] == UInt8(ascii: ":"),
                  let h = number(index + 1, 2), let m = number(index + 4, 2), h < 24, m < 60 else { return nil }
            offsetSeconds = (h * 3600 + m * 60) * (b[index] == UInt8(ascii: "-") ? -1 : 1)
        default:
            return nil
        }
        let days = daysFromCivil(year: year, month: month, day: day)
        let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offsetSeconds
        return Date(timeIntervalSince1970: Double(seconds) + fraction)
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    static func daysFromCivil(year: Int64, month: Int64, day: Int64) -> Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let doy = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    static func civil(fromDays days: Int64) -> (Int64, Int64, Int64) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        return (month <= 2 ? yoe + era * 400 + 1 : yoe + era * 400, month, day)
    }
}
