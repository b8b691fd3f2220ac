import AMQPClient
import ClientSupport
import Contracts
import Foundation
import Logging
import PostgresClient

/// The work a pool does on a batch of decoded events. It throws ``EventRefused`` when an event
/// itself is at fault; a server's refusal of an event's content (a PostgreSQL data error, a Redis
/// error reply) is recognized as such (``ConsumerFailure``); any other error means a server is
/// unavailable. Processing must be idempotent per event: a batch is retried, and split.
public protocol EnvelopeProcessor: Sendable {
    func process(_ events: [Envelope]) async throws
}

/// An event the processor will never be able to handle: it is dead-lettered, not retried.
public struct EventRefused: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Settles every delivery of a batch around an ``EnvelopeProcessor``, so that no message can stall
/// its queue and no outage can dead-letter a good one.
///
/// - The batch is processed together and acked with one `ack(multiple:)` after the processor
///   returned (for the database pools: after the commit).
/// - While a server is unavailable (connection lost, timeout, a server that answered about its
///   own state) the batch is held and retried with backoff: burning the queue's delivery limit on
///   an outage would dead-letter good events.
/// - When a server refused the batch for its content, the batch is split in halves, and halves
///   again, until the failing messages stand alone; every half that passes is acked at once, so
///   the good events behind a bad one carry on (a batch of 500 with one bad message costs about 18
///   runs). The lone failures are retried in rounds with a short backoff (100 ms, doubling) and a
///   message that failed `deadLetterAfter` times (counting the broker's earlier deliveries) is
///   dead-lettered with its error, attempt count, first and last failure time and queue in its
///   headers (``DeadLetterHeader``), confirmed, then acked. Undecodable messages and
///   ``EventRefused`` cannot get better and are dead-lettered at once.
/// - Cancelled while waiting, it leaves what is not settled unsettled: the broker redelivers it.
public struct EnvelopeBatchHandler<Processor: EnvelopeProcessor>: BatchHandler {
    let processor: Processor
    let logger: Logger
    let deadLetterAfter: Int
    let retryMilliseconds: Int

    /// `deadLetterAfter` is `FANFLOW_DEAD_LETTER_AFTER` (default 5): with 100 ms doubling between
    /// rounds a poison message is out of the way within 1.5 s.
    public init(_ processor: Processor, logger: Logger, deadLetterAfter: Int = 5, retryMilliseconds: Int = 100) {
        self.processor = processor
        self.logger = logger
        self.deadLetterAfter = max(1, deadLetterAfter)
        self.retryMilliseconds = max(1, retryMilliseconds)
    }

    typealias Item = (delivery: AMQPDelivery, envelope: Envelope)

    /// A message that failed alone and waits for another round.
    struct Suspect {
        let item: Item
        var note: DeadLetterNote
        var permanent: Bool
    }

    public func handle(_ batch: [AMQPDelivery], from consumer: ConsumerContext) async {
        var items: [Item] = []
        for delivery in batch {
            do {
                items.append((delivery, try Envelope.decode(delivery.body)))
            } catch {
                let now = Date()
                let note = DeadLetterNote(reason: "undecodable: \(error)", attempts: delivery.priorAttempts + 1,
                                          firstFailure: now, lastFailure: now)
                guard await consumer.deadLetter(delivery, note, logger: logger) else { return }
            }
        }
        guard let last = items.last?.delivery else { return }
        let failure: ConsumerFailure
        switch await run(items.map(\.envelope)) {
        case .done:
            try? await last.ack(multiple: true)
            return
        case .interrupted:
            return
        case .failed(let first):
            failure = first
        }
        var suspects: [Suspect] = []
        guard await isolate(items, failure, into: &suspects) else { return }
        _ = await settle(suspects, consumer)
    }

