import AMQPClient
import ClientSupport
import Logging

/// An AMQP connection that is re-opened in the background when it is lost.
///
/// Callers ask for the current connection; while the broker is unreachable they get an error at
/// once (the gateway answers the platform with an error and the platform retries) instead of
/// waiting. `prepare` runs on every new connection: declare the topology, enable confirms.
public actor ManagedAMQPConnection {
    private let configuration: AMQPConfiguration
    private let prepare: @Sendable (AMQPConnection) async throws -> Void
    private let logger: Logger
    private let backoff: Backoff
    private var connection: AMQPConnection?
    private var reconnecting: Task<Void, Never>?
    private var lastError: (any Error)?
    private var stopped = false

    public init(configuration: AMQPConfiguration, logger: Logger, backoff: Backoff = Backoff(),
                prepare: @escaping @Sendable (AMQPConnection) async throws -> Void) {
        self.configuration = configuration
        self.logger = logger
        self.backoff = backoff
        self.prepare = prepare
    }

    /// Connects for the first time, retrying until it works or the task is cancelled.
    public func start() async throws {
        connection = try await openRetrying()
    }

    /// Opens a connection, retrying with backoff until it works or the task is cancelled.
    private func openRetrying() async throws -> AMQPConnection {
        try await backoff.retry({ try await self.open() }, onFailure: { error, attempt in
            self.lastError = error
            self.logger.warning("broker not reachable, retrying", metadata: ["error": "\(error)", "attempt": "\(attempt)"])
        })
    }

    /// The open connection, or the reason there is none (a reconnect is then under way).
    public func current() async throws -> AMQPConnection {
        if let connection, await connection.isOpen { return connection }
        if stopped { throw AMQPError(.connectionClosed, "shut down") }
        if let connection, let reason = await connection.closeReason {
            logger.error("broker connection lost", metadata: ["reason": "\(reason)"])
            lastError = reason
            self.connection = nil
        }
        reconnectInBackground()
        throw lastError ?? AMQPError(.connectionClosed, "not connected yet")
    }

    public var isConnected: Bool {
        get async {
            guard let connection else { return false }
            return await connection.isOpen
        }
    }

    public func close() async {
        stopped = true
        reconnecting?.cancel()
        await connection?.close()
        connection = nil
    }

    private func open() async throws -> AMQPConnection {
        let fresh = try await AMQPConnection(configuration: configuration)
        do {
            try await prepare(fresh)
        } catch {
            await fresh.close()
            throw error
        }
        return fresh
    }

    private func reconnectInBackground() {
        guard reconnecting == nil, !stopped else { return }
        reconnecting = Task {
            let fresh = try? await self.openRetrying()
            await self.installed(fresh)
        }
    }

    private func installed(_ fresh: AMQPConnection?) async {
        reconnecting = nil
        guard let fresh else { return }
        if stopped { await fresh.close(); return }
        logger.notice("broker connection re-established")
        connection = fresh
        lastError = nil
    }
}
