import Contracts
import Foundation
import PostgresClient

/// What an event's attributes must hold for a rule or an events clause to count it:
/// `{"scene":"qr_spring", "Content":{"contains":"新品"}, "amount":{"gte":10000}}`.
///
/// One definition, two readers that agree: ``matches(_:)`` for live events in the pipeline, and
/// ``sql(_:_:)`` for stored ones (a backfill, a segment's events clause). So each test is defined
/// on JSON types, the same in Swift and in PostgreSQL's jsonb: equality compares a string, a
/// number (numerically: 1 equals 1.0) or a boolean; `contains` and `startsWith` look at strings
/// only, byte for byte; the comparisons (`gte`, `gt`, `lte`, `lt`) look at numbers only, so an
/// amount sent as the text "100" matches no comparison (and matches the equality "100").
public struct EventConditions: Sendable, Equatable {
    public enum Test: Sendable, Equatable {
        case equals(JSONValue)
        case oneOf([JSONValue])
        case contains(String)
        case startsWith(String)
        case compare(Comparison, Double)
    }

    /// Attribute name → every test it must pass; sorted by name so the SQL is stable.
    public let tests: [(attribute: String, tests: [Test])]

    public static let none = EventConditions(tests: [])

    init(tests: [(attribute: String, tests: [Test])]) { self.tests = tests }

    public static func == (a: EventConditions, b: EventConditions) -> Bool {
        a.tests.count == b.tests.count && zip(a.tests, b.tests).allSatisfy { $0.attribute == $1.attribute && $0.tests == $1.tests }
    }

    public var isEmpty: Bool { tests.isEmpty }

