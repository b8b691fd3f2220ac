import AMQPClient
import ClientSupport
import Contracts
import Logging
import Loyalty
import Runtime
import ServiceLifecycle

/// Publishes what the outbox holds (level changes) to `fanflow.events`, confirmed, then deletes it.
/// Several relays (one per worker process) share the table by claiming with SKIP LOCKED.
public struct OutboxRelay: Service {
    let outbox: Outbox
    let broker: ManagedAMQPConnection
    let idleInterval: Duration
    let logger: Logger

    public init(outbox: Outbox, broker: ManagedAMQPConnection, idleInterval: Duration = .milliseconds(250), logger: Logger) {
        self.outbox = outbox
        self.broker = broker
        self.idleInterval = idleInterval
        self.logger = logger
    }

    public func run() async throws {
        let backoff = Backoff(initialMilliseconds: 200, maximumMilliseconds: 5_000)
        var failures = 0
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            do {
                let sent = try await relayOnce()
                failures = 0
                if sent == 0 { try? await Task.sleep(for: idleInterval) }
            } catch {
                logger.warning("outbox relay failed; retrying", metadata: ["error": "\(error)"])
                try? await Task.sleep(for: .milliseconds(backoff.delayMilliseconds(attempt: failures)))
                failures += 1
            }
        }
    }

    /// Publishes one claimed batch; returns how many were confirmed.
    public func relayOnce() async throws -> Int {
        let messages = try await outbox.claim()
        guard !messages.isEmpty else { return 0 }
        let connection = try await broker.current()
        let outcomes = await connection.publish(messages.map { message in
            OutgoingMessage(exchange: ExchangeName.events.rawValue, routingKey: message.routingKey, body: message.body,
                            properties: AMQPProperties(messageID: message.messageID, contentType: "application/json",
                                                       appID: "fanflow-worker", persistent: true))
        })
        let confirmed = zip(messages, outcomes).filter { $0.1 == .acked }.map(\.0.id)
        try await outbox.delete(confirmed)
        if confirmed.count < messages.count {
            logger.warning("outbox messages not confirmed; they are retried when their lease ends",
                           metadata: ["count": "\(messages.count - confirmed.count)"])
        }
        return confirmed.count
    }
}
