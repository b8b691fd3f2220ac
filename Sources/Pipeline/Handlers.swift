import Loyalty
import PostgresClient

// The domains in the pipeline. A domain joins with its service's conformance here and one line in
// `Pipeline.standard`: no queue, binding or second broker delivery of its own.

extension LoyaltyService: PipelineHandler {}

extension Pipeline {
    /// The domains every worker runs, in the order they write.
    public static func standard(database: PostgresPool, loyalty: LoyaltyService) -> Pipeline {
        Pipeline(database: database, handlers: [
            loyalty,
        ])
    }
}
