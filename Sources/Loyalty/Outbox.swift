import Contracts
import Foundation
import PostgresClient

/// Events FanFlow emits, stored in the transaction that caused them and published afterwards by
/// a relay: a crash between commit and publish delays an event, never loses it. A message is
/// claimed for a lease before it is published and deleted once confirmed; a relay that died
/// mid-publish leaves it to be claimed again when the lease ends (a duplicate at worst, which
/// consumers drop by its deterministic id).
public struct Outbox: Sendable {
    public struct Message: Sendable {
        public let id: Int64
        public let messageID: String
        public let routingKey: String
        public let body: [UInt8]
    }

    let database: PostgresPool

    public init(database: PostgresPool) { self.database = database }

    static func insert(_ envelope: Envelope, on connection: isolated PostgresConnection) throws {
        try connection.query("""
            INSERT INTO outbox (message_id, routing_key, body) VALUES ($1, $2, $3) ON CONFLICT (message_id) DO NOTHING
            """, [envelope.id, envelope.routingKey, try envelope.encoded()])
    }

    /// Claims up to `limit` messages for `lease`.
    public func claim(limit: Int = 200, lease: Duration = .seconds(30)) async throws -> [Message] {
        let rows = try await database.query("""
            UPDATE outbox SET claimed_until = now() + make_interval(secs => $2)
            WHERE id IN (SELECT id FROM outbox WHERE claimed_until < now() ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
            RETURNING id, message_id, routing_key, encode(body, 'hex') AS body
            """, [limit, Double(lease.components.seconds)])
        return rows.compactMap { row in
            guard let id = row.int("id"), let messageID = row.string("message_id"), let key = row.string("routing_key"),
                  let hex = row.string("body"), let body = Self.bytes(hex: hex) else { return nil }
            return Message(id: Int64(id), messageID: messageID, routingKey: key, body: body)
        }.sorted { $0.id < $1.id }
    }

    public func delete(_ ids: [Int64]) async throws {
        guard !ids.isEmpty else { return }
        try await database.query("DELETE FROM outbox WHERE id = ANY($1::bigint[])", [PostgresArray(ids)])
    }

    static func bytes(hex: String) -> [UInt8]? {
        let digits = Array(hex.utf8)
        guard digits.count % 2 == 0 else { return nil }
        func value(_ c: UInt8) -> UInt8? {
            switch c {
            case 48...57: return c - 48
            case 97...102: return c - 87
            default: return nil
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(digits.count / 2)
        var index = 0
        while index < digits.count {
            guard let high = value(digits[index]), let low = value(digits[index + 1]) else { return nil }
            out.append(high << 4 | low)
            index += 2
        }
        return out
    }
}
