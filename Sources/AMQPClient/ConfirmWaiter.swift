import Synchronization

/// One outgoing message of a ``AMQPConnection/publish(_:)`` batch.
public struct OutgoingMessage: Sendable {
    public var exchange: String
    public var routingKey: String
    public var body: [UInt8]
    public var properties: AMQPProperties

    public init(exchange: String, routingKey: String, body: [UInt8], properties: AMQPProperties = AMQPProperties()) {
        self.exchange = exchange
        self.routingKey = routingKey
        self.body = body
        self.properties = properties
    }
}

/// Who waits for one publish's confirm: a single caller, or one slot of a batch whose caller is
/// resumed once every slot has its answer (one suspension for the batch instead of one per message).
enum ConfirmWaiter: Sendable {
    case single(CheckedContinuation<PublishOutcome, Never>)
    case batch(BatchConfirms, Int)

    func resume(returning outcome: PublishOutcome) {
        switch self {
        case .single(let continuation): continuation.resume(returning: outcome)
        case .batch(let batch, let slot): batch.answer(slot, outcome)
        }
    }
}

/// The answers of one batch, collected until the last arrives.
final class BatchConfirms: Sendable {
    private let state: Mutex<(outcomes: [PublishOutcome?], left: Int, continuation: CheckedContinuation<[PublishOutcome], Never>?)>

    init(count: Int, continuation: CheckedContinuation<[PublishOutcome], Never>) {
        state = Mutex((Array(repeating: nil, count: count), count, continuation))
    }

    func answer(_ slot: Int, _ outcome: PublishOutcome) {
        let finished = state.withLock { state -> (CheckedContinuation<[PublishOutcome], Never>, [PublishOutcome])? in
            guard state.outcomes[slot] == nil else { return nil }
            state.outcomes[slot] = outcome
            state.left -= 1
            guard state.left == 0, let continuation = state.continuation else { return nil }
            state.continuation = nil
            return (continuation, state.outcomes.map { $0 ?? .timedOut })
        }
        if let (continuation, outcomes) = finished { continuation.resume(returning: outcomes) }
    }
}
