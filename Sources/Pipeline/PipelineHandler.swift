import Contracts
import PostgresClient

/// A domain's part in the pipeline: the events it takes, what it does before the batch's
/// transaction, and what it writes inside it.
///
/// Two steps, because the transaction is a synchronous body on one PostgreSQL connection: nothing
/// inside it awaits Redis or the network, so a batch holds its connection (and its row locks) only
/// as long as its statements take. ``prepare(_:)`` does the rest first (Redis decisions, member
/// resolution) and must be idempotent by key: a batch is retried whole, split in halves to find a
/// bad event, and redelivered after a crash, and each time runs ``prepare(_:)`` again.
/// ``handle(_:in:)`` must write through unique keys (ON CONFLICT), so the second run of an
/// already-committed batch changes nothing. A thrown error rolls back the whole batch, the events'
/// history with it; the batch handler then retries, splits or dead-letters it.
///
/// A domain conforms with its service's own methods (`extension LoyaltyService: PipelineHandler {}`)
/// and is registered with one line in ``Pipeline/standard(database:loyalty:)``'s caller.
public protocol PipelineHandler: Sendable {
    associatedtype Plan: Sendable
    associatedtype Outcome: Sendable

    /// The events this handler is shown; the others of a batch are not passed to it.
    var selector: EventSelector { get }

    /// Before the transaction, with the batch's matching events (never empty).
    func prepare(_ events: [Envelope]) async throws -> Plan

    /// Inside the batch's transaction: writes what ``prepare(_:)`` decided and says what became of it.
    /// `firstStored` names the batch's events whose history row this transaction inserted: the
    /// others were stored by an earlier delivery, so a handler that adds up events (rather than
    /// writing through unique keys) counts only these.
    func handle(_ plan: Plan, firstStored: Set<String>, in transaction: isolated PostgresConnection) throws -> [Outcome]
}
