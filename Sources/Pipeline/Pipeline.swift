import Contracts
import PostgresClient

/// One delivery per event, many handlers: a batch of envelopes is stored for history and handed to
/// every registered domain in one PostgreSQL transaction.
///
/// ```
/// batch ─▶ each handler's prepare (Redis decisions, members), outside any transaction
///          BEGIN
///            events (history)            ← the pipeline itself
///            Loyalty: ledger, balances   ← each handler, for the kinds it selects
///          COMMIT                        → the caller acks the batch
/// ```
/// A handler that throws rolls the batch back, history included: an event is never half handled.
/// The pipeline knows no broker: the worker's consumer feeds it batches and settles the deliveries
/// (retries, splitting a bad batch, dead letters).
public struct Pipeline: Sendable {
    let database: PostgresPool
    let handlers: [any PipelineHandler]

    /// `handlers` in the order they write; each sees only the events its selector takes.
    public init(database: PostgresPool, handlers: [any PipelineHandler]) {
        self.database = database
        self.handlers = handlers
    }

    /// What one batch did.
    public struct Report: Sendable {
        /// Events kept for history (external ones; a redelivered one is counted though the
        /// INSERT skipped it).
        public let stored: Int
        /// Every handler's outcomes, in handler order.
        public let outcomes: [any Sendable]

        /// The outcomes of one handler's type.
        public func outcomes<T>(_ type: T.Type) -> [T] { outcomes.compactMap { $0 as? T } }
    }

    /// Processes a batch: prepares every handler, then one transaction for history and writes.
    public func run(_ batch: [Envelope]) async throws -> Report {
        let events = batch.filter(EventHistory.keeps)
        guard !events.isEmpty else { return Report(stored: 0, outcomes: []) }
        var prepared: [Stage] = []
        for handler in handlers {
            if let stage = try await Self.prepare(handler, events) { prepared.append(stage) }
        }
        let stages = prepared
        let outcomes = try await database.transaction { connection -> [any Sendable] in
            let firstStored = try EventHistory.store(events, on: connection)
            var outcomes: [any Sendable] = []
            for stage in stages { outcomes += try stage.write(connection, firstStored) }
            return outcomes
        }
        return Report(stored: events.count, outcomes: outcomes)
    }

    /// One handler's prepared work, its types erased.
    struct Stage: Sendable {
        let write: @Sendable (isolated PostgresConnection, Set<String>) throws -> [any Sendable]
    }

    private static func prepare<Handler: PipelineHandler>(_ handler: Handler, _ events: [Envelope]) async throws -> Stage? {
        let selected = events.filter(handler.selector.matches)
        guard !selected.isEmpty else { return nil }
        let plan = try await handler.prepare(selected)
        return Stage { connection, firstStored in
            try handler.handle(plan, firstStored: firstStored, in: connection).map { $0 as any Sendable }
        }
    }
}
