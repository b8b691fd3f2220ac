import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A failure of the PostgreSQL client, carrying the server's own diagnostics.
public struct PostgresError: Error, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String { case connect, server, io, usage, invalidParameter, column }
        private let base: Base
        private init(_ base: Base) { self.base = base }
        /// The connection could not be opened (bad URL, refused, authentication).
        public static let connect = Code(.connect)
        /// The server refused the statement; ``PostgresError/sqlState`` says why.
        public static let server = Code(.server)
        /// The connection broke; whether the statement committed is unknown.
        public static let io = Code(.io)
        /// The call itself was wrong (for example a parameter that libpq cannot send).
        public static let usage = Code(.usage)
        /// A parameter PostgreSQL cannot store as it is, refused before anything was sent: a text
        /// with a NUL byte (libpq would cut it there, so `victim\0evil` would arrive as `victim`).
        /// The value is at fault, never the server.
        public static let invalidParameter = Code(.invalidParameter)
        /// A row read with ``PostgresRow/require(_:as:)`` or ``PostgresRow/optional(_:as:)`` lacked
        /// the column, held NULL where a value is required, or held text that is not of the type
        /// read: the statement and its reader disagree (a deploy without its migration, a query
        /// edited without its reader), never the data a caller sent.
        public static let column = Code(.column)
        public var description: String { base.rawValue }
    }

    public let code: Code
    /// The five-character SQLSTATE for server errors (`23505` unique violation, `40001` serialization…).
    public let sqlState: String?
    /// `PQresultErrorMessage` or `PQerrorMessage`, as the server or libpq wrote it.
    public let message: String
    public let detail: String?
    public let constraint: String?

    public init(_ code: Code, _ message: String, sqlState: String? = nil, detail: String? = nil,
                constraint: String? = nil) {
        self.code = code
        self.message = message
        self.sqlState = sqlState
        self.detail = detail
        self.constraint = constraint
    }

    public var isUniqueViolation: Bool { sqlState == "23505" }
    public var isSerializationFailure: Bool { sqlState == "40001" || sqlState == "40P01" }

    public var description: String {
        var text = "postgres \(code)"
        if let sqlState { text += " \(sqlState)" }
        text += ": \(message.trimmingCharacters(in: .whitespacesAndNewlines))"
        if let detail { text += " (\(detail))" }
        return text
    }
}

/// A statement parameter: sent as text, or as raw bytes in binary format (`bytea`).
public enum PostgresValue: Sendable, Hashable {
    case text(String)
    case binary([UInt8])
    case null
}

/// Values that can be bound as statement parameters.
public protocol PostgresEncodable: Sendable {
    var postgresValue: PostgresValue { get }
}

extension String: PostgresEncodable { public var postgresValue: PostgresValue { .text(self) } }
extension Substring: PostgresEncodable { public var postgresValue: PostgresValue { .text(String(self)) } }
extension Int: PostgresEncodable { public var postgresValue: PostgresValue { .text(String(self)) } }
extension Int64: PostgresEncodable { public var postgresValue: PostgresValue { .text(String(self)) } }
extension Int32: PostgresEncodable { public var postgresValue: PostgresValue { .text(String(self)) } }
extension Double: PostgresEncodable { public var postgresValue: PostgresValue { .text(String(self)) } }
extension Bool: PostgresEncodable { public var postgresValue: PostgresValue { .text(self ? "t" : "f") } }
extension UUID: PostgresEncodable { public var postgresValue: PostgresValue { .text(uuidString.lowercased()) } }
extension Array: PostgresEncodable where Element == UInt8 { public var postgresValue: PostgresValue { .binary(self) } }
extension PostgresValue: PostgresEncodable { public var postgresValue: PostgresValue { self } }
extension Date: PostgresEncodable {
    /// Microsecond precision, as `timestamptz` stores it, written in UTC so the session zone never matters.
    public var postgresValue: PostgresValue {
        let micros = Int64((timeIntervalSince1970 * 1_000_000).rounded())
        var seconds = time_t(micros >= 0 ? micros / 1_000_000 : (micros - 999_999) / 1_000_000)
        let fraction = micros - Int64(seconds) * 1_000_000
        var parts = tm()
        gmtime_r(&seconds, &parts)
        // Written digit by digit: String(format:) was a visible share of a batch's parameter work.
        var text = [UInt8]()
        text.reserveCapacity(29)
        func digits(_ value: Int, _ width: Int) {
            let written = Array(String(value).utf8)
            if written.count < width { text += [UInt8](repeating: UInt8(ascii: "0"), count: width - written.count) }
            text += written
        }
        digits(Int(parts.tm_year) + 1900, 4); text.append(UInt8(ascii: "-"))
        digits(Int(parts.tm_mon) + 1, 2); text.append(UInt8(ascii: "-"))
        digits(Int(parts.tm_mday), 2); text.append(UInt8(ascii: " "))
        digits(Int(parts.tm_hour), 2); text.append(UInt8(ascii: ":"))
        digits(Int(parts.tm_min), 2); text.append(UInt8(ascii: ":"))
        digits(Int(parts.tm_sec), 2); text.append(UInt8(ascii: "."))
        digits(Int(fraction), 6)
        text += Array("+00".utf8)
        return .text(String(decoding: text, as: UTF8.self))
    }
}
extension Optional: PostgresEncodable where Wrapped: PostgresEncodable {
    public var postgresValue: PostgresValue { self?.postgresValue ?? .null }
}

