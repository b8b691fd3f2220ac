import Contracts
import Pipeline

/// The pipeline pool (`fanflow worker --pool pipeline=N`) on `fanflow.pipeline`: each batch of
/// deliveries is one ``Pipeline`` run (history and every domain's writes in one transaction), acked
/// after its commit. Retries, splitting a bad batch and dead letters are ``EnvelopeBatchHandler``'s.
extension Pipeline: EnvelopeProcessor {
    public func process(_ events: [Envelope]) async throws {
        _ = try await run(events)
    }
}
