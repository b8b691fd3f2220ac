import AMQPClient
import Contracts
import DeadLetters
import Foundation
import Logging
import PostgresClient
import Synchronization
import Testing
import Workers

/// The dead-letter store and keeper against what can happen around them: a message that dies
/// again while it is being replayed, header values out of range, a row PostgreSQL refuses.
@Suite("Dead letters: a replay never hides a new death, and no header can stall the keeper")
struct DeadLetterStoreHardeningTests {
    /// Publishes nothing: records a second death of the letter while "publishing", as the keeper
    /// does when the replayed message fails again within milliseconds.
    struct DyingAgain: DeadLetterRepublisher {
        let store: DeadLetterStore
        let again: NewDeadLetter
        func republish(_ letter: DeadLetter) async -> Bool {
            (try? await store.record(again)) != nil
        }
    }

    static func letter(_ queue: String, _ id: String, failedAt: Date, reason: String = "refused: no rule",
                       attempts: Int = 5) -> NewDeadLetter {
        NewDeadLetter(queue: queue, messageID: id, reason: reason, attempts: attempts, firstFailure: failedAt, lastFailure: failedAt,
                      routingKey: "x", contentType: "application/json", body: Array("{}".utf8))
    }

    @Test("a message that died again before its replay was marked stays open (deaths 2), the replay counted")
    func replayRacingANewDeath() async throws {
        try await GatewayHarness.migrate()
        let database = PostgresPool(url: TestEnvironment.databaseURL, maximumConnections: 2)
        let store = DeadLetterStore(database: database)
        let queue = TestEnvironment.unique("test.dlq-race")
        let first = Date(timeIntervalSince1970: 1_763_800_000)
        let id = try await store.record(Self.letter(queue, "m1", failedAt: first))
        let outcome = try await store.replay(id, via: DyingAgain(store: store, again: Self.letter(queue, "m1", failedAt: first + 1)))
        guard case .replayed(let row) = outcome else { Issue.record("\(outcome)"); return }
        #expect(row.status == .open)
        #expect(row.deaths == 2)
        #expect(row.replayedCount == 1)
        #expect(try await store.depth()[queue] == 1)
        try await database.query("DELETE FROM dead_letters WHERE queue = $1", [queue])
        await database.close()
    }

    @Test("attempts above 2^31 - 1 and a failure time in year 300,000 are clamped and stored")
    func outOfRangeHeaders() async throws {
        try await GatewayHarness.migrate()
        let database = PostgresPool(url: TestEnvironment.databaseURL, maximumConnections: 2)
        let store = DeadLetterStore(database: database)
        let queue = TestEnvironment.unique("test.dlq-range")
        let id = try await store.record(Self.letter(queue, "m1", failedAt: Date(timeIntervalSince1970: 9_400_000_000_000),
                                                    attempts: 1 << 40))
        let row = try #require(try await store.get(id))
        #expect(row.attempts == Int(Int32.max))
        #expect(row.lastFailure == Date(timeIntervalSince1970: 253_402_300_799))
        try await database.query("DELETE FROM dead_letters WHERE queue = $1", [queue])
        await database.close()
    }

    @Test("a dead letter PostgreSQL keeps refusing is logged and acked after 5 tries; the one behind it is stored")
    func refusedRowDoesNotStallTheQueue() async throws {
        try await ScratchDatabase.with { database, _ in
            // A content error no sanitizing can avoid (23514), on this scratch database only.
            try await database.query("ALTER TABLE dead_letters ADD CONSTRAINT test_refuse CHECK (reason <> 'poison')")
            let q = try await PoisonQueue.make("test.dlq-refused")
            for (n, reason) in [("bad", "poison"), ("good", "refused: no rule")] {
                let properties = AMQPProperties(messageID: "\(q.app):\(n)", contentType: "application/json",
                                                headers: [DeadLetterHeader.error: .string(reason), DeadLetterHeader.queue: .string(q.queue.rawValue)])
                #expect(await q.publisher.publish(exchange: "", routingKey: q.queue.deadLetter.rawValue, body: Array("{}".utf8),
                                                  properties: properties) == .acked)
            }
            var amqp = try AMQPConfiguration(url: TestEnvironment.amqpURL)
            amqp.connectionName = "test-dlq-refused"
            let store = DeadLetterStore(database: database)
            let keeper = ConsumerService(amqp: amqp, queue: q.queue.deadLetter, prefetch: 10,
                                         handler: DeadLetterKeeper(store: store, workQueue: .behavior, logger: Logger(label: "test")),
                                         logger: Logger(label: "test"))
            let running = Task { try await keeper.run() }
            var letters: [DeadLetter] = []
            // 5 tries at 200, 400, 800, 1,600 ms apart: about 3 s.
            for _ in 0..<300 {
                letters = try await store.list(queue: q.queue.rawValue, status: nil, limit: 10, before: nil)
                if !letters.isEmpty { break }
                try await Task.sleep(for: .milliseconds(50))
            }
            running.cancel()
            _ = await running.result
            // Stopped: anything it had not acked is back in the queue.
            try await Task.sleep(for: .milliseconds(300))
            let left = try await q.publisher.messageCount(queue: q.queue.deadLetter.rawValue)
            #expect(letters.map(\.messageID) == ["\(q.app):good"])
            #expect(left == 0)
            try await q.remove(database)
        }
    }
}
