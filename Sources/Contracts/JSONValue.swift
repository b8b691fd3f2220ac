/// Any JSON value: event attributes keep platform fields we do not model, instead of dropping them.
public enum JSONValue: Codable, Sendable, Hashable, ExpressibleByStringLiteral {
    public init(stringLiteral value: String) { self = .string(value) }

    case string(String)
    case number(Double)
    case integer(Int64)
    case bool(Bool)
    case object([String: JSONValue])
    case array([JSONValue])
    case null

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        // Strings first: most attribute values are strings, and every failed attempt costs an error.
        if container.decodeNil() { self = .null }
        else if let value = try? container.decode(String.self) { self = .string(value) }
        else if let value = try? container.decode(Bool.self) { self = .bool(value) }
        else if let value = try? container.decode(Int64.self) { self = .integer(value) }
        else if let value = try? container.decode(Double.self) { self = .number(value) }
        else if let value = try? container.decode([JSONValue].self) { self = .array(value) }
        else { self = .object(try container.decode([String: JSONValue].self)) }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .string(let value): try container.encode(value)
        case .number(let value): try container.encode(value)
        case .integer(let value): try container.encode(value)
        case .bool(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .null: try container.encodeNil()
        }
    }

    public var string: String? { if case .string(let v) = self { return v } else { return nil } }
    public var int: Int64? {
        switch self {
        case .integer(let v): return v
        case .number(let v): return v == v.rounded() && abs(v) < 9.0e15 ? Int64(v) : nil
        case .string(let v): return Int64(v)
        default: return nil
        }
    }
}
