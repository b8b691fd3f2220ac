/// A small pool of PostgreSQL connections, opened on demand up to `maximumConnections`.
///
/// Callers borrow a connection for the length of a closure; when every connection is busy they wait
/// in line (first come, first served). A connection that broke is dropped instead of being returned.
public actor PostgresPool {
    public let url: String
    public let maximumConnections: Int
    private var idle: [PostgresConnection] = []
    private var opened = 0
    private var waiters: [CheckedContinuation<PostgresConnection?, Never>] = []
    private var closed = false

    public init(url: String, maximumConnections: Int = 4) {
        precondition(maximumConnections > 0, "a pool needs at least one connection")
        self.url = url
        self.maximumConnections = maximumConnections
    }

    /// Lends a connection to `body` and takes it back afterwards, healthy or not.
    public func withConnection<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        let connection = try await acquire()
        do {
            let value = try await body(connection)
            await release(connection)
            return value
        } catch {
            await release(connection)
            throw error
        }
    }

    /// A transaction on a pooled connection.
    public func transaction<T: Sendable>(_ body: @Sendable (isolated PostgresConnection) throws -> T) async throws -> T {
        try await withConnection { connection in try await connection.transaction(body) }
    }

    /// One statement on a pooled connection.
    @discardableResult
    public func query(_ sql: String, _ parameters: [any PostgresEncodable] = []) async throws -> PostgresRows {
        try await withConnection { connection in try await connection.query(sql, parameters) }
    }

    /// Closes idle connections and refuses new borrowers; connections in use close when returned.
    public func close() async {
        closed = true
        for connection in idle { await connection.close() }
        idle.removeAll()
        for waiter in waiters { waiter.resume(returning: nil) }
        waiters.removeAll()
    }

    private func acquire() async throws -> PostgresConnection {
        if closed { throw PostgresError(.usage, "pool is closed") }
        if let connection = idle.popLast() { return connection }
        if opened < maximumConnections {
            opened += 1
            do {
                return try await PostgresConnection(url: url)
            } catch {
                opened -= 1
                throw error
            }
        }
        guard let connection = await withCheckedContinuation({ waiters.append($0) }) else {
            throw PostgresError(.usage, "pool is closed")
        }
        return connection
    }

    private func release(_ connection: PostgresConnection) async {
        guard !closed, await connection.isHealthy else {
            await connection.close()
            opened -= 1
            // A waiter may now open a fresh connection in the freed slot.
            if !waiters.isEmpty, !closed, let replacement = try? await PostgresConnection(url: url) {
                opened += 1
                waiters.removeFirst().resume(returning: replacement)
            }
            return
        }
        if waiters.isEmpty {
            idle.append(connection)
        } else {
            waiters.removeFirst().resume(returning: connection)
        }
    }
}
