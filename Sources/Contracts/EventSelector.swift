/// Which events a handler takes, as topic patterns on the routing key `<platform>.<kind>`, with
/// RabbitMQ's meaning: words are separated by `.`, `*` stands for exactly one word and `#` for zero
/// or more. The same patterns a queue binding would use, so a handler that once had a queue of its
/// own keeps its bindings as its selector.
public struct EventSelector: Sendable, Equatable, CustomStringConvertible {
    public let patterns: [String]
    /// Each pattern split into words once.
    private let split: [[Substring]]

    public init(_ patterns: [String]) {
        self.patterns = patterns
        self.split = patterns.map { $0.split(separator: ".", omittingEmptySubsequences: false) }
    }

    /// Every event.
    public static let all = EventSelector(["#"])

    public var description: String { patterns.joined(separator: " ") }

    public static func == (a: EventSelector, b: EventSelector) -> Bool { a.patterns == b.patterns }

    public func matches(_ event: Envelope) -> Bool { matches(routingKey: event.routingKey) }

    public func matches(routingKey: String) -> Bool {
        let words = routingKey.split(separator: ".", omittingEmptySubsequences: false)
        return split.contains { Self.match($0[...], words[...]) }
    }

    private static func match(_ pattern: ArraySlice<Substring>, _ words: ArraySlice<Substring>) -> Bool {
        guard let head = pattern.first else { return words.isEmpty }
        if head == "#" {
            let rest = pattern.dropFirst()
            if rest.isEmpty { return true }
            var tail = words
            while true {
                if match(rest, tail) { return true }
                guard !tail.isEmpty else { return false }
                tail = tail.dropFirst()
            }
        }
        guard let word = words.first, head == "*" || head == word else { return false }
        return match(pattern.dropFirst(), words.dropFirst())
    }
}
