import AMQPClient
import Contracts
import Foundation
import Logging
import Pipeline
import PostgresClient
import Runtime
import Storage
import RedisClient
import Testing
@testable import Workers

/// A work queue of the test's own (with its `.dead` queue), events published straight to it, and
/// the behavior pool consuming it in process.
struct PoisonQueue {
    let queue: QueueName
    let app: String
    let publisher: AMQPConnection

    static func make(_ prefix: String) async throws -> PoisonQueue {
        let queue = QueueName(rawValue: TestEnvironment.unique(prefix))
        let publisher = try await AMQPConnection(url: TestEnvironment.amqpURL)
        try await publisher.enableConfirms()
        try await publisher.declare(Topology(queues: [.init(name: queue, bindings: [], deliveryLimit: 10)]))
        return PoisonQueue(queue: queue, app: TestEnvironment.unique("app"), publisher: publisher)
    }

    /// Random text does not compress: a repeated character would, and would then fit the index.
    static func random(_ count: Int) -> String {
        let letters = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
        return String((0..<count).map { _ in letters.randomElement()! })
    }

    /// Spread over U+1F000-1FAFF: pglz leaves it uncompressed (3,616 bytes in the index row).
    static func randomEmoji(_ count: Int) -> String {
        String(String.UnicodeScalarView((0..<count).compactMap { _ in Unicode.Scalar(UInt32.random(in: 0x1F000...0x1FAFF)) }))
    }

    func envelope(_ n: String, openid: String) -> Envelope {
        let at = Date(timeIntervalSince1970: 1_763_800_000)
        return Envelope(id: "\(app):\(n)", platform: .server, app: app, kind: .communityPost, subject: .init(openid: openid),
                        occurredAt: at, receivedAt: at, attributes: ["n": .string(n)])
    }

    @discardableResult
    func publish(_ envelope: Envelope) async throws -> PublishOutcome {
        // Straight to the test's queue through the default exchange: no other queue sees it.
        await publisher.publish(exchange: "", routingKey: queue.rawValue, body: try envelope.encoded(),
                                properties: AMQPProperties(messageID: envelope.id, contentType: "application/json"))
    }

    func consumer(_ database: PostgresPool, deadLetterAfter: Int = 5) throws -> ConsumerService {
        var amqp = try AMQPConfiguration(url: TestEnvironment.amqpURL)
        amqp.connectionName = "test-poison"
        return ConsumerService(amqp: amqp, queue: queue, prefetch: 200,
                               handler: EnvelopeBatchHandler(Pipeline(database: database, handlers: []), logger: Logger(label: "test"),
                                                             deadLetterAfter: deadLetterAfter),
                               logger: Logger(label: "test"))
    }

    /// Takes every message waiting in `<queue>.dead` (acked), by message id.
    func drainDead(expecting count: Int) async throws -> [String: AMQPDelivery] {
        let reader = try await AMQPConnection(url: TestEnvironment.amqpURL)
        let (tag, stream) = try await reader.consume(queue: queue.deadLetter.rawValue, prefetch: 50)
        var found: [String: AMQPDelivery] = [:]
        let deadline = ContinuousClock.now + .seconds(10)
        let collecting = Task {
            var found: [String: AMQPDelivery] = [:]
            for try await batch in stream {
                for delivery in batch {
                    found[delivery.properties.messageID ?? "-"] = delivery
                    try await delivery.ack()
                }
                if found.count >= count { break }
            }
            return found
        }
        let timeout = Task { try await Task.sleep(until: deadline); collecting.cancel() }
        found = (try? await collecting.value) ?? [:]
        timeout.cancel()
        try? await reader.cancel(consumerTag: tag)
        await reader.close()
        return found
    }

    func count(_ database: PostgresPool, _ ids: [String]) async throws -> Int {
        try await database.query("SELECT count(*) AS c FROM events WHERE id = ANY($1::text[])", [PostgresArray(ids)])[0].int("c") ?? 0
    }

    func remove(_ database: PostgresPool) async throws {
        try await database.query("DELETE FROM events WHERE app = $1", [app])
        try await publisher.deleteQueue(queue.rawValue)
        try await publisher.deleteQueue(queue.deadLetter.rawValue)
        await publisher.close()
    }
}

