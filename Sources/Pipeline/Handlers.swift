import Audiences
import Loyalty
import PostgresClient

// The domains in the pipeline. A domain joins with its service's conformance here and one line in
// `Pipeline.standard`: no queue, binding or second broker delivery of its own.

extension LoyaltyService: PipelineHandler {
    // Loyalty writes through unique keys (the ledger's), so a redelivered event is refused there.
    public func handle(_ plan: Plan, firstStored: Set<String>, in transaction: isolated PostgresConnection) throws -> [LoyaltyOutcome] {
        try handle(plan, in: transaction)
    }
}

extension AudienceService: PipelineHandler {}

// Profile attributes write through their primary key, the newest event winning: a redelivery changes nothing.
extension ProfileAttributeService: PipelineHandler {}

extension Pipeline {
    /// The domains every worker runs, in the order they write. Audiences comes after Loyalty: the
    /// members Loyalty's step created for a batch's first sightings are there to be counted.
    /// Profile attributes need nothing from the others; they come last.
    public static func standard(database: PostgresPool, loyalty: LoyaltyService, audiences: AudienceService) -> Pipeline {
        Pipeline(database: database, handlers: [
            loyalty,
            audiences,
            ProfileAttributeService(database: database),
        ])
    }
}
