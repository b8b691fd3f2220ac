import Contracts
import Foundation
import PostgresClient

/// Why a tag, rule or segment definition was refused: the path of the bad node
/// (`match.all[2].tag`) and what is wrong with it. Routes answer it with 422.
public struct DefinitionProblem: Error, Sendable, Equatable, CustomStringConvertible {
    public let path: String
    public let message: String
    public init(_ path: String, _ message: String) {
        self.path = path
        self.message = message
    }
    public var description: String { path.isEmpty ? message : "\(path): \(message)" }
}

/// The shape of codes: tags, tag rules and segments are named by 1-64 characters of `[a-z0-9._-]`
/// (the same alphabet as points rules), so a code is safe in a path, a source (`rule:<code>`) and
/// a log line.
public enum AudienceCode {
    public static let rule = "1-64 characters of [a-z0-9._-]"

    public static func isValid(_ code: String) -> Bool {
        let bytes = Array(code.utf8)
        return (1...64).contains(bytes.count) && bytes.allSatisfy { byte in
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
                || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "-")
        }
    }
}

/// A sliding window, `"1h"`…`"365d"`, kept in whole hours: the granularity of the counts.
public struct TimeWindow: Sendable, Hashable, CustomStringConvertible {
    public let hours: Int
    public static let maximumHours = 365 * 24

    public init?(hours: Int) {
        guard (1...Self.maximumHours).contains(hours) else { return nil }
        self.hours = hours
    }

    /// `"<n>h"` or `"<n>d"`, 1 hour to 365 days.
    public init?(parsing text: String) {
        guard let unit = text.last, unit == "h" || unit == "d", text.count >= 2, text.count <= 5,
              text.dropLast().allSatisfy({ $0.isASCII && $0.isNumber }), let n = Int(text.dropLast()) else { return nil }
        self.init(hours: unit == "d" ? n * 24 : n)
    }

    public var description: String { hours % 24 == 0 ? "\(hours / 24)d" : "\(hours)h" }
    public var seconds: Int64 { Int64(hours) * 3600 }

    /// The first hour (hours since 1970, UTC) that still counts at `now`: an hour's events count
    /// until the hour's end is a whole window ago. So an event counts for at least the window and
    /// less than an hour more (hour granularity), and one 8 days old never counts in `7d`.
    public func firstHour(at now: Date) -> Int {
        Int((Int64(now.timeIntervalSince1970.rounded(.down)) - seconds).floorDivided(by: 3600))
    }

    /// When events of `hour` stop counting.
    public func end(ofHour hour: Int) -> Date {
        Date(timeIntervalSince1970: Double((Int64(hour) + 1) * 3600 + seconds))
    }
}

extension Int64 {
    func floorDivided(by divisor: Int64) -> Int64 {
        let quotient = self / divisor
        return (self % divisor != 0 && (self < 0) != (divisor < 0)) ? quotient - 1 : quotient
    }
}

/// The hour an instant falls in, as hours since 1970 (UTC).
func hourOf(_ date: Date) -> Int {
    Int(Int64(date.timeIntervalSince1970.rounded(.down)).floorDivided(by: 3600))
}

/// Parameters of one SQL statement being built: each value appended answers its `$n`.
struct SQLParameters {
    private(set) var values: [any PostgresEncodable] = []

    mutating func add(_ value: any PostgresEncodable) -> String {
        values.append(value)
        return "$\(values.count)"
    }
}

/// Limits on what a definition may hold, checked while parsing, before anything runs it: they bound
/// the SQL a segment becomes and the work a rule costs per event.
public enum DefinitionLimits {
    /// Nodes in a segment expression; 4-clause segments are typical, 50 is a long one.
    public static let maximumNodes = 64
    /// Nesting of all/any/not.
    public static let maximumDepth = 8
    /// Kinds in a rule or an events clause.
    public static let maximumKinds = 32
    /// Attributes a conditions object tests.
    public static let maximumConditions = 16
    /// Values in an `in` list.
    public static let maximumValues = 100
    /// Bytes of a text compared (a keyword, a url path, an attribute name).
    public static let maximumTextBytes = 256
    /// `atLeast` of a rule or an events clause.
    public static let maximumAtLeast = 1_000_000
    /// Magnitude of a number compared (`gte`…): beyond it a double no longer holds every integer.
    public static let maximumNumber = 1.0e15
    /// Live tag rules: each one is matched against every event of its kinds.
    public static let maximumRules = 200
}

/// A comparison with a bound: an event attribute's number (`{"gte":100}` in conditions), a
/// member's points or level rank (segments). `eq` is the segments' only: in conditions an equality
/// is a JSON value's (``EventConditions/Test/equals(_:)``), never a comparison.
public enum Comparison: String, Sendable, CaseIterable {
    case gte, gt, lte, lt, eq

    var sql: String {
        switch self {
        case .gte: ">="
        case .gt: ">"
        case .lte: "<="
        case .lt: "<"
        case .eq: "="
        }
    }

    func holds<T: Comparable>(_ value: T, _ bound: T) -> Bool {
        switch self {
        case .gte: value >= bound
        case .gt: value > bound
        case .lte: value <= bound
        case .lt: value < bound
        case .eq: value == bound
        }
    }
}
