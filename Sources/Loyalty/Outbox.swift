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
        try insert([envelope], on: connection)
    }

    /// One statement for all of them.
    static func insert(_ envelopes: [Envelope], on connection: isolated PostgresConnection) throws {
        guard !envelopes.isEmpty else { return }
        var rows: [String] = []
        var parameters: [any PostgresEncodable] = []
        for (index, envelope) in envelopes.enumerated() {
            rows.append("($\(index * 3 + 1),$\(index * 3 + 2),$\(index * 3 + 3))")
            parameters += [envelope.id, envelope.routingKey, String(decoding: try envelope.encoded(), as: UTF8.self)] as [any PostgresEncodable]
        }
        try connection.query("""
            INSERT INTO outbox (message_id, routing_key, body) VALUES \(rows.joined(separator: ",")) ON CONFLICT (message_id) DO NOTHING
            """, parameters)
    }

    /// Claims up to `limit` messages for `lease`.
    ///
    /// The rows are picked once, in a materialized CTE, and joined: with `id IN (subquery)` the
    /// planner may run the locking subquery again for every outer row, and under a steady stream of
    /// points news (thousands of rows a second) four relays were seen spending minutes of CPU each
    /// on one claim.
    public func claim(limit: Int = 200, lease: Duration = .seconds(30)) async throws -> [Message] {
        let rows = try await database.query("""
            WITH picked AS MATERIALIZED (
                SELECT id AS picked_id FROM outbox WHERE claimed_until < now() ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
            UPDATE outbox SET claimed_until = now() + make_interval(secs => $2)
            FROM picked WHERE outbox.id = picked.picked_id
            RETURNING id, message_id, routing_key, body
            """, [limit, Double(lease.components.seconds)])
        return rows.compactMap { row in
            guard let id = row.int("id"), let messageID = row.string("message_id"), let key = row.string("routing_key"),
                  let body = row.bytes("body") else { return nil }
            return Message(id: Int64(id), messageID: messageID, routingKey: key, body: body)
        }.sorted { $0.id < $1.id }
    }

    public func delete(_ ids: [Int64]) async throws {
        guard !ids.isEmpty else { return }
        try await database.query("DELETE FROM outbox WHERE id = ANY($1::bigint[])", [PostgresArray(ids)])
    }
}
