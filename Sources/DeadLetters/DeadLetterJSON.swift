import Contracts
import Foundation

extension DeadLetter {
    /// The shape the admin API and `fanflow dlq show` print. `withEnvelope`: the original message
    /// too, as JSON when it is JSON (`envelope`), else base64 (`bodyBase64`).
    public func json(withEnvelope: Bool) -> [String: JSONValue] {
        func time(_ date: Date?) -> JSONValue { date.map { .string(RFC3339.format($0)) } ?? .null }
        func text(_ value: String?) -> JSONValue { value.map { .string($0) } ?? .null }
        var json: [String: JSONValue] = [
            "id": .integer(id), "queue": .string(queue), "messageId": .string(messageID), "status": .string(status.rawValue),
            "reason": .string(reason), "attempts": .integer(Int64(attempts)), "firstFailure": time(firstFailure),
            "lastFailure": time(lastFailure), "deaths": .integer(Int64(deaths)), "replayedCount": .integer(Int64(replayedCount)),
            "lastReplayedAt": time(lastReplayedAt), "droppedAt": time(droppedAt), "deadAt": time(createdAt),
            "updatedAt": time(updatedAt), "routingKey": text(routingKey), "contentType": text(contentType),
            "size": .integer(Int64(body.count)),
        ]
        if withEnvelope {
            if let parsed = try? JSONValue.parse(body) {
                json["envelope"] = parsed
            } else {
                json["envelope"] = .null
                json["bodyBase64"] = .string(Data(body).base64EncodedString())
            }
        }
        return json
    }
}