    /// Parses `conditions` at `path` (for the problem's path).
    public static func parse(_ json: JSONValue?, path: String) throws(DefinitionProblem) -> EventConditions {
        guard let json else { return .none }
        guard case .object(let object) = json else { throw DefinitionProblem(path, "conditions must be an object of attribute: test") }
        guard object.count <= DefinitionLimits.maximumConditions else {
            throw DefinitionProblem(path, "at most \(DefinitionLimits.maximumConditions) attributes")
        }
        var tests: [(attribute: String, tests: [Test])] = []
        for name in object.keys.sorted() {
            let at = "\(path).\(name)"
            guard !name.isEmpty, name.utf8.count <= 64, name.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0 != "\u{7f}" }) else {
                throw DefinitionProblem(at, "an attribute name is 1-64 bytes without spaces or control characters")
            }
            let value = object[name] ?? .null
            switch value {
            case .object(let operators):
                guard !operators.isEmpty else { throw DefinitionProblem(at, "an operator object needs at least one operator") }
                var list: [Test] = []
                for op in operators.keys.sorted() {
                    list.append(try parseOperator(op, operators[op] ?? .null, path: "\(at).\(op)"))
                }
                tests.append((name, list))
            default:
                tests.append((name, [.equals(try scalar(value, path: at))]))
            }
        }
        return EventConditions(tests: tests)
    }

    private static func parseOperator(_ op: String, _ value: JSONValue, path: String) throws(DefinitionProblem) -> Test {
        switch op {
        case "eq": return .equals(try scalar(value, path: path))
        case "in":
            guard case .array(let items) = value, (1...DefinitionLimits.maximumValues).contains(items.count) else {
                throw DefinitionProblem(path, "in takes a list of 1-\(DefinitionLimits.maximumValues) values")
            }
            var values: [JSONValue] = []
            for (index, item) in items.enumerated() { values.append(try scalar(item, path: "\(path)[\(index)]")) }
            return .oneOf(values)
        case "contains", "startsWith":
            guard case .string(let text) = value, !text.isEmpty, text.utf8.count <= DefinitionLimits.maximumTextBytes,
                  !text.utf8.contains(0) else {
                throw DefinitionProblem(path, "\(op) takes a text of 1-\(DefinitionLimits.maximumTextBytes) bytes")
            }
            return op == "contains" ? .contains(text) : .startsWith(text)
        default:
            guard let comparison = Comparison(rawValue: op) else {
                throw DefinitionProblem(path, "unknown operator \(op); operators are eq, in, contains, startsWith, gte, gt, lte, lt")
            }
            guard let bound = number(value), abs(bound) <= DefinitionLimits.maximumNumber else {
                throw DefinitionProblem(path, "\(op) takes a number of magnitude at most 1e15")
            }
            return .compare(comparison, bound)
        }
    }

    private static func scalar(_ value: JSONValue, path: String) throws(DefinitionProblem) -> JSONValue {
        switch value {
        case .string(let text):
            guard text.utf8.count <= DefinitionLimits.maximumTextBytes, !text.utf8.contains(0) else {
                throw DefinitionProblem(path, "a text compared is at most \(DefinitionLimits.maximumTextBytes) bytes, without NUL")
            }
            return value
        case .integer, .bool: return value
        case .number(let n):
            guard n.isFinite, abs(n) <= DefinitionLimits.maximumNumber else { throw DefinitionProblem(path, "a number compared is at most 1e15") }
            return value
        default: throw DefinitionProblem(path, "a value compared is a text, a number or a boolean")
        }
    }

    static func number(_ value: JSONValue) -> Double? {
        switch value {
        case .integer(let v): Double(v)
        case .number(let v): v.isFinite ? v : nil
        default: nil
        }
    }

    // MARK: Live events

    public func matches(_ attributes: [String: JSONValue]) -> Bool {
        for (attribute, list) in tests {
            guard let value = attributes[attribute] else { return false }
            for test in list where !Self.passes(value, test) { return false }
        }
        return true
    }

    static func passes(_ value: JSONValue, _ test: Test) -> Bool {
        switch test {
        case .equals(let expected): return same(value, expected)
        case .oneOf(let values): return values.contains { same(value, $0) }
        case .contains(let needle):
            guard case .string(let text) = value else { return false }
            return contains(Array(text.utf8), Array(needle.utf8))
        case .startsWith(let prefix):
            guard case .string(let text) = value else { return false }
            return text.utf8.starts(with: prefix.utf8)
        case .compare(let comparison, let bound):
            guard let number = number(value) else { return false }
            return comparison.holds(number, bound)
        }
    }

    /// jsonb equality: strings byte for byte, numbers by value, booleans.
    static func same(_ a: JSONValue, _ b: JSONValue) -> Bool {
        switch (a, b) {
        case (.string(let x), .string(let y)): return x.utf8.elementsEqual(y.utf8)
        case (.bool(let x), .bool(let y)): return x == y
        case (.integer(let x), .integer(let y)): return x == y
        default:
            guard let x = number(a), let y = number(b) else { return false }
            return x == y
        }
    }

    static func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
        guard !needle.isEmpty else { return true }
        guard haystack.count >= needle.count else { return false }
        let first = needle[0]
        var index = 0
        let last = haystack.count - needle.count
        while index <= last {
            if haystack[index] == first && haystack[index..<(index + needle.count)].elementsEqual(needle) { return true }
            index += 1
        }
        return false
    }

    // MARK: Stored events

    /// The same tests as a SQL condition on the jsonb column `column` (`e.attributes`), its values
    /// as parameters; `TRUE` when there are none.
    func sql(_ column: String, _ parameters: inout SQLParameters) -> String {
        var clauses: [String] = []
        for (attribute, list) in tests {
            let name = parameters.add(attribute)
            let field = "\(column)->\(name)"
            for test in list {
                switch test {
                case .equals(let value):
                    clauses.append("\(field) = \(parameters.add(Self.jsonText(value)))::jsonb")
                case .oneOf(let values):
                    let texts = values.map(Self.jsonText)
                    clauses.append("\(field) = ANY(\(parameters.add(PostgresArray(texts)))::jsonb[])")
                case .contains(let needle):
                    clauses.append("(jsonb_typeof(\(field)) = 'string' AND strpos(\(column)->>\(name), \(parameters.add(needle))) > 0)")
                case .startsWith(let prefix):
                    clauses.append("(jsonb_typeof(\(field)) = 'string' AND starts_with(\(column)->>\(name), \(parameters.add(prefix))))")
                case .compare(let comparison, let bound):
                    clauses.append("(jsonb_typeof(\(field)) = 'number' AND (\(column)->>\(name))::numeric \(comparison.sql) \(parameters.add(Self.numberText(bound)))::numeric)")
                }
            }
        }
        return clauses.isEmpty ? "TRUE" : clauses.joined(separator: " AND ")
    }

    static func jsonText(_ value: JSONValue) -> String { String(decoding: value.jsonBytes, as: UTF8.self) }

    static func numberText(_ value: Double) -> String {
        value == value.rounded() ? String(Int64(value)) : "\(value)"
    }

    // MARK: JSON

    public var json: JSONValue {
        var object: [String: JSONValue] = [:]
        for (attribute, list) in tests {
            if list.count == 1, case .equals(let value) = list[0] {
                object[attribute] = value
                continue
            }
            var operators: [String: JSONValue] = [:]
            for test in list {
                switch test {
                case .equals(let value): operators["eq"] = value
                case .oneOf(let values): operators["in"] = .array(values)
                case .contains(let text): operators["contains"] = .string(text)
                case .startsWith(let text): operators["startsWith"] = .string(text)
                case .compare(let comparison, let bound):
                    operators[comparison.rawValue] = bound == bound.rounded() ? .integer(Int64(bound)) : .number(bound)
                }
            }
            object[attribute] = .object(operators)
        }
        return .object(object)
    }
}
