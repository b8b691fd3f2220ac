import Contracts

/// A worker pool by its command-line name (`fanflow worker --pool pipeline=2`).
public enum PoolName: String, Sendable, CaseIterable {
    case pipeline
    case orders
    case push
    /// Deprecated: the behavior store's pool before the pipeline; runs the pipeline pool.
    case behavior
    /// Deprecated: the points pool before the pipeline; runs the pipeline pool.
    case points

    /// The pool this name runs: itself, or the pipeline for a deprecated alias.
    public var pool: PoolName {
        switch self {
        case .behavior, .points: return .pipeline
        case .pipeline, .orders, .push: return self
        }
    }

    /// Whether this name is kept only so that run scripts written before the pipeline still start.
    public var isDeprecatedAlias: Bool { pool != self }

    public var queue: QueueName {
        switch pool {
        case .orders: return .orders
        case .push: return .push
        case .pipeline, .behavior, .points: return .pipeline
        }
    }

    /// Pools whose handlers exist in this build. The others are named so that asking for one gives a
    /// clear refusal instead of a consumer that would take messages it cannot process.
    public static let available: [PoolName] = [.pipeline, .orders, .push, .behavior, .points]

    /// The names to offer in help and errors (the aliases said as such).
    public static var listed: String {
        "pipeline, orders, push (behavior and points: deprecated aliases of pipeline)"
    }
}

/// `name=count`, as given on the command line.
public struct PoolSpec: Sendable, Equatable {
    /// The pool to run (a deprecated alias is already resolved to the pipeline).
    public let name: PoolName
    public let consumers: Int
    /// The deprecated name it was asked for by, to warn about.
    public let alias: PoolName?

    public init(name: PoolName, consumers: Int) {
        self.name = name.pool
        self.consumers = consumers
        self.alias = name.isDeprecatedAlias ? name : nil
    }

    public init(parsing text: String) throws(PoolSpecError) {
        let parts = text.split(separator: "=", maxSplits: 1).map(String.init)
        guard let first = parts.first, let name = PoolName(rawValue: first) else {
            throw PoolSpecError("unknown pool \(parts.first ?? text); pools are \(PoolName.listed)")
        }
        guard PoolName.available.contains(name) else {
            throw PoolSpecError("pool \(name.rawValue) is not part of this build yet; available: \(PoolName.listed)")
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

    /// The warning a deprecated name earns, or nil.
    public var deprecation: String? {
        alias.map { "--pool \($0.rawValue) is a deprecated alias of the pipeline pool (the behavior and points pools became one); use --pool pipeline=N" }
    }
}

public struct PoolSpecError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
