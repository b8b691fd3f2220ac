import AMQPClient
import Contracts
import Foundation
import Logging
import Pipeline
import PostgresClient
import Runtime
import Storage
import Testing
import Workers

@Suite("Pipeline history: events into PostgreSQL, once each")
struct BehaviorPoolTests {
    @Test("duplicates are stored once; poison and refused messages are dead-lettered; the rest are acked")
    func storesOnce() async throws {
        let database = PostgresPool(url: TestEnvironment.databaseURL, maximumConnections: 2)
        try await database.withConnection { try await Migrator(migrations: try Migration.bundled()).run(on: $0) }
        let queue = QueueName(rawValue: TestEnvironment.unique("test.behavior"))
        let app = TestEnvironment.unique("app")
        let publisher = try await AMQPConnection(url: TestEnvironment.amqpURL)
        try await publisher.enableConfirms()
        try await publisher.declare(Topology(queues: [.init(name: queue, bindings: [], deliveryLimit: 3)]))

        func publish(_ body: [UInt8], id: String) async -> PublishOutcome {
            // Straight to the test's queue through the default exchange: no other queue sees it.
            await publisher.publish(exchange: "", routingKey: queue.rawValue, body: body,
                                    properties: AMQPProperties(messageID: id, contentType: "application/json"))
        }
        let start = Date(timeIntervalSince1970: 1_763_800_000)
        for round in 0..<2 { // every event twice, as a retried webhook would
            for n in 0..<50 {
                let envelope = Envelope(id: "\(app):\(n)", platform: .server, app: app, kind: .communityPost,
                                        subject: .init(openid: "o\(n % 5)"), occurredAt: start.addingTimeInterval(Double(n)),
                                        receivedAt: start, attributes: ["round": .integer(Int64(round)), "n": .integer(Int64(n))])
                #expect(await publish(try envelope.encoded(), id: envelope.id) == .acked)
            }
        }
        #expect(await publish(Array("not json".utf8), id: "garbage") == .acked)
        let refused = Envelope(id: "\(app):nul", platform: .server, app: app, kind: .communityPost, subject: .init(),
                               occurredAt: start, receivedAt: start, attributes: ["text": .string("a\u{0}b")])
        #expect(await publish(try refused.encoded(), id: refused.id) == .acked)

        var amqp = try AMQPConfiguration(url: TestEnvironment.amqpURL)
        amqp.connectionName = "test-behavior"
        let consumer = ConsumerService(amqp: amqp, queue: queue, prefetch: 64,
                                       handler: EnvelopeBatchHandler(Pipeline(database: database, handlers: []), logger: Logger(label: "test")),
                                       logger: Logger(label: "test"))
        let running = Task { try await consumer.run() }

        var stored = 0
        var dead = 0
        for _ in 0..<200 {
            stored = try await database.query("SELECT count(*) AS c FROM events WHERE app = $1", [app])[0].int("c") ?? 0
            dead = try await publisher.messageCount(queue: queue.deadLetter.rawValue)
            if stored == 50, dead == 2, try await publisher.messageCount(queue: queue.rawValue) == 0 { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        running.cancel()
        _ = await running.result
        #expect(stored == 50)
        #expect(dead == 2)
        #expect(try await publisher.messageCount(queue: queue.rawValue) == 0)
        let first = try await database.query("SELECT attributes->>'round' AS round, openid FROM events WHERE id = $1", ["\(app):7"])
        #expect(first[0].string("round") == "0") // the first copy won; the duplicate changed nothing
        #expect(first[0].string("openid") == "o2")

        try await database.query("DELETE FROM events WHERE app = $1", [app])
        try await publisher.deleteQueue(queue.rawValue)
        try await publisher.deleteQueue(queue.deadLetter.rawValue)
        await publisher.close()
        await database.close()
    }
}
