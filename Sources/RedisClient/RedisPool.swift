import Synchronization

/// A fixed set of connections used in turn. One connection is one thread doing one round trip at a
/// time; a handful lets concurrent requests overlap their round trips.
public final class RedisPool: Sendable {
    private let connections: [RedisConnection]
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
    }

    /// The next connection in turn.
    public var connection: RedisConnection {
        connections[next.wrappingAdd(1, ordering: .relaxed).oldValue % connections.count]
    }

    public func close() async {
        for connection in connections { await connection.close() }
    }
}
