import AMQPClient
import Contracts
import Foundation
import Gateway
import Hummingbird
import HummingbirdTesting
import HTTPTypes
import Logging
import PostgresClient
import Storage
import Synchronization
import Testing

/// A gateway of the test's own, served over real HTTP, with a tap on `fanflow.events`: a
/// throwaway queue bound to every routing key, so tests see exactly what the gateway published.
struct GatewayHarness {
    static let adminToken = "test-admin-token-0123456789"
    /// FANFLOW_SECRET_KEY of every test gateway (the gateway refuses to start without one).
    static let secretKey = Data((0..<32).map { UInt8($0 &* 7 &+ 3) }).base64EncodedString()
    /// Member tokens as the test gateways sign them.
    static let memberTokens = try! MemberTokens(secretKey: secretKey)  // a constant valid key
    let gateway: Gateway
    let tap: EventTap

    static func configuration(_ overrides: [String: String] = [:]) throws -> FanFlowConfiguration {
        var environment = [
            "FANFLOW_AMQP_URL": TestEnvironment.amqpURL,
            "FANFLOW_REDIS_URL": TestEnvironment.redisURL,
            "FANFLOW_DATABASE_URL": TestEnvironment.databaseURL,
            "FANFLOW_ADMIN_TOKEN": adminToken,
            "FANFLOW_SECRET_KEY": secretKey,
            // The test client keeps one connection for the whole test, idle while a test waits for workers.
            "FANFLOW_HTTP_IDLE_TIMEOUT_SECONDS": "3600",
        ]
        environment.merge(overrides) { $1 }
        return try FanFlowConfiguration.load(environment, role: .gateway)
    }

    static func migrate() async throws {
        let database = PostgresPool(url: TestEnvironment.databaseURL, maximumConnections: 1)
        try await database.withConnection { try await Migrator(migrations: try Migration.bundled()).run(on: $0) }
        await database.close()
    }

    /// Runs `body` against a live gateway, then shuts everything down.
    static func run(_ overrides: [String: String] = [:],
                    _ body: @Sendable (any TestClientProtocol, EventTap, Gateway) async throws -> Void) async throws {
        try await migrate()
        let tap = try await EventTap.open()
        let gateway = try await Gateway(configuration: try configuration(overrides), logger: Logger(label: "test.gateway"))
        do {
            try await gateway.application().test(.live) { client in try await body(client, tap, gateway) }
        } catch {
            await gateway.shutdown()
            await tap.close()
            throw error
        }
        await gateway.shutdown()
        await tap.close()
    }

    static var adminHeaders: HTTPFields { [.authorization: "Bearer \(adminToken)", .contentType: "application/json"] }

    /// Registers an app through the admin API (as an operator would) and checks it was stored.
    static func register(_ client: any TestClientProtocol, _ platform: String, _ appID: String, _ credentials: [String: String]) async throws {
        let body = try JSONEncoder().encode(credentials)
        try await client.execute(uri: "/admin/v1/apps/\(platform)/\(appID)", method: .put, headers: adminHeaders,
                                 body: ByteBuffer(bytes: body)) { response in
            #expect(response.status == .created, "registering \(platform)/\(appID): \(String(buffer: response.body))")
        }
    }

    static func json(_ response: TestResponse) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(buffer: response.body))) as? [String: Any] ?? [:]
    }

    static func errorCode(_ response: TestResponse) -> String? {
        (json(response)["error"] as? [String: Any])?["code"] as? String
    }
}

/// Collects every envelope published to `fanflow.events` while it is open.
final class EventTap: Sendable {
    let queue: String
    private let connection: AMQPConnection
    private let received = Mutex<[(envelope: Envelope, messageID: String?, routingKey: String)]>([])

    private init(queue: String, connection: AMQPConnection) {
        self.queue = queue
        self.connection = connection
    }

    /// `bindings`: the topic patterns to see (every event by default; a queue's own bindings to
    /// see exactly what the broker routes to that queue).
    static func open(bindings: [String] = ["#"]) async throws -> EventTap {
        let connection = try await AMQPConnection(url: TestEnvironment.amqpURL)
        try await connection.declareExchange(ExchangeName.events.rawValue)
        let queue = TestEnvironment.unique("test.tap")
        // Not deleted when the test ends: a queue deleted while another test's publish is being
        // routed to it (every tap binds "#") can make the broker nack that publish. The server
        // drops the queue a minute after its consumer is gone.
        try await connection.declareQueue(queue, options: AMQPQueueOptions(
            kind: .classic, durable: false, extra: ["x-expires": .int(60_000), "x-max-length": .int(100_000)]))
        for binding in bindings {
            try await connection.bindQueue(queue, exchange: ExchangeName.events.rawValue, routingKey: binding)
        }
        let (_, deliveries) = try await connection.consume(queue: queue, prefetch: 500)
        let tap = EventTap(queue: queue, connection: connection)
        tap.start(deliveries)
        return tap
    }

    private func start(_ deliveries: AsyncThrowingStream<[AMQPDelivery], any Error>) {
        Task { [self] in
            do {
                for try await batch in deliveries {
                    for delivery in batch {
                        if let envelope = try? Envelope.decode(delivery.body) {
                            self.received.withLock { $0.append((envelope, delivery.properties.messageID, delivery.routingKey)) }
                        }
                    }
                    try? await batch.last?.ack(multiple: true)
                }
            } catch {}
        }
    }

    /// Everything published so far.
    func all() -> [(envelope: Envelope, messageID: String?, routingKey: String)] { received.withLock { $0 } }

    /// Everything published for `app` so far.
    func envelopes(app: String) -> [(envelope: Envelope, messageID: String?, routingKey: String)] {
        received.withLock { $0.filter { $0.envelope.app == app } }
    }

    /// Waits until `count` envelopes for `app` arrived (or the timeout), then a little longer to
    /// catch any extra one that should not be there.
    func wait(app: String, count: Int, timeout: Duration = .seconds(10), settle: Duration = .milliseconds(300)) async throws
        -> [(envelope: Envelope, messageID: String?, routingKey: String)] {
        let deadline = ContinuousClock.now + timeout
        while envelopes(app: app).count < count, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        try await Task.sleep(for: settle)
        return envelopes(app: app)
    }

    func close() async {
        await connection.close()
    }
}
