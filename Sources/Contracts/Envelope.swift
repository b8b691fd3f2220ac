import Foundation

/// The normalized event every process speaks: schema `fanflow.event/1`.
///
/// Published as a persistent JSON message on exchange `fanflow.events` with routing key
/// `<platform>.<kind>` and AMQP `message-id` equal to ``id``. The id is derived from the
/// platform's own keys, so a retried webhook yields the same id and consumers dedupe on it.
public struct Envelope: Codable, Sendable, Hashable {
    public static let schemaName = "fanflow.event/1"

    /// Who the event is about, as the platform identifies them.
    public struct Subject: Codable, Sendable, Hashable {
        public var openid: String?
        public var unionid: String?
        public init(openid: String? = nil, unionid: String? = nil) {
            self.openid = openid
            self.unionid = unionid
        }
    }

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
        guard case .object(let attributes)? = root["attributes"] else { throw DecodingProblem.invalid("attributes must be an object") }
        return Envelope(id: try text("id"), platform: platform, app: try text("app"), kind: EventKind(try text("kind")),
                        subject: Subject(openid: try optional("openid"), unionid: try optional("unionid")),
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
    public static func format(_ date: Date) -> String {
        let millis = Int64((date.timeIntervalSince1970 * 1000).rounded())
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
