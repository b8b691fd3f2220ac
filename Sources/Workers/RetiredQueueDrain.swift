import AMQPClient
import ClientSupport
import Contracts
import Logging
import Runtime
import ServiceLifecycle
import Synchronization

/// Empties a queue an upgrade retired (``Topology/retired``), so that messages a former version
/// left in it are handled by the pool that took its place and none is lost.
///
/// Every few seconds it looks at the queue from a connection of its own (a passive declare). When
/// the queue holds messages it consumes them with `handler`, exactly as a pool consumes its own
/// queue (same batching, retries, splitting and dead letters), until the queue has no ready
/// message, no other consumer (a second worker process draining it too, whose unacknowledged
/// messages would return if it died) and nothing is in hand; then it stops consuming and goes back
/// to looking. A queue that does not exist (a new install, or deleted by an operator once empty)
/// is never looked at again by this process. The consumer's connection declares the topology first,
/// which unbinds the retired queue again should a process of the former version have bound it.
///
/// Handling is idempotent (history by event id, the ledger by its unique index), so a message that
/// also reached the new queue, or both retired queues, is stored once and granted once.
public struct RetiredQueueDrain: Service {
    let amqp: AMQPConfiguration
    let queue: QueueName
    let prefetch: Int
    let handler: any BatchHandler
    let topology: Topology
    /// Between looks while the queue is empty; 5 s is one passive declare per retired queue per
    /// worker process, and a message a former version still publishes waits at most that long.
    let poll: Duration
    let logger: Logger

    public init(amqp: AMQPConfiguration, queue: QueueName, prefetch: Int, handler: any BatchHandler,
                topology: Topology = .standard, poll: Duration = .seconds(5), logger: Logger) {
        self.amqp = amqp
        self.queue = queue
        self.prefetch = prefetch
        self.handler = handler
        self.topology = topology
        self.poll = poll
        self.logger = logger
    }

    /// Drain services for every retired work queue and its dead letters: the work queue's messages
    /// through `handler`, its dead letters kept by a ``DeadLetterKeeper`` (they were dead-lettered
    /// there before the upgrade, or by the drain itself).
    public static func services(amqp: AMQPConfiguration, topology: Topology = .standard, prefetch: Int, handler: any BatchHandler,
                                keeper: (QueueName) -> any BatchHandler, logger: Logger) -> [any Service] {
        topology.retired.flatMap { retired -> [any Service] in
            [RetiredQueueDrain(amqp: amqp, queue: retired.name, prefetch: prefetch, handler: handler, topology: topology, logger: logger),
             RetiredQueueDrain(amqp: amqp, queue: retired.name.deadLetter, prefetch: 50, handler: keeper(retired.name),
                               topology: topology, logger: logger)]
        }
    }

    public func run() async throws {
        let backoff = Backoff()
        var attempt = 0
        var monitor: AMQPConnection?
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            do {
                let looking: AMQPConnection
                if let open = monitor, await open.isOpen { looking = open } else {
                    if let monitor { await monitor.close() }
                    looking = try await AMQPConnection(configuration: amqp)
                    monitor = looking
                }
                guard let status = try await looking.queueStatus(queue.rawValue) else {
                    logger.debug("retired queue absent; nothing to drain", metadata: ["queue": "\(queue)"])
                    await looking.close()
                    monitor = nil
                    // Returning would end the worker's whole service group: wait for its shutdown.
                    while !Task.isShuttingDownGracefully, !Task.isCancelled { await Self.idle(.seconds(3600)) }
                    return
                }
                attempt = 0
                if status.messages > 0 {
                    logger.notice("draining a retired queue", metadata: ["queue": "\(queue)", "messages": "\(status.messages)"])
                    try await drainOnce(looking)
                    logger.notice("retired queue drained; it can be deleted once every process runs this version (ops/runbook.md)",
                                  metadata: ["queue": "\(queue)"])
                    continue
                }
                await Self.idle(poll)
            } catch {
                if Task.isShuttingDownGracefully || Task.isCancelled { break }
                logger.error("draining a retired queue failed; trying again", metadata: ["queue": "\(queue)", "error": "\(error)"])
                await Self.idle(.milliseconds(backoff.delayMilliseconds(attempt: attempt)))
                attempt += 1
            }
        }
        if let monitor { await monitor.close() }
    }

    /// Sleeps for `duration`, waking early on cancellation or the start of a graceful shutdown.
    static func idle(_ duration: Duration) async {
        let end = ContinuousClock.now + duration
        while !Task.isShuttingDownGracefully, !Task.isCancelled, ContinuousClock.now < end {
            try? await Task.sleep(for: min(.seconds(1), end - ContinuousClock.now))
        }
    }

    /// Consumes until the queue is empty and this is its only consumer, with nothing in hand.
    func drainOnce(_ monitor: AMQPConnection) async throws {
        let connection = try await AMQPConnection(configuration: amqp)
        do {
            try await connection.declare(topology)
            try await connection.enableConfirms()
            let context = ConsumerContext(queue: queue, connection: connection)
            let (tag, deliveries) = try await connection.consume(queue: queue.rawValue, prefetch: prefetch)
            let buffer = DeliveryBuffer()
            let busy = Busy()
            let filling = Task { await buffer.fill(from: deliveries) }
            defer { filling.cancel() }
            let watching = Task {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .seconds(1))
                    guard !busy.now, let status = try? await monitor.queueStatus(queue.rawValue),
                          status.messages == 0, status.consumers <= 1, !busy.now else { continue }
                    // Deliveries already received still come out of the buffer; any the broker sent
                    // after this are unacknowledged when the connection closes and return to the queue.
                    try? await connection.cancel(consumerTag: tag)
                    return
                }
            }
            defer { watching.cancel() }
            try await withGracefulShutdownHandler {
                try await withTaskCancellationHandler {
                    while let batch = try await buffer.next() {
                        busy.set(true)
                        await handler.handle(batch, from: context)
                        busy.set(false)
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
    }
}

/// Whether the drain's handler holds a batch (read by its watcher, set by its loop).
final class Busy: Sendable {
    private let state = Mutex(false)
    var now: Bool { state.withLock { $0 } }
    func set(_ value: Bool) { state.withLock { $0 = value } }
}
