import Contracts
import PostgresClient

/// Every external event in `events`, once per event id, with its subject as the envelope carried
/// it: openid, unionid, the member a token named and whether the subject was verified (so a claimed
/// beacon stays a claim in the table too). Written inside the pipeline's batch transaction, beside
/// what the domains write for the same events.
///
/// A batch becomes one multi-row INSERT … ON CONFLICT DO NOTHING: a redelivered or retried event
/// hits the primary key and changes nothing.
public enum EventHistory {
    /// Parameters per row.
    static let columns = 11
    /// Rows per statement: PostgreSQL takes at most 65,535 parameters in one, 5,957 rows of 11. The
    /// default prefetch (500) is one statement; a larger `--prefetch` is split, and since every row
    /// is ON CONFLICT DO NOTHING a batch retried after a partial write stores each event once.
    static let rowsPerStatement = 4_096

    /// Whether an event is kept as behaviour: every platform, server and beacon event. FanFlow's
    /// own follow-ups (`fanflow.*`: points news, level changes, flash-sale and push jobs) are not a
    /// member's behaviour; they reach the pipeline only from a queue retired by the upgrade
    /// (``Topology/retired``), which had bound everything.
    public static func keeps(_ event: Envelope) -> Bool { event.platform != .fanflow }

    /// Stores the events; answers the ids this call inserted (not stored by an earlier delivery).
    @discardableResult
    public static func store(_ events: [Envelope], on connection: isolated PostgresConnection) throws -> Set<String> {
        var inserted: Set<String> = []
        var start = events.startIndex
        while start < events.endIndex {
            let end = min(start + rowsPerStatement, events.endIndex)
            inserted.formUnion(try insert(events[start..<end], on: connection))
            start = end
        }
        return inserted
    }

    private static func insert(_ events: ArraySlice<Envelope>, on connection: isolated PostgresConnection) throws -> [String] {
        guard !events.isEmpty else { return [] }
        var parameters: [any PostgresEncodable] = []
        parameters.reserveCapacity(events.count * columns)
        var values = ""
        values.reserveCapacity(events.count * columns * 5)
        for (index, event) in events.enumerated() {
            let base = index * columns
            values += index == 0 ? "(" : ",("
            for column in 1...columns {
                if column > 1 { values += "," }
                values += "$\(base + column)"
            }
            values += ")"
            // The envelope writer's JSON (sorted keys; jsonb keeps its own order anyway): on the
            // publish path the generic JSONEncoder was a tenth of the gateway's CPU.
            let attributes = String(decoding: JSONValue.object(event.attributes).jsonBytes, as: UTF8.self)
            parameters += [event.id, event.platform.rawValue, event.app, event.kind.rawValue, event.subject.openid,
                           event.subject.unionid, event.occurredAt, event.receivedAt, attributes,
                           event.subject.memberId, event.subject.verified] as [any PostgresEncodable]
        }
        return try connection.query("""
            INSERT INTO events (id, platform, app, kind, openid, unionid, occurred_at, received_at, attributes, member_id, verified)
            VALUES \(values) ON CONFLICT (id) DO NOTHING RETURNING id
            """, parameters).map { row throws(PostgresRowError) in try row.requiredString("id") }
    }
}
