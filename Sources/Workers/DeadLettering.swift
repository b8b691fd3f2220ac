import AMQPClient
import ClientSupport
import Contracts
import Foundation
import Logging

/// The headers a dead-lettered message carries: why it died, after how many attempts, when, and
/// where from. The original message id and properties travel unchanged beside them.
public enum DeadLetterHeader {
    public static let error = "x-fanflow-error"
    public static let attempts = "x-fanflow-attempts"
    /// RFC 3339, as envelope times are written. The first failure *on the delivery that was
    /// dead-lettered*: a message redelivered after a crash or a lost connection comes back exactly
    /// as it was published, with nowhere to carry earlier failure times, so this can be later than
    /// its true first failure (``attempts`` does count the earlier deliveries, from `x-delivery-count`).
    public static let firstFailure = "x-fanflow-first-failure"
    public static let lastFailure = "x-fanflow-last-failure"
    /// The work queue the message died in (replay sends it back there).
    public static let queue = "x-fanflow-queue"
    /// The routing key and exchange it had arrived with, for the operator's eyes.
    public static let routingKey = "x-fanflow-routing-key"
    public static let exchange = "x-fanflow-exchange"
    /// Longest error text kept: a server message can quote the value (3.6 KB of emoji), and
    /// headers share one frame with the rest of the properties.
    static let maximumErrorLength = 1_000
}

/// Why and after how much trying a message is given up.
struct DeadLetterNote: Sendable {
    var reason: String
    var attempts: Int
    var firstFailure: Date
    var lastFailure: Date
}

/// What a handler knows of the consumer it serves: the queue, and the consumer's own connection
/// (confirms on), on which dead letters are published before the original is acked.
public struct ConsumerContext: Sendable {
    public let queue: QueueName
    let connection: AMQPConnection

    public init(queue: QueueName, connection: AMQPConnection) {
        self.queue = queue
        self.connection = connection
    }

    /// Publishes `delivery` to `fanflow.dead-letter` (routing key: the queue's name, so it lands
    /// in `<queue>.dead`) with the note in its headers, confirmed, and only then acks the
    /// original. While the broker does not confirm, it tries again with backoff (the keeper
    /// stores a second copy on the same row, so a timed-out first copy does no harm). False when
    /// the connection is gone or the task cancelled: the original stays unsettled and the broker
    /// redelivers it.
    func deadLetter(_ delivery: AMQPDelivery, _ note: DeadLetterNote, logger: Logger) async -> Bool {
        var properties = delivery.properties
        properties.persistent = true
        properties.headers["x-delivery-count"] = nil
        properties.headers[DeadLetterHeader.error] = .string(String(note.reason.prefix(DeadLetterHeader.maximumErrorLength)))
        properties.headers[DeadLetterHeader.attempts] = .int(Int64(note.attempts))
        properties.headers[DeadLetterHeader.firstFailure] = .string(RFC3339.format(note.firstFailure))
        properties.headers[DeadLetterHeader.lastFailure] = .string(RFC3339.format(note.lastFailure))
        properties.headers[DeadLetterHeader.queue] = .string(queue.rawValue)
        properties.headers[DeadLetterHeader.routingKey] = .string(delivery.routingKey)
        properties.headers[DeadLetterHeader.exchange] = .string(delivery.exchange)
        let backoff = Backoff(initialMilliseconds: 200, maximumMilliseconds: 5_000)
        var attempt = 0
        while !Task.isCancelled {
            let outcome = await connection.publish(exchange: ExchangeName.deadLetter.rawValue, routingKey: queue.rawValue,
                                                   body: delivery.body, properties: properties)
            if outcome == .acked {
                logger.error("dead-lettered a message", metadata: [
                    "queue": "\(queue)", "messageID": "\(delivery.properties.messageID ?? "-")",
                    "attempts": "\(note.attempts)", "error": "\(note.reason.prefix(200))"])
                do { try await delivery.ack() } catch { return false }
                return true
            }
            guard await connection.isOpen else { return false }
            logger.error("dead letter not confirmed; trying again", metadata: ["queue": "\(queue)", "outcome": "\(outcome)"])
            try? await Task.sleep(for: .milliseconds(backoff.delayMilliseconds(attempt: attempt)))
            attempt += 1
        }
        return false
    }
}

extension AMQPDelivery {
    /// Failed deliveries before this one, as far as the broker knows: quorum queues count them in
    /// `x-delivery-count`; a redelivery without the count (a classic queue) counts as one. Attempts
    /// start from here, so a message that keeps coming back is never counted from zero again.
    var priorAttempts: Int {
        max(deliveryCount, redelivered ? 1 : 0)
    }
}
