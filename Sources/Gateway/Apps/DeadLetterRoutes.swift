import AMQPClient
import Contracts
import DeadLetters
import Foundation
import Hummingbird
import Runtime

/// `/admin/v1/dead-letters`: what the work queues gave up on, per queue, with the reason; replay
/// (the original bytes back to their queue, safe to repeat) and drop.
extension Gateway {
    func addDeadLetterRoutes(_ admin: RouterGroup<GatewayRequestContext>) {
        let letters = DeadLetterStore(database: database)
        let republisher = BrokerRepublisher(broker: broker)

        admin.get("/dead-letters") { request, _ in
            let query = request.uri.queryParameters
            let queue = try Self.deadLetterQueue(query["queue"].map(String.init))
            var status: DeadLetterStatus? = .open
            if let text = query["status"].map(String.init) {
                if text == "all" {
                    status = nil
                } else {
                    guard let parsed = DeadLetterStatus(rawValue: text) else {
                        throw GatewayError.badRequest(.invalidStatus, "status must be one of open, replayed, dropped, all")
                    }
                    status = parsed
                }
            }
            let limit = try Self.integerParameter(query["limit"].map(String.init), name: "limit", code: .invalidLimit, range: 1...500) ?? 50
            let before = try Self.integerParameter(query["before"].map(String.init), name: "before", code: .invalidBefore, range: 1...Int.max)
            let page = try await stored { try await letters.list(queue: queue, status: status, limit: limit, before: before.map(Int64.init)) }
            let depth = try await stored { try await letters.depth() }
            var body: [String: JSONValue] = ["deadLetters": .array(page.map { .object($0.json(withEnvelope: false)) })]
            body["nextBefore"] = page.count == limit ? page.last.map { .integer($0.id) } ?? .null : .null
            body["open"] = .object(depth.filter { queue == nil || $0.key == queue }.mapValues { .integer(Int64($0)) })
            return Response.json(body)
        }
        admin.get("/dead-letters/:id") { _, context in
            let id = try Self.deadLetterID(context)
            guard let letter = try await stored({ try await letters.get(id) }) else { throw Self.unknownDeadLetter(id) }
            return Response.json(letter.json(withEnvelope: true))
        }
        admin.post("/dead-letters/:id/replay") { _, context in
            let id = try Self.deadLetterID(context)
            switch try await stored({ try await letters.replay(id, via: republisher) }) {
            case .replayed(let letter):
                return Response.json(letter.json(withEnvelope: false))
            case .notFound:
                throw Self.unknownDeadLetter(id)
            case .dropped:
                throw GatewayError(.conflict, .deadLetterDropped, "dead letter \(id) was dropped; it is not replayed")
            case .unconfirmed:
                throw GatewayError.unavailable(.publishUnconfirmed, "the broker did not confirm the replay; nothing was marked, try again")
            }
        }
        admin.post("/dead-letters/:id/drop") { _, context in
            let id = try Self.deadLetterID(context)
            switch try await stored({ try await letters.drop(id) }) {
            case .dropped(let letter):
                return Response.json(letter.json(withEnvelope: false))
            case .notFound:
                throw Self.unknownDeadLetter(id)
            }
        }
    }

    static func deadLetterID(_ context: GatewayRequestContext) throws(GatewayError) -> Int64 {
        guard let text = context.parameters.get("id"), let id = Int64(text), id > 0 else {
            throw GatewayError.badRequest(.invalidDeadLetterId, "a dead letter id is a positive integer")
        }
        return id
    }

    /// A queue name as RabbitMQ allows it (at most 255 bytes), of the characters FanFlow's use.
    static func deadLetterQueue(_ text: String?) throws(GatewayError) -> String? {
        guard let text, !text.isEmpty else { return nil }
        guard text.utf8.count <= 255,
              text.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) || $0 == 95 || $0 == 45 || $0 == 46 }) else {
            throw GatewayError.badRequest(.invalidQueue, "queue must be 1-255 characters of [A-Za-z0-9_.-], e.g. fanflow.points")
        }
        return text
    }

    static func unknownDeadLetter(_ id: Int64) -> GatewayError {
        GatewayError(.notFound, .unknownDeadLetter, "no dead letter \(id)")
    }
}

/// Replays through the gateway's publishing connection (confirms on): the original bytes, to the
/// default exchange with the queue's name as routing key, under the original message id.
struct BrokerRepublisher: DeadLetterRepublisher {
    let broker: ManagedAMQPConnection

    func republish(_ letter: DeadLetter) async -> Bool {
        guard let connection = try? await broker.current() else { return false }
        let properties = AMQPProperties(messageID: letter.messageID, contentType: letter.contentType, persistent: true)
        return await connection.publish(exchange: "", routingKey: letter.queue, body: letter.body, properties: properties) == .acked
    }
}
