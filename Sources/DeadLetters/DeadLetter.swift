import Foundation

/// What became of a dead letter: waiting for a person, sent back to its queue, or given up.
public enum DeadLetterStatus: String, Sendable, CaseIterable, Codable {
    case open
    case replayed
    case dropped
}

/// A message a work queue gave up on, as stored by the keeper: why, after how many attempts, when,
/// and the original bytes.
public struct DeadLetter: Sendable, Equatable {
    public let id: Int64
    /// The work queue it died in (replay sends it back there).
    public let queue: String
    /// The AMQP message id (the envelope's id), or `sha256:<hex>` of the body when it had none.
    public let messageID: String
    public let reason: String
    public let attempts: Int
    public let firstFailure: Date
    public let lastFailure: Date
    public let routingKey: String?
    public let contentType: String?
    public let body: [UInt8]
    /// Times it died (again after a replay that did not help).
    public let deaths: Int
    public let status: DeadLetterStatus
    public let replayedCount: Int
    public let lastReplayedAt: Date?
    public let droppedAt: Date?
    public let createdAt: Date
    public let updatedAt: Date

    public init(id: Int64, queue: String, messageID: String, reason: String, attempts: Int, firstFailure: Date,
                lastFailure: Date, routingKey: String?, contentType: String?, body: [UInt8], deaths: Int,
                status: DeadLetterStatus, replayedCount: Int, lastReplayedAt: Date?, droppedAt: Date?,
                createdAt: Date, updatedAt: Date) {
        self.id = id
        self.queue = queue
        self.messageID = messageID
        self.reason = reason
        self.attempts = attempts
        self.firstFailure = firstFailure
        self.lastFailure = lastFailure
        self.routingKey = routingKey
        self.contentType = contentType
        self.body = body
        self.deaths = deaths
        self.status = status
        self.replayedCount = replayedCount
        self.lastReplayedAt = lastReplayedAt
        self.droppedAt = droppedAt
        self.createdAt = createdAt
        self.updatedAt = updatedAt
    }
}

extension DeadLetter {
    /// The same letter addressed to another work queue (a retired queue's successor).
    func sent(to queue: String) -> DeadLetter {
        guard queue != self.queue else { return self }
        return DeadLetter(id: id, queue: queue, messageID: messageID, reason: reason, attempts: attempts, firstFailure: firstFailure,
                          lastFailure: lastFailure, routingKey: routingKey, contentType: contentType, body: body, deaths: deaths,
                          status: status, replayedCount: replayedCount, lastReplayedAt: lastReplayedAt, droppedAt: droppedAt,
                          createdAt: createdAt, updatedAt: updatedAt)
    }
}

/// A dead message as the keeper read it off a `<queue>.dead` queue.
public struct NewDeadLetter: Sendable, Equatable {
    public var queue: String
    public var messageID: String
    public var reason: String
    public var attempts: Int
    public var firstFailure: Date
    public var lastFailure: Date
    public var routingKey: String?
    public var contentType: String?
    public var body: [UInt8]

    public init(queue: String, messageID: String, reason: String, attempts: Int, firstFailure: Date, lastFailure: Date,
                routingKey: String?, contentType: String?, body: [UInt8]) {
        // Text from headers goes into text columns: a NUL (which PostgreSQL text cannot hold, and
        // the client refuses) would otherwise make the dead letter itself unstorable.
        func clean(_ text: String, _ limit: Int) -> String {
            String(String(text.unicodeScalars.map { $0 == "\u{0}" ? "\u{FFFD}" : Character($0) }).prefix(limit))
        }
        self.queue = clean(queue, 255)
        self.messageID = clean(messageID, 255)
        self.reason = clean(reason, 2_000)
        // Numbers from headers go into `integer` and `timestamptz` columns: one out of range (an
        // attempts header above 2^31 - 1, a death time in year 300,000) would make the row
        // unstorable and hold its `.dead` queue. Attempts are 1 at least, times within years 1970-9999.
        self.attempts = min(max(attempts, 1), Int(Int32.max))
        func clamp(_ date: Date) -> Date {
            let seconds = date.timeIntervalSince1970
            return Date(timeIntervalSince1970: seconds.isFinite ? min(max(seconds, 0), 253_402_300_799) : 0)
        }
        self.firstFailure = clamp(firstFailure)
        self.lastFailure = clamp(lastFailure)
        self.routingKey = routingKey.map { clean($0, 255) }
        self.contentType = contentType.map { clean($0, 255) }
        self.body = body
    }
}

/// Sends a dead letter's original bytes back to the queue it died in (default exchange, routing key
/// = the queue, the same message id), confirmed. Implemented over AMQP by the adapters that replay
/// (the gateway's route, the command line); this module knows no broker.
public protocol DeadLetterRepublisher: Sendable {
    /// True once the broker confirmed it.
    func republish(_ letter: DeadLetter) async -> Bool
}

public enum ReplayOutcome: Sendable, Equatable {
    /// Published again (confirmed) and marked; repeating it is safe, consumers are idempotent by id.
    case replayed(DeadLetter)
    case notFound
    /// Dropped letters are not replayed: dropping was the operator's decision.
    case dropped(DeadLetter)
    /// The broker did not confirm: nothing was marked; try again.
    case unconfirmed
}

public enum DropOutcome: Sendable, Equatable {
    /// Marked dropped (also when it already was): it no longer counts in the depth.
    case dropped(DeadLetter)
    case notFound
}
