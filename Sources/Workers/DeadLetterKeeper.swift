import AMQPClient
import ClientSupport
import Contracts
import Crypto
import DeadLetters
import Foundation
import Logging
import ServiceLifecycle

/// Consumes a `<queue>.dead` queue and stores each message in `dead_letters`, then acks it, so
/// an operator can list, replay and drop it (`fanflow dlq`, `/admin/v1/dead-letters`). Every worker
/// process runs one per work queue: dead letters are kept whichever pools run.
///
/// The reason, attempts and failure times come from FanFlow's headers (``DeadLetterHeader``), or
/// for a message RabbitMQ dead-lettered itself (the quorum queue's delivery limit, a reject) from
/// its `x-death` / `x-first-death-*` headers. While the database is unavailable the batch is held
/// and retried with backoff, never acked unstored: a dead letter is the last copy of an event.
/// Header values are made storable first (``NewDeadLetter`` clamps text, attempts and times); a
/// row PostgreSQL still refuses for its content (``ConsumerFailure``: at once if permanent, after
/// `storeAttempts` tries if a content error) is logged at critical level with its body and acked,
/// since holding it would stall every dead letter of its queue behind it.
public struct DeadLetterKeeper: BatchHandler {
    let store: DeadLetterStore
    /// The work queue whose dead letters this keeper takes (for messages that do not name one).
    let workQueue: QueueName
    let logger: Logger

    public init(store: DeadLetterStore, workQueue: QueueName, logger: Logger) {
        self.store = store
        self.workQueue = workQueue
        self.logger = logger
    }

    /// One keeper per work queue of `topology`, each on its own connection.
    public static func services(amqp: AMQPConfiguration, store: DeadLetterStore, topology: Topology = .standard,
                                logger: Logger) -> [any Service] {
        topology.queues.map { queue in
            ConsumerService(amqp: amqp, queue: queue.name.deadLetter, prefetch: 50,
                            handler: DeadLetterKeeper(store: store, workQueue: queue.name, logger: logger), logger: logger)
        }
    }

    /// Tries of a row refused for its content (a unique race passes on the next; a value does not).
    static let storeAttempts = 5
    /// Longest body written to the log of a letter given up (base64 of the first 64 KiB).
    static let loggedBodyBytes = 65_536

    public func handle(_ batch: [AMQPDelivery], from consumer: ConsumerContext) async {
        let backoff = Backoff(initialMilliseconds: 200, maximumMilliseconds: 5_000)
        for delivery in batch {
            let letter = Self.letter(delivery, workQueue: workQueue)
            var attempt = 0
            var stored = true
            var refusals = 0
            while true {
                do {
                    try await store.record(letter)
                    break
                } catch {
                    if Task.isCancelled { return }
                    let failure = ConsumerFailure.classify(error)
                    var permanent = false
                    if case .permanent = failure { permanent = true }
                    if failure.countsAgainstMessages { refusals += 1 }
                    if failure.countsAgainstMessages, permanent || refusals >= Self.storeAttempts {
                        logger.critical("a dead letter cannot be stored; acking it so its queue moves on (its body is in this line)", metadata: [
                            "queue": "\(letter.queue)", "messageID": "\(letter.messageID)", "error": "\(failure.reason.prefix(500))",
                            "reason": "\(letter.reason.prefix(500))", "bodyBytes": "\(letter.body.count)",
                            "bodyBase64": "\(Data(letter.body.prefix(Self.loggedBodyBytes)).base64EncodedString())"])
                        stored = false
                        break
                    }
                    logger.error("cannot store a dead letter; holding it", metadata: [
                        "queue": "\(letter.queue)", "messageID": "\(letter.messageID)", "error": "\(error)", "attempt": "\(attempt)"])
                    try? await Task.sleep(for: .milliseconds(backoff.delayMilliseconds(attempt: attempt)))
                    attempt += 1
                }
            }
            if stored { logger.notice("dead letter kept", metadata: ["queue": "\(letter.queue)", "messageID": "\(letter.messageID)",
                                                         "reason": "\(letter.reason.prefix(200))"]) }
            do { try await delivery.ack() } catch { return }
        }
    }

    /// What a dead message says about itself.
    static func letter(_ delivery: AMQPDelivery, workQueue: QueueName, now: Date = Date()) -> NewDeadLetter {
        let headers = delivery.properties.headers
        let death = headers["x-death"].flatMap { value -> [String: AMQPFieldValue]? in
            if case .array(let deaths) = value, case .table(let first)? = deaths.first { return first }
            return nil
        }
        let queue = headers[DeadLetterHeader.queue]?.string ?? headers["x-first-death-queue"]?.string
            ?? death?["queue"]?.string ?? workQueue.rawValue
        let reason = headers[DeadLetterHeader.error]?.string
            ?? (headers["x-first-death-reason"]?.string ?? death?["reason"]?.string).map { "rabbitmq: \($0)" }
            ?? "unknown: no reason in the message's headers"
        var attempts = headers[DeadLetterHeader.attempts]?.int.map(Int.init) ?? 0
        if attempts == 0 { attempts = max(1, Int(headers["x-delivery-count"]?.int ?? death?["count"]?.int ?? 1)) }
        let deathTime = death?["time"]?.int.map { Date(timeIntervalSince1970: Double($0)) }
        let last = headers[DeadLetterHeader.lastFailure]?.string.flatMap(RFC3339.parse) ?? deathTime ?? now
        let first = headers[DeadLetterHeader.firstFailure]?.string.flatMap(RFC3339.parse) ?? last
        let messageID = delivery.properties.messageID.flatMap { $0.isEmpty ? nil : $0 }
            ?? "sha256:" + SHA256.hash(data: delivery.body).map { String(format: "%02x", $0) }.joined()
        let routingKey = headers[DeadLetterHeader.routingKey]?.string
            ?? death.flatMap { d -> String? in if case .array(let keys)? = d["routing-keys"] { return keys.first?.string } else { return nil } }
        return NewDeadLetter(queue: queue, messageID: messageID, reason: reason, attempts: attempts, firstFailure: first,
                             lastFailure: last, routingKey: routingKey, contentType: delivery.properties.contentType,
                             body: delivery.body)
    }
}
