/// A small pool of PostgreSQL connections, opened on demand up to `maximumConnections`.
///
/// Callers borrow a connection for the length of a closure; when every connection is busy they wait
/// in line (first come, first served), at most `acquireTimeout`, then get ``PostgresPoolBusy``
/// (a gateway answers that 503 `database_busy` instead of holding the request, and its client's
/// connection, for as long as the database is slow). A connection that broke is dropped instead
/// of being returned.
public actor PostgresPool {
    public let url: String
    public let maximumConnections: Int
    public let timeouts: PostgresTimeouts
    public let acquireTimeout: Duration
    private var idle: [PostgresConnection] = []
    private var opened = 0
    private var waiters: [(id: Int, continuation: CheckedContinuation<PostgresConnection?, any Error>)] = []
    private var nextWaiter = 0
    private var closed = false

    /// `acquireTimeout` defaults to 30 s: a worker's batch can wait for a connection that long
    /// before its delivery is retried; the gateway passes its own, shorter one.
    public init(url: String, maximumConnections: Int = 4, timeouts: PostgresTimeouts = .standard,
                acquireTimeout: Duration = .seconds(30)) {
        precondition(maximumConnections > 0, "a pool needs at least one connection")
        self.url = url
        self.maximumConnections = maximumConnections
        self.timeouts = timeouts
        self.acquireTimeout = acquireTimeout
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
        for waiter in waiters { waiter.continuation.resume(returning: nil) }
        waiters.removeAll()
    }

    private func acquire() async throws -> PostgresConnection {
        if closed { throw PostgresError(.usage, "pool is closed") }
        if let connection = idle.popLast() { return connection }
        if opened < maximumConnections {
            opened += 1
            do {
                return try await PostgresConnection(url: url, timeouts: timeouts)
            } catch {
                opened -= 1
                throw error
            }
        }
        nextWaiter += 1
        let id = nextWaiter
        let limit = acquireTimeout
        let timer = Task { [weak self] in
            try await Task.sleep(for: limit)
            await self?.expire(id)
        }
        defer { timer.cancel() }
        guard let connection = try await withCheckedThrowingContinuation({ waiters.append((id, $0)) }) else {
            throw PostgresError(.usage, "pool is closed")
        }
        return connection
    }

    /// A waiter still in line when its time is up leaves it with ``PostgresPoolBusy``.
    private func expire(_ id: Int) {
        guard let index = waiters.firstIndex(where: { $0.id == id }) else { return }
        waiters.remove(at: index).continuation.resume(throwing: PostgresPoolBusy(waited: acquireTimeout, size: maximumConnections))
    }

    private func release(_ connection: PostgresConnection) async {
        guard !closed, await connection.isHealthy else {
            await connection.close()
            opened -= 1
            // A waiter may now open a fresh connection in the freed slot.
            if !waiters.isEmpty, !closed, let replacement = try? await PostgresConnection(url: url, timeouts: timeouts) {
                if waiters.isEmpty {
                    idle.append(replacement)
                } else {
                    waiters.removeFirst().continuation.resume(returning: replacement)
                }
                opened += 1
            }
            return
        }
        if waiters.isEmpty {
            idle.append(connection)
        } else {
            waiters.removeFirst().continuation.resume(returning: connection)
        }
    }
}

/// Every pooled connection stayed busy for the whole acquire timeout: the database is slow or
/// the pool too small for the load. Nothing was run.
public struct PostgresPoolBusy: Error, Sendable, CustomStringConvertible {
    public let waited: Duration
    public let size: Int
    public var description: String { "no pooled PostgreSQL connection came free within \(waited) (pool of \(size))" }
}
