/// A cell a caller needs that the row does not hold in the expected shape: the column is not in
/// the result (a query and its reader disagree), the cell is NULL, or its text does not read as
/// the asked type. Thrown by the `required…` readers of ``PostgresRow``, so a reader that needs a
/// value fails with the column's name instead of carrying on with a 0 or a skipped row.
public struct PostgresColumnError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Problem: String, Sendable, Equatable {
        /// The result has no column of that name.
        case absent
        /// The cell is NULL.
        case null
        /// The cell does not read as the asked type.
        case unreadable
    }

    public let column: String
    public let problem: Problem
    /// The Swift type the caller asked for.
    public let expected: String

    public init(column: String, problem: Problem, expected: String) {
        self.column = column
        self.problem = problem
        self.expected = expected
    }

    public var description: String {
        switch problem {
        case .absent: "the result has no column \(column)"
        case .null: "column \(column) is NULL where \(expected) is required"
        case .unreadable: "column \(column) does not read as \(expected)"
        }
    }
}

extension PostgresRow {
    private func requiredBytes(_ column: String, as expected: String) throws(PostgresColumnError) -> [UInt8] {
        guard let index = columns.firstIndex(of: column) else { throw PostgresColumnError(column: column, problem: .absent, expected: expected) }
        guard let bytes = cells[index] else { throw PostgresColumnError(column: column, problem: .null, expected: expected) }
        return bytes
    }

    /// The cell as text; throws when the column is absent or NULL.
    public func requiredString(_ column: String) throws(PostgresColumnError) -> String {
        String(decoding: try requiredBytes(column, as: "String"), as: UTF8.self)
    }

    /// The cell as an integer (see ``int(_:)``); throws when absent, NULL or not an integer.
    public func requiredInt(_ column: String) throws(PostgresColumnError) -> Int {
        _ = try requiredBytes(column, as: "Int")
        guard let value = int(column) else { throw PostgresColumnError(column: column, problem: .unreadable, expected: "Int") }
        return value
    }

    /// ``requiredInt(_:)`` as `Int64`.
    public func requiredInt64(_ column: String) throws(PostgresColumnError) -> Int64 {
        Int64(try requiredInt(column))
    }

    /// A text-format float (`extract(epoch …)::float8`); throws when absent, NULL or not a number.
    public func requiredDouble(_ column: String) throws(PostgresColumnError) -> Double {
        guard let value = Double(try requiredString(column)) else {
            throw PostgresColumnError(column: column, problem: .unreadable, expected: "Double")
        }
        return value
    }

    /// The cell as a boolean; throws when absent or NULL.
    public func requiredBool(_ column: String) throws(PostgresColumnError) -> Bool {
        _ = try requiredBytes(column, as: "Bool")
        guard let value = bool(column) else { throw PostgresColumnError(column: column, problem: .unreadable, expected: "Bool") }
        return value
    }
}