/// Whether result cells come back as text or in PostgreSQL's binary format.
public enum PostgresResultFormat: Int32, Sendable {
    case text = 0
    case binary = 1
}

/// The rows of one result, copied out of libpq.
public struct PostgresRows: Sendable, RandomAccessCollection {
    public let columns: [String]
    public let format: PostgresResultFormat
    /// Rows affected by INSERT/UPDATE/DELETE/COPY (`PQcmdTuples`).
    public let affectedRows: Int
    private let cells: [[UInt8]?]

    init(columns: [String], format: PostgresResultFormat, affectedRows: Int, cells: [[UInt8]?]) {
        self.columns = columns
        self.format = format
        self.affectedRows = affectedRows
        self.cells = cells
    }

    public var startIndex: Int { 0 }
    public var endIndex: Int { columns.isEmpty ? 0 : cells.count / columns.count }

    public subscript(position: Int) -> PostgresRow {
        let width = columns.count
        return PostgresRow(columns: columns, format: format, cells: Array(cells[(position * width)..<((position + 1) * width)]))
    }
}

/// One row; cells are read by column name or position.
public struct PostgresRow: Sendable {
    public let columns: [String]
    public let format: PostgresResultFormat
    public let cells: [[UInt8]?]

    public func bytes(_ column: String) -> [UInt8]? {
        guard let index = columns.firstIndex(of: column) else { return nil }
        return cells[index]
    }

    public func string(_ column: String) -> String? {
        bytes(column).map { String(decoding: $0, as: UTF8.self) }
    }

    /// Integer cells: decimal text, or 2/4/8-byte big-endian integers in binary format.
    public func int(_ column: String) -> Int? {
        guard let bytes = bytes(column) else { return nil }
        if format == .text { return Int(String(decoding: bytes, as: UTF8.self)) }
        guard [2, 4, 8].contains(bytes.count) else { return nil }
        var value: Int64 = 0
        for byte in bytes { value = (value << 8) | Int64(byte) }
        let shift = Int64(64 - bytes.count * 8)
        return Int((value << shift) >> shift)
    }

    public func bool(_ column: String) -> Bool? {
        guard let bytes = bytes(column), let first = bytes.first else { return nil }
        return format == .text ? first == UInt8(ascii: "t") : first != 0
    }

    /// The value of a column that must be there and must not be NULL. Throws
    /// ``PostgresError/Code-swift.struct/column`` naming the column when it is missing from the
    /// result, NULL, or not readable as `T`: a reader that guessed a default instead would turn a
    /// query edited without its reader into zeros and empty texts in what members see.
    public func require<T: PostgresCell>(_ column: String, as type: T.Type = T.self) throws(PostgresError) -> T {
        guard let value = try optional(column, as: type) else {
            throw PostgresError(.column, "column \(column) is NULL where a \(T.self) is required")
        }
        return value
    }

    /// The value of a column that must be there but may be NULL (nil). Throws like
    /// ``require(_:as:)`` when the column is missing or holds text that is not a `T`.
    public func optional<T: PostgresCell>(_ column: String, as type: T.Type = T.self) throws(PostgresError) -> T? {
        guard let index = columns.firstIndex(of: column) else {
            throw PostgresError(.column, "the result has no column \(column) (columns: \(columns.joined(separator: ", ")))")
        }
        guard let bytes = cells[index] else { return nil }
        guard let value = T(postgresCell: bytes, format: format) else {
            throw PostgresError(.column, "column \(column) holds \(bytes.count) bytes that are not a \(T.self)")
        }
        return value
    }
}

/// A type a result cell can be read as (``PostgresRow/require(_:as:)``): text format always,
/// binary where the type's binary form is fixed.
public protocol PostgresCell: Sendable {
    /// Nil when the cell's bytes are not a value of this type.
    init?(postgresCell bytes: [UInt8], format: PostgresResultFormat)
}

extension String: PostgresCell {
    public init?(postgresCell bytes: [UInt8], format: PostgresResultFormat) {
        guard let text = String(validating: bytes, as: UTF8.self) else { return nil }
        self = text
    }
}

extension Array: PostgresCell where Element == UInt8 {
    public init?(postgresCell bytes: [UInt8], format: PostgresResultFormat) { self = bytes }
}

extension Int64: PostgresCell {
    /// Decimal text, or a 2/4/8-byte big-endian integer in binary format.
    public init?(postgresCell bytes: [UInt8], format: PostgresResultFormat) {
        if format == .text {
            guard let value = Int64(String(decoding: bytes, as: UTF8.self)) else { return nil }
            self = value
            return
        }
        guard [2, 4, 8].contains(bytes.count) else { return nil }
        var value: Int64 = 0
        for byte in bytes { value = (value << 8) | Int64(byte) }
        let shift = Int64(64 - bytes.count * 8)
        self = (value << shift) >> shift
    }
}

