import AMQPClient
import ClientSupport
import Contracts
import Logging
import Runtime
import ServiceLifecycle

/// Handles the deliveries of one batch and settles every one of them (ack, nack or dead-letter).
public protocol BatchHandler: Sendable {
    func handle(_ batch: [AMQPDelivery], from consumer: ConsumerContext) async
}

/// One consumer on one connection: consumes a queue, hands each batch to its handler, and on
/// connection loss reconnects with backoff. On graceful shutdown it cancels the consumer, lets the
/// batch in hand finish (its acks go out), then closes; unacknowledged deliveries return to the queue.
public struct ConsumerService: Service {
    let amqp: AMQPConfiguration
    let queue: QueueName
    let prefetch: Int
    let handler: any BatchHandler
    let logger: Logger

    public init(amqp: AMQPConfiguration, queue: QueueName, prefetch: Int, handler: any BatchHandler, logger: Logger) {
        self.amqp = amqp
        self.queue = queue
        self.prefetch = prefetch
        self.handler = handler
        self.logger = logger
    }

    public func run() async throws {
        let backoff = Backoff()
        var attempt = 0
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            do {
                try await consumeOnce()
                attempt = 0
            } catch {
                if Task.isShuttingDownGracefully || Task.isCancelled { break }
                logger.error("consumer stopped; reconnecting", metadata: ["queue": "\(queue)", "error": "\(error)"])
                try? await Task.sleep(for: .milliseconds(backoff.delayMilliseconds(attempt: attempt)))
                attempt += 1
            }
        }
    }

    private func consumeOnce() async throws {
        let connection = try await AMQPConnection(configuration: amqp)
        do {
            try await connection.declare(Topology.standard)
            // Dead letters are published on the consumer's own channel, confirmed before the
            // original is acked: one connection per consumer, and the publish and the ack it
            // waits for travel in order on one socket.
            try await connection.enableConfirms()
            let context = ConsumerContext(queue: queue, connection: connection)
            let (tag, deliveries) = try await connection.consume(queue: queue.rawValue, prefetch: prefetch)
            logger.info("consuming", metadata: ["queue": "\(queue)", "prefetch": "\(prefetch)"])
            let buffer = DeliveryBuffer()
            let filling = Task { await buffer.fill(from: deliveries) }
            defer { filling.cancel() }
            try await withGracefulShutdownHandler {
                try await withTaskCancellationHandler {
                    while let batch = try await buffer.next() {
                        await handler.handle(batch, from: context)
                    }
                } onCancel: {
                    filling.cancel()
                }
            } onGracefulShutdown: {
                Task { try? await connection.cancel(consumerTag: tag) }
            }
        } catch {
            await connection.close()
            throw error
        }
        await connection.close()
        logger.info("consumer closed", metadata: ["queue": "\(queue)"])
    }
}