@Suite("Poison messages: split out, dead-lettered with their reason; the good events behind them carry on")
struct PoisonMessageTests {
    @Test("one 5,000-character openid, one with a NUL and 3.6 KB of emoji among good events: the good are stored promptly, the bad land in .dead with headers, nothing loops")
    func poisonAmongGood() async throws {
        let database = PostgresPool(url: TestEnvironment.databaseURL, maximumConnections: 2)
        try await database.withConnection { try await Migrator(migrations: try Migration.bundled()).run(on: $0) }
        let q = try await PoisonQueue.make("test.poison")
        let long = q.envelope("long", openid: PoisonQueue.random(5_000))
        let nul = q.envelope("nul", openid: "victim\u{0}evil")
        let emoji = q.envelope("emoji", openid: PoisonQueue.randomEmoji(900)) // 3,600 bytes of UTF-8
        var good: [Envelope] = []
        for n in 0..<60 {
            let event = q.envelope("good\(n)", openid: "o\(n)")
            good.append(event)
            #expect(try await q.publish(event) == .acked)
            switch n {
            case 10: #expect(try await q.publish(long) == .acked)
            case 30: #expect(try await q.publish(nul) == .acked)
            case 45: #expect(try await q.publish(emoji) == .acked)
            default: break
            }
        }
        let running = Task { try await q.consumer(database).run() }
        let started = ContinuousClock.now
        var stored = 0
        var dead = 0
        while ContinuousClock.now - started < .seconds(20) {
            stored = try await q.count(database, good.map(\.id))
            dead = try await q.publisher.messageCount(queue: q.queue.deadLetter.rawValue)
            if stored == good.count, dead == 3, try await q.publisher.messageCount(queue: q.queue.rawValue) == 0 { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        let elapsed = ContinuousClock.now - started
        running.cancel()
        _ = await running.result
        #expect(stored == good.count)
        #expect(dead == 3)
        // Five rounds of 100 ms doubling are 1.5 s; with consumer start-up, well under 10 s.
        #expect(elapsed < .seconds(10), "took \(elapsed)")
        #expect(try await q.publisher.messageCount(queue: q.queue.rawValue) == 0)
        // The NUL openid was not stored cut at the NUL (as `victim`), nor any other bad one.
        #expect(try await q.count(database, [long.id, nul.id, emoji.id]) == 0)

        let letters = try await q.drainDead(expecting: 3)
        #expect(Set(letters.keys) == [long.id, nul.id, emoji.id])
        for (id, letter) in letters {
            let headers = letter.properties.headers
            #expect(headers[DeadLetterHeader.queue]?.string == q.queue.rawValue)
            #expect(letter.properties.contentType == "application/json")
            #expect(try Envelope.decode(letter.body).id == id, "the original envelope travels unchanged")
            let first = headers[DeadLetterHeader.firstFailure]?.string.flatMap(RFC3339.parse)
            let last = headers[DeadLetterHeader.lastFailure]?.string.flatMap(RFC3339.parse)
            #expect(first != nil && last != nil && first! <= last!)
            let attempts = headers[DeadLetterHeader.attempts]?.int
            let error = headers[DeadLetterHeader.error]?.string ?? ""
            if id == nul.id {
                // Refused by the client before anything was sent: no point in trying again.
                #expect(attempts == 1)
                #expect(error.contains("NUL"))
            } else {
                #expect(attempts == 5)
                #expect(error.contains("54000"), "the index row size error: \(error)")
            }
        }
        try await q.remove(database)
        await database.close()
    }

    @Test("a message redelivered often already (x-delivery-count) is dead-lettered on its next failure, not counted from zero")
    func redeliveredCountsOn() async throws {
        let database = PostgresPool(url: TestEnvironment.databaseURL, maximumConnections: 2)
        let q = try await PoisonQueue.make("test.poison-redelivered")
        let long = q.envelope("long", openid: PoisonQueue.random(5_000))
        #expect(try await q.publish(long) == .acked)
        // Two deliveries returned to the queue unsettled: the quorum queue counts them.
        for _ in 0..<2 {
            let reader = try await AMQPConnection(url: TestEnvironment.amqpURL)
            let (tag, stream) = try await reader.consume(queue: q.queue.rawValue, prefetch: 1)
            for try await batch in stream {
                guard let delivery = batch.first else { continue }
                // Cancelled first, so the requeued message is not delivered to this reader again.
                try await reader.cancel(consumerTag: tag)
                try await delivery.nack(requeue: true)
                break
            }
            await reader.close()
        }
        let running = Task { try await q.consumer(database, deadLetterAfter: 3).run() }
        let letters = try await q.drainDead(expecting: 1)
        running.cancel()
        _ = await running.result
        let attempts = letters[long.id]?.properties.headers[DeadLetterHeader.attempts]?.int
        // Two earlier deliveries plus one failure here reach the limit of 3 at once.
        #expect(attempts == 3)
        try await q.remove(database)
        await database.close()
    }

    @Test("a database outage holds the batch: nothing is dead-lettered, everything is stored once it returns")
    func outageHolds() async throws {
        let shared = TestEnvironment.databaseURL
        let port = Int(shared.split(separator: ":").last?.split(separator: "/").first ?? "5432") ?? 5432
        let proxy = try CuttableProxy(targetPort: port)
        let viaProxy = shared.replacingOccurrences(of: ":\(port)/", with: ":\(proxy.port)/")
        let direct = PostgresPool(url: shared, maximumConnections: 1)
        let database = PostgresPool(url: viaProxy, maximumConnections: 2)
        let q = try await PoisonQueue.make("test.outage")
        let events = (0..<20).map { q.envelope("e\($0)", openid: "o\($0)") }
        proxy.cut()
        for event in events { #expect(try await q.publish(event) == .acked) }
        let running = Task { try await q.consumer(database, deadLetterAfter: 2).run() }
        // Well past two rounds of lone retries (100 + 200 ms): an outage must not count as failures.
        try await Task.sleep(for: .seconds(4))
        #expect(try await q.publisher.messageCount(queue: q.queue.deadLetter.rawValue) == 0)
        #expect(try await q.count(direct, events.map(\.id)) == 0)
        proxy.restore()
        var stored = 0
        for _ in 0..<300 {
            stored = try await q.count(direct, events.map(\.id))
            if stored == events.count { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        running.cancel()
        _ = await running.result
        #expect(stored == events.count)
        #expect(try await q.publisher.messageCount(queue: q.queue.deadLetter.rawValue) == 0)
        try await q.remove(direct)
        await database.close()
        await direct.close()
    }

    @Test("only a server's answer about the message counts against it; outages, timeouts and unknown errors hold the batch")
    func classification() {
        func counts(_ error: any Error) -> Bool { ConsumerFailure.classify(error).countsAgainstMessages }
        #expect(counts(PostgresError(.server, "index row size 5016 exceeds maximum 2704", sqlState: "54000")))
        #expect(counts(PostgresError(.server, "invalid input syntax", sqlState: "22P02")))
        #expect(counts(PostgresError(.server, "duplicate key", sqlState: "23505")))
        #expect(counts(PostgresError(.invalidParameter, "NUL")))
        #expect(counts(EventRefused("malformed reservation")))
        #expect(counts(RedisError(.server, "WRONGTYPE Operation against a key holding the wrong kind of value")))
        for state in ["08006", "53300", "57014", "57P01", "58030", "40001", "40P01", "55P03", "42P01"] {
            #expect(!counts(PostgresError(.server, "unavailable", sqlState: state)), "\(state)")
        }
        #expect(!counts(PostgresError(.server, "no state")))
        #expect(!counts(PostgresError(.io, "connection lost")))
        #expect(!counts(PostgresError(.connect, "refused")))
        for reply in ["LOADING Redis is loading", "BUSY script", "READONLY replica", "OOM command not allowed",
                      "ERR max number of clients reached", "ERR Error running script (call to f_1234): @user_script:1: oops",
                      "ERR value is not an integer or out of range", "NOSCRIPT No matching script", "SOMENEWPREFIX future reply", ""] {
            #expect(!counts(RedisError(.server, reply)), "\(reply)")
        }
        #expect(!counts(RedisError(.io, "reset by peer")))
        #expect(!counts(AMQPError(.io, "lost")))
        #expect(!counts(CancellationError()))
    }
}
