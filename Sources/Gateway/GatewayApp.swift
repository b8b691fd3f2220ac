import AMQPClient
import Contracts
import Foundation
import Hummingbird
import Logging
import PostgresClient
import RedisClient
import Runtime
import ServiceLifecycle
import Synchronization

/// The HTTP front door. This scope: it connects to the broker (publisher confirms on),
/// declares the topology, and answers `/health` and `/ready`; webhooks and the admin API build on it.
public struct Gateway: Sendable {
    public let configuration: FanFlowConfiguration
    public let publisher: ManagedAMQPConnection
    public let redis: RedisConnection
    public let database: PostgresPool
    let logger: Logger

    public init(configuration: FanFlowConfiguration, logger: Logger) async throws {
        self.configuration = configuration
        self.logger = logger
        var amqp = try AMQPConfiguration(url: configuration.amqpURL)
        amqp.connectionName = "fanflow-gateway"
        // Platforms retry after 5 s: a confirm that has not come in 2 s is answered as an error.
        amqp.confirmTimeoutMilliseconds = 2_000
        amqp.sendTimeoutMilliseconds = 2_000
        self.publisher = ManagedAMQPConnection(configuration: amqp, logger: logger) { connection in
            try await connection.declare(Topology.standard)
            try await connection.enableConfirms()
        }
        self.redis = try await RedisConnection(url: configuration.redisURL)
        self.database = PostgresPool(url: configuration.databaseURL, maximumConnections: 8)
        try await publisher.start()
    }

    /// The HTTP application, a `Service` that stops accepting connections on graceful shutdown.
    public func application() -> some ApplicationProtocol {
        let router = Router()
        router.get("/health") { _, _ in HealthStatus(status: "ok") }
        router.get("/ready") { _, _ in await readiness() }
        return Application(router: router,
                           configuration: .init(address: .hostname(configuration.httpHost, port: configuration.httpPort),
                                                serverName: "fanflow-gateway"),
                           logger: logger)
    }

    /// Closes the gateway's connections after the HTTP server stopped.
    public func shutdown() async {
        await publisher.close()
        await redis.close()
        await database.close()
    }

    /// Each dependency probed with a deadline, so `/ready` answers even when one of them hangs.
    func readiness() async -> Response {
        async let broker = probe { _ = try await publisher.current() }
        async let cache = probe { _ = try await redis.command(["PING"]) }
        async let store = probe { _ = try await database.query("SELECT 1") }
        let checks = await ["broker": broker, "redis": cache, "database": store]
        let ready = checks.values.allSatisfy { $0 == "ok" }
        let body = ReadyStatus(status: ready ? "ready" : "not_ready", checks: checks)
        var response = Response(status: ready ? .ok : .serviceUnavailable)
        response.headers[.contentType] = "application/json"
        response.body = .init(byteBuffer: ByteBuffer(bytes: (try? JSONEncoder().encode(body)) ?? Data()))
        return response
    }

    /// Resolves with whichever comes first, the check or the deadline. A blocking client call cannot
    /// be cancelled, so the check is left to finish on its own instead of being awaited.
    private func probe(_ check: @escaping @Sendable () async throws -> Void) async -> String {
        let answered = FirstAnswer()
        return await withCheckedContinuation { continuation in
            Task {
                let outcome: String
                do { try await check(); outcome = "ok" } catch { outcome = "\(error)" }
                if answered.claim() { continuation.resume(returning: outcome) }
            }
            Task {
                try? await Task.sleep(for: .seconds(2))
                if answered.claim() { continuation.resume(returning: "timed out after 2 s") }
            }
        }
    }
}

/// True for the first caller only.
final class FirstAnswer: Sendable {
    private let taken = Mutex(false)
    func claim() -> Bool { taken.withLock { was in defer { was = true }; return !was } }
}

struct HealthStatus: ResponseCodable {
    let status: String
}

struct ReadyStatus: Codable {
    let status: String
    let checks: [String: String]
}
