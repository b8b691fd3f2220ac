import AMQPClient
import Contracts
import DeadLetters
import Foundation
@testable import Gateway
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import Pipeline
import PostgresClient
import Synchronization
import Testing
import Workers

/// The pipeline (history only) behind a switch: while `broken`, events marked `"n": "bad…"` are refused, as
/// a pool with a bug (or a missing rule) would refuse them; after the fix they are stored.
final class FixableStore: EnvelopeProcessor {
    let store: Pipeline
    let broken = Mutex(true)

    init(database: PostgresPool) { store = Pipeline(database: database, handlers: []) }

    func process(_ events: [Envelope]) async throws {
        if broken.withLock({ $0 }), let bad = events.first(where: { $0.attributes["n"]?.string?.hasPrefix("bad") == true }) {
            throw EventRefused("no rule for \(bad.id) yet")
        }
        try await store.process(events)
    }
}

@Suite("Dead letters: kept with their reason, listed, replayed once, dropped (real HTTP, real AMQP)")
struct DeadLetterAdminTests {
    @Test("a poisoned message appears with its reason; replay after the fix stores it once (replayed twice); drop leaves the depth")
    func listReplayDrop() async throws {
        try await GatewayHarness.migrate()
        let database = PostgresPool(url: TestEnvironment.databaseURL, maximumConnections: 3)
        let q = try await PoisonQueue.make("test.dlq")
        let processor = FixableStore(database: database)
        var amqp = try AMQPConfiguration(url: TestEnvironment.amqpURL)
        amqp.connectionName = "test-dlq"
        let pool = ConsumerService(amqp: amqp, queue: q.queue, prefetch: 50,
                                   handler: EnvelopeBatchHandler(processor, logger: Logger(label: "test")), logger: Logger(label: "test"))
        let keeper = ConsumerService(amqp: amqp, queue: q.queue.deadLetter, prefetch: 10,
                                     handler: DeadLetterKeeper(store: DeadLetterStore(database: database), workQueue: q.queue,
                                                               logger: Logger(label: "test")),
                                     logger: Logger(label: "test"))
        let running = [Task { try await pool.run() }, Task { try await keeper.run() }]

        let good = (0..<10).map { q.envelope("good\($0)", openid: "o\($0)") }
        let bad = q.envelope("bad1", openid: "ob1")
        let worse = q.envelope("bad2", openid: "ob2")
        for event in good.prefix(5) + [bad] + good.suffix(5) + [worse] { #expect(try await q.publish(event) == .acked) }

        @Sendable func kept() async throws -> Int {
            try await database.query("SELECT count(*) AS c FROM dead_letters WHERE queue = $1", [q.queue.rawValue])[0].int("c") ?? 0
        }
        for _ in 0..<200 {
            if try await kept() == 2, try await q.count(database, good.map(\.id)) == good.count { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(try await q.count(database, good.map(\.id)) == good.count)
        #expect(try await kept() == 2)

        try await GatewayHarness.run { client, _, gateway in
            let admin = GatewayHarness.adminHeaders
            let listURI = "/admin/v1/dead-letters?queue=\(q.queue.rawValue)"
            var ids: [String: Int] = [:]
            try await client.execute(uri: listURI, method: .get, headers: admin) { response in
                #expect(response.status == .ok)
                let json = GatewayHarness.json(response)
                let letters = json["deadLetters"] as? [[String: Any]] ?? []
                #expect(letters.count == 2)
                for letter in letters {
                    let messageID = letter["messageId"] as? String ?? ""
                    ids[messageID] = letter["id"] as? Int
                    #expect(letter["queue"] as? String == q.queue.rawValue)
                    #expect((letter["reason"] as? String)?.contains("no rule for \(messageID) yet") == true)
                    #expect(letter["attempts"] as? Int == 1)
                    #expect(letter["status"] as? String == "open")
                    #expect(letter["firstFailure"] is String && letter["lastFailure"] is String)
                }
                #expect((json["open"] as? [String: Any])?[q.queue.rawValue] as? Int == 2)
            }
            guard let badID = ids[bad.id], let worseID = ids[worse.id] else {
                Issue.record("both dead letters listed: \(ids)")
                return
            }
            try await client.execute(uri: "/admin/v1/dead-letters/\(badID)", method: .get, headers: admin) { response in
                #expect(response.status == .ok)
                let envelope = GatewayHarness.json(response)["envelope"] as? [String: Any]
                #expect(envelope?["id"] as? String == bad.id)
                #expect(envelope?["app"] as? String == q.app)
            }
            #expect(try await Self.depth(client, q.queue.rawValue, expiring: gateway) == 2)

            // The fix, then two replays: stored once, and no new dead letter.
            processor.broken.withLock { $0 = false }
            for expected in 1...2 {
                try await client.execute(uri: "/admin/v1/dead-letters/\(badID)/replay", method: .post, headers: admin) { response in
                    #expect(response.status == .ok)
                    let json = GatewayHarness.json(response)
                    #expect(json["status"] as? String == "replayed")
                    #expect(json["replayedCount"] as? Int == expected)
                }
            }
            for _ in 0..<200 {
                if try await q.count(database, [bad.id]) == 1 { break }
                try await Task.sleep(for: .milliseconds(50))
            }
            try await Task.sleep(for: .milliseconds(500)) // the second copy, processed too
            #expect(try await q.count(database, [bad.id]) == 1)
            #expect(try await q.publisher.messageCount(queue: q.queue.rawValue) == 0)
            #expect(try await kept() == 2, "a replay that passed makes no new dead letter")
            // The gateway reads the depth at most every 15 s: the replay shows only once that has passed.
            #expect(try await Self.depth(client, q.queue.rawValue) == 2)
            #expect(try await Self.depth(client, q.queue.rawValue, expiring: gateway) == 1)

            try await client.execute(uri: "/admin/v1/dead-letters/\(worseID)/drop", method: .post, headers: admin) { response in
                #expect(response.status == .ok)
                #expect(GatewayHarness.json(response)["status"] as? String == "dropped")
            }
            #expect(try await Self.depth(client, q.queue.rawValue, expiring: gateway) == 0)
            try await client.execute(uri: "/admin/v1/dead-letters/\(worseID)/replay", method: .post, headers: admin) { response in
                #expect(response.status == .conflict)
                #expect(GatewayHarness.errorCode(response) == "dead_letter_dropped")
            }
            try await client.execute(uri: listURI + "&status=all", method: .get, headers: admin) { response in
                let letters = GatewayHarness.json(response)["deadLetters"] as? [[String: Any]] ?? []
                #expect(Set(letters.compactMap { $0["status"] as? String }) == ["replayed", "dropped"])
            }
            try await client.execute(uri: listURI, method: .get, headers: admin) { response in
                #expect((GatewayHarness.json(response)["deadLetters"] as? [Any])?.isEmpty == true)
            }
            // Refusals: unknown, malformed, unauthenticated.
            try await client.execute(uri: "/admin/v1/dead-letters/999999999999", method: .get, headers: admin) { response in
                #expect(response.status == .notFound)
                #expect(GatewayHarness.errorCode(response) == "unknown_dead_letter")
            }
            try await client.execute(uri: "/admin/v1/dead-letters/abc/drop", method: .post, headers: admin) { response in
                #expect(response.status == .badRequest)
            }
            try await client.execute(uri: "/admin/v1/dead-letters?queue=a%20b", method: .get, headers: admin) { response in
                #expect(response.status == .badRequest)
                #expect(GatewayHarness.errorCode(response) == "invalid_queue")
            }
            try await client.execute(uri: listURI, method: .get) { response in
                #expect(response.status == .unauthorized)
            }
        }
        for task in running { task.cancel(); _ = await task.result }
        try await database.query("DELETE FROM dead_letters WHERE queue = $1", [q.queue.rawValue])
        try await q.remove(database)
        await database.close()
    }

    /// `fanflow_dead_letters{queue="…"}` as the gateway's `/metrics` shows it.
    /// `expiring`: the gateway whose cached depth is forgotten first, so this request reads it again.
    static func depth(_ client: any TestClientProtocol, _ queue: String, expiring gateway: Gateway? = nil) async throws -> Int? {
        gateway?.deadLetterDepth.expire()
        return try await client.execute(uri: "/metrics", method: .get) { response in
            let line = String(buffer: response.body).split(separator: "\n")
                .first { $0.hasPrefix("fanflow_dead_letters{queue=\"\(queue)\"}") }
            return line.flatMap { $0.split(separator: " ").last.flatMap { Int($0) } } ?? 0
        }
    }

    @Test("a message RabbitMQ dead-lettered itself (a reject, the delivery limit) is kept with the broker's reason and queue")
    func brokerDeadLettered() async throws {
        try await GatewayHarness.migrate()
        let database = PostgresPool(url: TestEnvironment.databaseURL, maximumConnections: 2)
        let q = try await PoisonQueue.make("test.dlq-broker")
        let event = q.envelope("rejected", openid: "o1")
        #expect(try await q.publish(event) == .acked)
        let reader = try await AMQPConnection(url: TestEnvironment.amqpURL)
        let (tag, stream) = try await reader.consume(queue: q.queue.rawValue, prefetch: 1)
        for try await batch in stream {
            guard let delivery = batch.first else { continue }
            try await reader.cancel(consumerTag: tag)
            try await delivery.nack(requeue: false) // the queue's own dead-lettering: x-death, no FanFlow headers
            break
        }
        await reader.close()
        var amqp = try AMQPConfiguration(url: TestEnvironment.amqpURL)
        amqp.connectionName = "test-dlq-keeper"
        let keeper = ConsumerService(amqp: amqp, queue: q.queue.deadLetter, prefetch: 10,
                                     handler: DeadLetterKeeper(store: DeadLetterStore(database: database), workQueue: .behavior,
                                                               logger: Logger(label: "test")),
                                     logger: Logger(label: "test"))
        let running = Task { try await keeper.run() }
        var letters: [DeadLetter] = []
        for _ in 0..<200 {
            letters = try await DeadLetterStore(database: database).list(queue: q.queue.rawValue, status: .open, limit: 10, before: nil)
            if !letters.isEmpty { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        running.cancel()
        _ = await running.result
        #expect(letters.count == 1)
        // The queue comes from x-death, not from the keeper's own work queue (behavior here).
        #expect(letters.first?.queue == q.queue.rawValue)
        #expect(letters.first?.reason == "rabbitmq: rejected")
        #expect(letters.first?.messageID == event.id)
        #expect(letters.first?.body == (try event.encoded()))
        #expect(try await q.publisher.messageCount(queue: q.queue.deadLetter.rawValue) == 0)
        try await database.query("DELETE FROM dead_letters WHERE queue = $1", [q.queue.rawValue])
        try await q.remove(database)
        await database.close()
    }
}
