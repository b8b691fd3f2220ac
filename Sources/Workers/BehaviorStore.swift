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
        switch await store(events.map(\.1)) {
        case .stored:
            try? await last.ack(multiple: true)
            return
        case .interrupted:
            return // unsettled: the broker redelivers them to the next consumer
        case .refused:
            break
        }
        // The batch holds a row the database will not take: find it.
        for (delivery, envelope) in events {
            switch await store([envelope]) {
            case .stored:
                try? await delivery.ack()
            case .refused:
                logger.error("dead-lettering an event the database refused", metadata: ["eventID": "\(envelope.id)"])
                try? await delivery.nack(requeue: false)
            case .interrupted:
                return
            }
        }
    }

    enum StoreOutcome {
        /// Stored, or already there.
        case stored
        /// The database refuses the data itself (SQLSTATE class 22 or 23).
        case refused
        /// Cancelled while waiting for the database: nothing is known to be wrong with the events.
        case interrupted
    }

    /// Connection and server-availability errors are retried until they pass or the task is cancelled.
    private func store(_ envelopes: [Envelope]) async -> StoreOutcome {
        let backoff = Backoff(initialMilliseconds: 200, maximumMilliseconds: 5_000)
        var attempt = 0
        while true {
            do {
                try await insert(envelopes)
                return .stored
            } catch let error as PostgresError where error.code == .server && Self.isDataError(error.sqlState) {
                if envelopes.count == 1 { logger.warning("event refused", metadata: ["error": "\(error)"]) }
                return .refused
            } catch {
                if Task.isCancelled { return .interrupted }
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
