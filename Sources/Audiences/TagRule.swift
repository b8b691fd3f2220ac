import Contracts
import Foundation
import PostgresClient

/// Events that count: of these kinds, with these attributes, from a verified subject, at least
/// `atLeast` of them in the last `within`. A tag rule is one of these and the tag it sets; a
/// segment's `events` clause is one on its own.
public struct EventCriteria: Sendable, Equatable {
    public let kinds: [EventKind]
    public let conditions: EventConditions
    public let atLeast: Int
    public let within: TimeWindow

    public init(kinds: [EventKind], conditions: EventConditions = .none, atLeast: Int, within: TimeWindow) {
        self.kinds = kinds
        self.conditions = conditions
        self.atLeast = atLeast
        self.within = within
    }

    /// Reads `kinds`, `conditions`, `atLeast` and `within` of `object`, at `path`.
    static func parse(_ object: [String: JSONValue], path: String) throws(DefinitionProblem) -> EventCriteria {
        func at(_ field: String) -> String { path.isEmpty ? field : "\(path).\(field)" }
        guard case .array(let items)? = object["kinds"], (1...DefinitionLimits.maximumKinds).contains(items.count) else {
            throw DefinitionProblem(at("kinds"), "kinds is a list of 1-\(DefinitionLimits.maximumKinds) event kinds")
        }
        var kinds: [EventKind] = []
        for (index, item) in items.enumerated() {
            guard let text = item.string, isKind(text) else {
                throw DefinitionProblem("\(at("kinds"))[\(index)]", "an event kind is 1-64 bytes of [a-z0-9._-] (subscribe, message.text, mall.order_paid, page_view)")
            }
            if !kinds.contains(EventKind(text)) { kinds.append(EventKind(text)) }
        }
        let conditions = try EventConditions.parse(object["conditions"], path: at("conditions"))
        guard let atLeast = object["atLeast"].flatMap(wholeNumber), (1...Int64(DefinitionLimits.maximumAtLeast)).contains(atLeast) else {
            throw DefinitionProblem(at("atLeast"), "atLeast is a whole number, 1-\(DefinitionLimits.maximumAtLeast)")
        }
        guard let text = object["within"]?.string, let within = TimeWindow(parsing: text) else {
            throw DefinitionProblem(at("within"), #"within is a window of whole hours or days, "1h" to "365d""#)
        }
        return EventCriteria(kinds: kinds, conditions: conditions, atLeast: Int(atLeast), within: within)
    }

    static func isKind(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        return (1...64).contains(bytes.count) && bytes.allSatisfy { byte in
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
                || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "-")
        }
    }

    static func wholeNumber(_ value: JSONValue) -> Int64? {
        switch value {
        case .integer(let v): v
        case .number(let v): v.isFinite && v == v.rounded() && abs(v) < 9.0e15 ? Int64(v) : nil
        default: nil
        }
    }

    /// Whether a live event counts (its subject's verification is the caller's check).
    public func matches(_ event: Envelope) -> Bool {
        kinds.contains(event.kind) && conditions.matches(event.attributes)
    }

    var jsonFields: [String: JSONValue] {
        var fields: [String: JSONValue] = [
            "kinds": .array(kinds.map { .string($0.rawValue) }),
            "atLeast": .integer(Int64(atLeast)),
            "within": .string(within.description),
        ]
        if !conditions.isEmpty { fields["conditions"] = conditions.json }
        return fields
    }
}

/// A tag rule (`PUT /admin/v1/tag-rules/{code}`): a member has `tag` while they have at least
/// `atLeast` matching events with `occurredAt` in the last `within`, and loses it when the window
/// slides past them, unless the rule is `sticky`.
public struct TagRule: Sendable, Equatable {
    public let code: String
    public let tag: String
    public let criteria: EventCriteria
    public let sticky: Bool

    public init(code: String, tag: String, criteria: EventCriteria, sticky: Bool = false) {
        self.code = code
        self.tag = tag
        self.criteria = criteria
        self.sticky = sticky
    }

    /// The source of the tags it sets, as `GET /admin/v1/members/{id}/tags` shows it.
    public var source: String { "rule:\(code)" }

    static let fields: Set<String> = ["tag", "kinds", "conditions", "atLeast", "within", "sticky"]

    /// Parses an admin request body; unknown fields are refused, so a misspelt field is an error
    /// instead of a condition that silently does nothing.
    public static func parse(code: String, json: JSONValue) throws(DefinitionProblem) -> TagRule {
        guard AudienceCode.isValid(code) else { throw DefinitionProblem("code", "a rule code is \(AudienceCode.rule)") }
        guard case .object(let object) = json else { throw DefinitionProblem("", "a tag rule is a JSON object") }
        if let unknown = object.keys.sorted().first(where: { !fields.contains($0) }) {
            throw DefinitionProblem(unknown, "unknown field \(unknown)")
        }
        guard let tag = object["tag"]?.string, AudienceCode.isValid(tag) else {
            throw DefinitionProblem("tag", "tag is a tag code, \(AudienceCode.rule)")
        }
        let criteria = try EventCriteria.parse(object, path: "")
        var sticky = false
        if let value = object["sticky"] {
            guard case .bool(let flag) = value else { throw DefinitionProblem("sticky", "sticky is true or false") }
            sticky = flag
        }
        return TagRule(code: code, tag: tag, criteria: criteria, sticky: sticky)
    }

    /// The definition as stored and shown (without the code).
    public var json: JSONValue {
        var fields = criteria.jsonFields
        fields["tag"] = .string(tag)
        fields["sticky"] = .bool(sticky)
        return .object(fields)
    }
}

/// Event kinds as a PostgreSQL text array.
struct PostgresArrayOfKinds: PostgresEncodable {
    let kinds: [EventKind]
    init(_ kinds: [EventKind]) { self.kinds = kinds }
    var postgresValue: PostgresValue { PostgresArray(kinds.map(\.rawValue)).postgresValue }
}
