import Contracts
import Foundation
import PostgresClient

/// Dead letters in PostgreSQL (`dead_letters`, migration 0010): recorded by the keeper, listed,
/// replayed and dropped by operators.
public struct DeadLetterStore: Sendable {
    public let database: PostgresPool

    public init(database: PostgresPool) {
        self.database = database
    }

    static let columns = """
        id, queue, message_id, reason, attempts, routing_key, content_type, body, deaths, status, replayed_count,
        (extract(epoch FROM first_failure) * 1000)::bigint AS first_ms, (extract(epoch FROM last_failure) * 1000)::bigint AS last_ms,
        (extract(epoch FROM last_replayed_at) * 1000)::bigint AS replayed_ms, (extract(epoch FROM dropped_at) * 1000)::bigint AS dropped_ms,
        (extract(epoch FROM created_at) * 1000)::bigint AS created_ms, (extract(epoch FROM updated_at) * 1000)::bigint AS updated_ms
        """

    /// Stores a dead message, once per (queue, message id). The same death seen twice (equal last
    /// failure) changes nothing; a new death of a known message reopens its row.
    @discardableResult
    public func record(_ letter: NewDeadLetter) async throws -> Int64 {
        let rows = try await database.query("""
            INSERT INTO dead_letters (queue, message_id, reason, attempts, first_failure, last_failure, routing_key, content_type, body)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
            ON CONFLICT (queue, message_id) DO UPDATE SET
                reason = EXCLUDED.reason, attempts = EXCLUDED.attempts, last_failure = EXCLUDED.last_failure,
                routing_key = EXCLUDED.routing_key, content_type = EXCLUDED.content_type, body = EXCLUDED.body,
                deaths = dead_letters.deaths + 1, status = 'open', dropped_at = NULL, updated_at = now()
            WHERE dead_letters.last_failure IS DISTINCT FROM EXCLUDED.last_failure
            RETURNING id
            """, [letter.queue, letter.messageID, letter.reason, letter.attempts, letter.firstFailure, letter.lastFailure,
                  letter.routingKey, letter.contentType, letter.body])
        if let id = rows.first?.int("id") { return Int64(id) }
        // The same death again: the row is as it was.
        let existing = try await database.query("SELECT id FROM dead_letters WHERE queue = $1 AND message_id = $2",
                                                [letter.queue, letter.messageID])
        guard let row = existing.first else {
            // The conflict that returned no row was on this very key; a row that vanished since is a
            // concurrent delete, which nothing does: say so rather than answer an id of 0.
            throw PostgresRowError(column: "id", problem: .null)
        }
        return try row.requiredInt64("id")
    }

    /// Newest first; `before` pages (ids below it). `status` nil: every status.
    public func list(queue: String?, status: DeadLetterStatus?, limit: Int, before: Int64?) async throws -> [DeadLetter] {
        let rows = try await database.query("""
            SELECT \(Self.columns) FROM dead_letters
            WHERE ($1::text IS NULL OR queue = $1) AND ($2::text IS NULL OR status = $2) AND ($3::bigint IS NULL OR id < $3)
            ORDER BY id DESC LIMIT $4
            """, [queue, status?.rawValue, before, max(1, min(limit, 1_000))])
        return try rows.map(Self.letter)
    }

    public func get(_ id: Int64) async throws -> DeadLetter? {
        try await database.query("SELECT \(Self.columns) FROM dead_letters WHERE id = $1", [id]).first.map(Self.letter)
    }

    /// Open dead letters per queue: the depth an operator has to look at.
    public func depth() async throws -> [String: Int] {
        var depth: [String: Int] = [:]
        for row in try await database.query("SELECT queue, count(*) AS n FROM dead_letters WHERE status = 'open' GROUP BY queue") {
            depth[try row.requiredString("queue")] = try row.requiredInt("n")
        }
        return depth
    }

    /// Publishes the original bytes again through `republisher`, then marks the row replayed.
    /// Safe to repeat: the message id is the original's, and consumers are idempotent by it.
    /// The row is marked `replayed` only if it has not died again since it was read (`deaths`
    /// unchanged) and was not dropped meanwhile: a replay that fails again within milliseconds is
    /// reopened by the keeper, possibly before this update, and must stay open (the replay still
    /// counts in `replayed_count`).
    public func replay(_ id: Int64, via republisher: any DeadLetterRepublisher) async throws -> ReplayOutcome {
        guard let letter = try await get(id) else { return .notFound }
        if letter.status == .dropped { return .dropped(letter) }
        // A letter of a queue an upgrade retired goes to the queue that took its place: the
        // retired one may be deleted already, and the default exchange drops what no queue takes.
        let target = Topology.standard.current(QueueName(rawValue: letter.queue))
        guard await republisher.republish(letter.sent(to: target.rawValue)) else { return .unconfirmed }
        try await database.query("""
            UPDATE dead_letters SET replayed_count = replayed_count + 1, last_replayed_at = now(), updated_at = now(),
                status = CASE WHEN deaths = $2 AND status <> 'dropped' THEN 'replayed' ELSE status END
            WHERE id = $1
            """, [id, letter.deaths])
        return try await get(id).map { .replayed($0) } ?? .notFound
    }

    /// Marks it dropped: it stays readable, and no longer counts in the depth.
    public func drop(_ id: Int64) async throws -> DropOutcome {
        try await database.query("""
            UPDATE dead_letters SET status = 'dropped', dropped_at = now(), updated_at = now() WHERE id = $1 AND status <> 'dropped'
            """, [id])
        return try await get(id).map { .dropped($0) } ?? .notFound
    }

    static func letter(_ row: PostgresRow) throws(PostgresRowError) -> DeadLetter {
        func date(_ column: String) throws(PostgresRowError) -> Date? {
            try row.optionalInt(column).map { Date(timeIntervalSince1970: Double($0) / 1000) }
        }
        func required(_ column: String) throws(PostgresRowError) -> Date {
            guard let value = try date(column) else { throw PostgresRowError(column: column, problem: .null) }
            return value
        }
        let statusText = try row.requiredString("status")
        guard let status = DeadLetterStatus(rawValue: statusText) else {
            throw PostgresRowError(column: "status", problem: .malformed(statusText))
        }
        return DeadLetter(id: try row.requiredInt64("id"), queue: try row.requiredString("queue"), messageID: try row.requiredString("message_id"),
                          reason: try row.requiredString("reason"), attempts: try row.requiredInt("attempts"),
                          firstFailure: try required("first_ms"), lastFailure: try required("last_ms"),
                          routingKey: try row.optionalString("routing_key"), contentType: try row.optionalString("content_type"),
                          body: Self.bytea(try row.optionalString("body")), deaths: try row.requiredInt("deaths"), status: status,
                          replayedCount: try row.requiredInt("replayed_count"), lastReplayedAt: try date("replayed_ms"),
                          droppedAt: try date("dropped_ms"), createdAt: try required("created_ms"), updatedAt: try required("updated_ms"))
    }

    /// `bytea` in text format arrives as `\x` and hex digits.
    static func bytea(_ text: String?) -> [UInt8] {
        guard let text, text.hasPrefix("\\x") else { return [] }
        var bytes: [UInt8] = []
        bytes.reserveCapacity((text.utf8.count - 2) / 2)
        var high: UInt8?
        for c in text.utf8.dropFirst(2) {
            let value: UInt8
            switch c {
            case 48...57: value = c - 48
            case 97...102: value = c - 87
            case 65...70: value = c - 55
            default: return []
            }
            if let h = high { bytes.append(h << 4 | value); high = nil } else { high = value }
        }
        return bytes
    }
}
