import AMQPClient
import Contracts
import FlashSales
import Runtime
import Synchronization

/// The gateway's ``ReservationJournal``: a reservation's envelope, persistent, published to
/// `fanflow.events` and confirmed by the broker (its quorum queues hold it) before the member
/// hears 201.
///
/// Concurrent reservations share a confirm window: while one batch is on its way to the broker
/// and waiting for its confirms, the envelopes of the requests that arrive meanwhile queue up and
/// go together as the next batch, one hop to the connection's thread, one write and one wait for
/// all their confirms (the broker answers them with `multiple` acks). Each envelope still learns
/// its own outcome: one nacked or lost does not fail the others. With no concurrency it is one
/// publish, as before.
final class ConfirmedReservationJournal: ReservationJournal {
    private struct Waiting: Sendable {
        let message: OutgoingMessage
        let continuation: CheckedContinuation<Bool, Never>
    }

    private let broker: ManagedAMQPConnection
    private let state = Mutex<(waiting: [Waiting], flushing: Bool)>(([], false))

    init(broker: ManagedAMQPConnection) {
        self.broker = broker
    }

    func record(_ envelope: Envelope) async -> Bool {
        guard let body = try? envelope.encoded() else { return false }
        let message = OutgoingMessage(exchange: ExchangeName.events.rawValue, routingKey: envelope.routingKey, body: body,
                                      properties: AMQPProperties(messageID: envelope.id, contentType: "application/json",
                                                                 type: envelope.kind.rawValue, appID: "fanflow-gateway", persistent: true))
        return await withCheckedContinuation { continuation in
            let startFlushing = state.withLock { state -> Bool in
                state.waiting.append(Waiting(message: message, continuation: continuation))
                if state.flushing { return false }
                state.flushing = true
                return true
            }
            if startFlushing { Task { await self.flush() } }
        }
    }

    private func flush() async {
        while true {
            let batch = state.withLock { state -> [Waiting] in
                let batch = state.waiting
                state.waiting = []
                if batch.isEmpty { state.flushing = false }
                return batch
            }
            if batch.isEmpty { return }
            let outcomes: [PublishOutcome]
            if let connection = try? await broker.current() {
                outcomes = await connection.publish(batch.map(\.message))
            } else {
                outcomes = []
            }
            for (index, waiting) in batch.enumerated() {
                waiting.continuation.resume(returning: index < outcomes.count && outcomes[index] == .acked)
            }
        }
    }
}
