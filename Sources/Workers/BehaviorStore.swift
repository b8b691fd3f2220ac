import Contracts
import Foundation
import PostgresClient

/// The behavior pool: stores every event in `events`, once per event id.
///
/// A batch becomes one multi-row INSERT … ON CONFLICT DO NOTHING: a redelivered or retried event
/// hits the primary key and changes nothing. Settling, retries and dead-lettering are
/// ``EnvelopeBatchHandler``'s.
public struct BehaviorStore: EnvelopeProcessor {
    let database: PostgresPool

    public init(database: PostgresPool) {
        self.database = database
    }

    public func process(_ all: [Envelope]) async throws {
        // The orders pool's own jobs (`fanflow.orders.*`, a reconcile a minute) reach this queue
        // through its `#` binding (RabbitMQ binds no "all but"): they are no member's behaviour,
        // and were 1,440 rows a day.
        let envelopes = all.filter { !($0.platform == .fanflow && $0.kind.rawValue.hasPrefix("orders.")) }
        guard !envelopes.isEmpty else { return }
        var parameters: [any PostgresEncodable] = []
        parameters.reserveCapacity(envelopes.count * 9)
        var rows: [String] = []
        for (index, event) in envelopes.enumerated() {
            let base = index * 9
            rows.append("(" + (1...9).map { "$\(base + $0)" }.joined(separator: ",") + ")")
            let attributes = String(decoding: (try? JSONEncoder().encode(event.attributes)) ?? Data("{}".utf8), as: UTF8.self)
            parameters += [event.id, event.platform.rawValue, event.app, event.kind.rawValue, event.subject.openid,
                           event.subject.unionid, event.occurredAt, event.receivedAt, attributes] as [any PostgresEncodable]
        }
        let sql = """
            INSERT INTO events (id, platform, app, kind, openid, unionid, occurred_at, received_at, attributes)
            VALUES \(rows.joined(separator: ",")) ON CONFLICT (id) DO NOTHING
            """
        try await database.query(sql, parameters)
    }
}
