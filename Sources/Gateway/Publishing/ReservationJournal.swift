import AMQPClient
import Contracts
import FlashSales
import Runtime

/// The gateway's ``ReservationJournal``: a reservation's envelope, persistent, published to
/// `fanflow.events` and confirmed by the broker (its quorum queues hold it) before the member
/// hears 201.
struct ConfirmedReservationJournal: ReservationJournal {
    let broker: ManagedAMQPConnection

    func record(_ envelope: Envelope) async -> Bool {
        guard let connection = try? await broker.current(), let body = try? envelope.encoded() else { return false }
        let outcome = await connection.publish(
            exchange: ExchangeName.events.rawValue, routingKey: envelope.routingKey, body: body,
            properties: AMQPProperties(messageID: envelope.id, contentType: "application/json", type: envelope.kind.rawValue,
                                       appID: "fanflow-gateway", persistent: true))
        return outcome == .acked
    }
}
