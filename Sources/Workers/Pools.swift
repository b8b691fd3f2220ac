import Contracts

/// A worker pool by its command-line name (`fanflow worker --pool behavior=2`).
public enum PoolName: String, Sendable, CaseIterable {
    case behavior
    case points
    case orders
    case push

    public var queue: QueueName {
        switch self {
        case .behavior: return .behavior
        case .points: return .points
        case .orders: return .orders
        case .push: return .push
        }
    }

    /// Pools whose handlers exist in this build. The others are named so that asking for one gives a
    /// clear refusal instead of a consumer that would take messages it cannot process.
    public static let available: [PoolName] = [.behavior, .points, .orders, .push]
}

/// `name=count`, as given on the command line.
public struct PoolSpec: Sendable, Equatable {
    public let name: PoolName
    public let consumers: Int

    public init(name: PoolName, consumers: Int) {
        self.name = name
        self.consumers = consumers
    }

    public init(parsing text: String) throws(PoolSpecError) {
        let parts = text.split(separator: "=", maxSplits: 1).map(String.init)
        guard let name = PoolName(rawValue: parts[0]) else {
            throw PoolSpecError("unknown pool \(parts[0]); pools are \(PoolName.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard PoolName.available.contains(name) else {
            throw PoolSpecError("pool \(name.rawValue) is not part of this build yet; available: \(PoolName.available.map(\.rawValue).joined(separator: ", "))")
        }
        var consumers = 1
        if parts.count == 2 {
            guard let n = Int(parts[1]), (1...256).contains(n) else {
                throw PoolSpecError("\(text): the count after = must be 1-256")
            }
            consumers = n
        }
        self.init(name: name, consumers: consumers)
    }
}

public struct PoolSpecError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
