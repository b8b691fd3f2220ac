import AMQPClient
import ClientSupport
import Contracts
import Logging
import PostgresClient

/// The work a pool does on a batch of decoded events. It throws ``EventRefused`` (or a
/// PostgreSQL data error, SQLSTATE class 22 or 23) when an event itself is at fault, and any other
/// error when a server is unavailable.
public protocol EnvelopeProcessor: Sendable {
    func process(_ events: [Envelope]) async throws
}

/// An event the processor will never be able to handle: it is dead-lettered, not retried.
public struct EventRefused: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Settles every delivery of a batch around an ``EnvelopeProcessor``.
///
/// Undecodable messages are dead-lettered at once; the rest are processed together and acked
/// with one `ack(multiple:)` after the processor returned (for the database pools: after the
/// commit). While a server is down the batch is held and retried with backoff: burning the
/// queue's delivery limit on an outage would dead-letter good events. A batch that holds an event
/// the processor refuses is processed one event at a time, so that only the bad one is
/// dead-lettered. Cancelled while waiting, it leaves the batch unsettled: the broker redelivers it.
public struct EnvelopeBatchHandler<Processor: EnvelopeProcessor>: BatchHandler {
    let processor: Processor
    let logger: Logger

    public init(_ processor: Processor, logger: Logger) {
        self.processor = processor
        self.logger = logger
    }

    public func handle(_ batch: [AMQPDelivery]) async {
        var events: [(AMQPDelivery, Envelope)] = []
        for delivery in batch {
            do {
                events.append((delivery, try Envelope.decode(delivery.body)))
            } catch {
                logger.error("dead-lettering an undecodable message",
                             metadata: ["messageID": "\(delivery.properties.messageID ?? "-")", "error": "\(error)"])
                try? await delivery.nack(requeue: false)
            }
        }
        guard let last = events.last?.0 else { return }
        switch await run(events.map(\.1)) {
        case .done:
            try? await last.ack(multiple: true)
            return
        case .interrupted:
            return
        case .refused:
            break
        }
        for (delivery, envelope) in events {
            switch await run([envelope]) {
            case .done:
                try? await delivery.ack()
            case .refused:
                logger.error("dead-lettering an event that was refused", metadata: ["eventID": "\(envelope.id)"])
                try? await delivery.nack(requeue: false)
            case .interrupted:
                return
            }
        }
    }

    enum Outcome {
        /// Processed (or found already processed).
        case done
        /// An event is at fault, not a server.
        case refused
        /// Cancelled while waiting for a server: nothing is known to be wrong with the events.
        case interrupted
    }

    private func run(_ envelopes: [Envelope]) async -> Outcome {
        let backoff = Backoff(initialMilliseconds: 200, maximumMilliseconds: 5_000)
        var attempt = 0
        while true {
            do {
                try await processor.process(envelopes)
                return .done
            } catch let error as EventRefused {
                if envelopes.count == 1 { logger.warning("event refused", metadata: ["error": "\(error)"]) }
                return .refused
            } catch let error as PostgresError where error.code == .server && Self.isDataError(error.sqlState) {
                if envelopes.count == 1 { logger.warning("event refused by the database", metadata: ["error": "\(error)"]) }
                return .refused
            } catch {
                if Task.isCancelled { return .interrupted }
                logger.error("a server is unavailable, holding the batch", metadata: ["error": "\(error)", "attempt": "\(attempt)"])
                try? await Task.sleep(for: .milliseconds(backoff.delayMilliseconds(attempt: attempt)))
                attempt += 1
            }
        }
    }

    /// SQLSTATE classes 22 (data exception) and 23 (integrity): the row is at fault, not the server.
    static func isDataError(_ sqlState: String?) -> Bool {
        guard let sqlState else { return false }
        return sqlState.hasPrefix("22") || sqlState.hasPrefix("23")
    }
}