extension Int: PostgresCell {
    public init?(postgresCell bytes: [UInt8], format: PostgresResultFormat) {
        guard let value = Int64(postgresCell: bytes, format: format) else { return nil }
        self = Int(value)
    }
}

extension Bool: PostgresCell {
    /// `t`/`f` in text format, one byte in binary.
    public init?(postgresCell bytes: [UInt8], format: PostgresResultFormat) {
        guard bytes.count == 1, let byte = bytes.first else { return nil }
        if format == .binary {
            self = byte != 0
            return
        }
        switch byte {
        case UInt8(ascii: "t"): self = true
        case UInt8(ascii: "f"): self = false
        default: return nil
        }
    }
}

extension Double: PostgresCell {
    /// Text format only (`float8` as PostgreSQL prints it, `NaN` and `Infinity` included).
    public init?(postgresCell bytes: [UInt8], format: PostgresResultFormat) {
        guard format == .text, let value = Double(String(decoding: bytes, as: UTF8.self)) else { return nil }
        self = value
    }
}

/// A one-dimensional array parameter (`$1::text[]`, `$1::bigint[]`), written as PostgreSQL's array
/// literal with every element quoted and escaped, so any text round-trips.
public struct PostgresArray: PostgresEncodable {
    public let literal: String

    public init(_ texts: [String]) {
        literal = "{" + texts.map { text in
            var quoted = "\""
            for character in text.unicodeScalars {
                if character == "\"" || character == "\\" { quoted.unicodeScalars.append("\\") }
                quoted.unicodeScalars.append(character)
            }
            return quoted + "\""
        }.joined(separator: ",") + "}"
    }

    public init(_ integers: [Int64]) {
        literal = "{" + integers.map(String.init).joined(separator: ",") + "}"
    }

    public var postgresValue: PostgresValue { .text(literal) }
}

/// A cell that is not what the query promised: a column the result lacks (a typo, a query that
/// changed), a NULL where the schema has NOT NULL, or text that is not a number. A read that
/// defaulted instead would turn a broken query into zeros in a balance.
public struct PostgresRowError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Problem: Sendable, Equatable {
        case missingColumn
        case null
        case malformed(String)
    }

    public let column: String
    public let problem: Problem

    public init(column: String, problem: Problem) {
        self.column = column
        self.problem = problem
    }

    public var description: String {
        switch problem {
        case .missingColumn: return "the result has no column \(column)"
        case .null: return "column \(column) is NULL where a value is required"
        case .malformed(let text): return "column \(column) holds \(text.prefix(64)), not the type asked for"
        }
    }
}

extension PostgresRow {
    /// The cell's bytes; nil for NULL. Throws when the result has no such column.
    public func cell(_ column: String) throws(PostgresRowError) -> [UInt8]? {
        guard let index = columns.firstIndex(of: column) else { throw PostgresRowError(column: column, problem: .missingColumn) }
        return cells[index]
    }

    /// Text of a column that must exist and be non-NULL.
    public func requiredString(_ column: String) throws(PostgresRowError) -> String {
        guard let text = try optionalString(column) else { throw PostgresRowError(column: column, problem: .null) }
        return text
    }

    /// Text of a column that must exist; nil for NULL.
    public func optionalString(_ column: String) throws(PostgresRowError) -> String? {
        try cell(column).map { String(decoding: $0, as: UTF8.self) }
    }

    /// An integer column that must exist and be non-NULL.
    public func requiredInt(_ column: String) throws(PostgresRowError) -> Int {
        guard let value = try optionalInt(column) else { throw PostgresRowError(column: column, problem: .null) }
        return value
    }

    /// An integer column that must exist; nil for NULL, an error for anything but an integer.
    public func optionalInt(_ column: String) throws(PostgresRowError) -> Int? {
        guard try cell(column) != nil else { return nil }
        guard let value = int(column) else {
            throw PostgresRowError(column: column, problem: .malformed(string(column) ?? "binary"))
        }
        return value
    }

    public func requiredInt64(_ column: String) throws(PostgresRowError) -> Int64 { Int64(try requiredInt(column)) }

    public func optionalInt64(_ column: String) throws(PostgresRowError) -> Int64? { try optionalInt(column).map(Int64.init) }

    /// A boolean column that must exist and be non-NULL.
    public func requiredBool(_ column: String) throws(PostgresRowError) -> Bool {
        guard try cell(column) != nil, let value = bool(column) else { throw PostgresRowError(column: column, problem: .null) }
        return value
    }

    /// A float column (text format) that must exist and be non-NULL.
    public func requiredDouble(_ column: String) throws(PostgresRowError) -> Double {
        let text = try requiredString(column)
        guard let value = Double(text) else { throw PostgresRowError(column: column, problem: .malformed(text)) }
        return value
    }

    /// A float column that must exist; nil for NULL.
    public func optionalDouble(_ column: String) throws(PostgresRowError) -> Double? {
        guard let text = try optionalString(column) else { return nil }
        guard let value = Double(text) else { throw PostgresRowError(column: column, problem: .malformed(text)) }
        return value
    }
}
