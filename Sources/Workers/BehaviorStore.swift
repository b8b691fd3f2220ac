import Contracts
import Foundation
import PostgresClient

/// The behavior pool: stores every event in `events`, once per event id, with its subject as the
/// envelope carried it: openid, unionid, the member a token named and whether the subject was
/// verified (so a claimed beacon stays a claim in the table too).
///
/// A batch becomes one multi-row INSERT … ON CONFLICT DO NOTHING: a redelivered or retried event
/// hits the primary key and changes nothing. Settling, retries and dead-lettering are
/// ``EnvelopeBatchHandler``'s.
public struct BehaviorStore: EnvelopeProcessor {
    let database: PostgresPool

    public init(database: PostgresPool) {
        self.database = database
    }

    /// Parameters per row.
    static let columns = 11
    /// Rows per statement: PostgreSQL takes at most 65,535 parameters in one, 5,957 rows of 11. The
    /// default prefetch (500) is one statement; a larger `--prefetch` is split, and since every row
    /// is ON CONFLICT DO NOTHING a batch retried after a partial write stores each event once.
    static let rowsPerStatement = 4_096

    public func process(_ all: [Envelope]) async throws {
        // The orders pool's own jobs (`fanflow.orders.*`, a reconcile a minute) reach this queue
        // through its `#` binding (RabbitMQ binds no "all but"): they are no member's behaviour,
        // and were 1,440 rows a day.
        let envelopes = all.filter { !($0.platform == .fanflow && $0.kind.rawValue.hasPrefix("orders.")) }
        var start = envelopes.startIndex
        while start < envelopes.endIndex {
            let end = min(start + Self.rowsPerStatement, envelopes.endIndex)
            try await insert(envelopes[start..<end])
            start = end
        }
    }

    private func insert(_ envelopes: ArraySlice<Envelope>) async throws {
        var parameters: [any PostgresEncodable] = []
        parameters.reserveCapacity(envelopes.count * Self.columns)
        var rows: [String] = []
        rows.reserveCapacity(envelopes.count)
        for (index, event) in envelopes.enumerated() {
            let base = index * Self.columns
            rows.append("(" + (1...Self.columns).map { "$\(base + $0)" }.joined(separator: ",") + ")")
            let attributes = String(decoding: (try? JSONEncoder().encode(event.attributes)) ?? Data("{}".utf8), as: UTF8.self)
            parameters += [event.id, event.platform.rawValue, event.app, event.kind.rawValue, event.subject.openid,
                           event.subject.unionid, event.occurredAt, event.receivedAt, attributes,
                           event.subject.memberId, event.subject.verified] as [any PostgresEncodable]
        }
        let sql = """
            INSERT INTO events (id, platform, app, kind, openid, unionid, occurred_at, received_at, attributes, member_id, verified)
            VALUES \(rows.joined(separator: ",")) ON CONFLICT (id) DO NOTHING
            """
        try await database.query(sql, parameters)
    }
}
