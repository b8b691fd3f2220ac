import AMQPClient
import ClientSupport
import Contracts
import Foundation
import Logging
import PostgresClient

/// The behavior pool: stores every event in `events`, once per event id.
///
/// A batch becomes one multi-row INSERT … ON CONFLICT DO NOTHING and one `ack(multiple:)`: a
/// redelivered or retried event hits the primary key and changes nothing. Undecodable messages
/// are dead-lettered at once. If the database is down, the batch is held and retried with backoff
/// (burning the queue's delivery limit on an outage would dead-letter good events); a row the
/// database refuses on its own (bad data) is found by inserting one by one and dead-lettered alone.
public struct BehaviorStore: BatchHandler {
    let database: PostgresPool
    let logger: Logger

    public init(database: PostgresPool, logger: Logger) {
        self.database = database
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
        if await store(events.map(\.1)) {
            try? await last.ack(multiple: true)
            return
        }
        // The batch holds a row the database will not take: find it.
        for (delivery, envelope) in events {
            if await store([envelope]) {
                try? await delivery.ack()
            } else {
                logger.error("dead-lettering an event the database refused", metadata: ["eventID": "\(envelope.id)"])
                try? await delivery.nack(requeue: false)
            }
        }
    }

    /// True when stored (or already there); false when the database refuses the data itself.
    /// Connection and server-availability errors are retried until they pass or shutdown.
    private func store(_ envelopes: [Envelope]) async -> Bool {
        let backoff = Backoff(initialMilliseconds: 200, maximumMilliseconds: 5_000)
        var attempt = 0
        while true {
            do {
                try await insert(envelopes)
                return true
            } catch let error as PostgresError where error.code == .server && Self.isDataError(error.sqlState) {
                if envelopes.count == 1 { logger.warning("event refused", metadata: ["error": "\(error)"]) }
                return false
            } catch {
                if Task.isCancelled { return false }
                logger.error("database unavailable, holding the batch", metadata: ["error": "\(error)", "attempt": "\(attempt)"])
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

    private func insert(_ envelopes: [Envelope]) async throws {
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
