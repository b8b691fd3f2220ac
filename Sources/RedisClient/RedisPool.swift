import Synchronization

/// A fixed set of connections used in turn. One connection is one thread doing one round trip at a
/// time; a handful lets concurrent requests overlap their round trips.
public final class RedisPool: Sendable {
    private let connections: [RedisConnection]
    private let coalescers: [RedisCoalescer]
    private let next = Atomic<Int>(0)

    public init(url: String, size: Int) async throws {
        precondition(size > 0, "a Redis pool needs at least one connection")
        var opened: [RedisConnection] = []
        for _ in 0..<size {
            do {
                opened.append(try await RedisConnection(url: url))
            } catch {
                for connection in opened { await connection.close() }
                throw error
            }
        }
        connections = opened
        coalescers = opened.map { RedisCoalescer(connection: $0) }
    }

    /// Script calls coalesced with other callers' into shared pipelines (see ``RedisCoalescer``).
    public func evalSHA(_ calls: [RedisCoalescer.Call]) async throws -> [RedisReply] {
        try await coalescers[next.wrappingAdd(1, ordering: .relaxed).oldValue % coalescers.count].evalSHA(calls)
    }

    /// The next connection in turn.
    public var connection: RedisConnection {
        connections[next.wrappingAdd(1, ordering: .relaxed).oldValue % connections.count]
    }

    public func close() async {
        for connection in connections { await connection.close() }
    }
}