    /// Finds the failing messages of `items` by halving (`known`: the failure `items` already
    /// gave, so they are not run again); acks every part that passes. False when interrupted.
    private func isolate(_ items: [Item], _ known: ConsumerFailure?, into suspects: inout [Suspect]) async -> Bool {
        let failure: ConsumerFailure
        if let known {
            failure = known
        } else {
            switch await run(items.map(\.envelope)) {
            case .done:
                for item in items { try? await item.delivery.ack() }
                return true
            case .interrupted:
                return false
            case .failed(let found):
                failure = found
            }
        }
        guard items.count > 1 else {
            // The first failure on this delivery: earlier deliveries' times are not known (see
            // ``DeadLetterHeader/firstFailure``), their count is (`priorAttempts`).
            let now = Date()
            var permanent = false
            if case .permanent = failure { permanent = true }
            suspects.append(Suspect(item: items[0], note: DeadLetterNote(reason: failure.reason, attempts: items[0].delivery.priorAttempts + 1,
                                                                        firstFailure: now, lastFailure: now),
                                    permanent: permanent))
            return true
        }
        let middle = items.count / 2
        guard await isolate(Array(items[..<middle]), nil, into: &suspects) else { return false }
        return await isolate(Array(items[middle...]), nil, into: &suspects)
    }

    /// Retries lone failures in rounds until each passes (acked) or reaches `deadLetterAfter`
    /// (dead-lettered). False when interrupted.
    private func settle(_ suspects: [Suspect], _ consumer: ConsumerContext) async -> Bool {
        var waiting = suspects
        var round = 0
        while true {
            var next: [Suspect] = []
            for suspect in waiting {
                if suspect.permanent || suspect.note.attempts >= deadLetterAfter {
                    guard await consumer.deadLetter(suspect.item.delivery, suspect.note, logger: logger) else { return false }
                } else {
                    next.append(suspect)
                }
            }
            if next.isEmpty { return true }
            logger.warning("retrying messages that failed alone", metadata: [
                "queue": "\(consumer.queue)", "count": "\(next.count)", "error": "\(next[0].note.reason.prefix(200))"])
            // 100, 200, 400, 800 ms: a unique-key race has passed by then, a bad value has not.
            try? await Task.sleep(for: .milliseconds(min(retryMilliseconds << min(round, 10), 5_000)))
            if Task.isCancelled { return false }
            round += 1
            waiting = []
            for var suspect in next {
                switch await run([suspect.item.envelope]) {
                case .done:
                    try? await suspect.item.delivery.ack()
                case .interrupted:
                    return false
                case .failed(let failure):
                    suspect.note.attempts += 1
                    suspect.note.lastFailure = Date()
                    suspect.note.reason = failure.reason
                    if case .permanent = failure { suspect.permanent = true }
                    waiting.append(suspect)
                }
            }
        }
    }

    enum Outcome {
        /// Processed (or found already processed).
        case done
        /// A server refused the events for their content (``ConsumerFailure/countsAgainstMessages``).
        case failed(ConsumerFailure)
        /// Cancelled while waiting for a server: nothing is known to be wrong with the events.
        case interrupted
    }

    /// Processes `envelopes`, holding them with backoff for as long as servers are unavailable.
    private func run(_ envelopes: [Envelope]) async -> Outcome {
        let backoff = Backoff(initialMilliseconds: 200, maximumMilliseconds: 5_000)
        var attempt = 0
        while true {
            do {
                try await processor.process(envelopes)
                return .done
            } catch {
                let failure = ConsumerFailure.classify(error)
                if failure.countsAgainstMessages { return .failed(failure) }
                if Task.isCancelled { return .interrupted }
                logger.error("a server is unavailable, holding the batch",
                             metadata: ["error": "\(failure.reason)", "attempt": "\(attempt)", "events": "\(envelopes.count)"])
                try? await Task.sleep(for: .milliseconds(backoff.delayMilliseconds(attempt: attempt)))
                attempt += 1
            }
        }
    }
}
