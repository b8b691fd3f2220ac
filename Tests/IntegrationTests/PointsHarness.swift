import Audiences
import AMQPClient
import Contracts
import Foundation
import Jobs
import Logging
import Loyalty
import Members
import Pipeline
import PostgresClient
import RedisClient
import Scheduler
import Storage
import Testing
import Workers

/// A points program of the test's own: a unique app (so members are the test's own), a unique
/// event-kind prefix (so no other test's rules match), a unique queue, and worker "processes"
/// that each hold their own AMQP, Redis and PostgreSQL connections, as separate processes would.
struct PointsHarness {
    let app: String
    let prefix: String
    let queue: QueueName
    let database: PostgresPool
    let redis: RedisPool
    let publisher: AMQPConnection
    let timeZone: TimeZone

    static func open() async throws -> PointsHarness {
        let database = PostgresPool(url: TestEnvironment.databaseURL, maximumConnections: 8)
        _ = try await database.withConnection { try await Migrator(migrations: try Migration.bundled()).run(on: $0) }
        let publisher = try await AMQPConnection(url: TestEnvironment.amqpURL)
        try await publisher.enableConfirms()
        let queue = QueueName(rawValue: TestEnvironment.unique("test.points"))
        try await publisher.declare(Topology(queues: [.init(name: queue, bindings: [], deliveryLimit: 5)]))
        let zone = TimeZone(identifier: "Asia/Shanghai") ?? .current
        let redis = try await RedisPool(url: TestEnvironment.redisURL, size: 2)
        // The shared database stands for an install whose counters are whole: without the marker the
        // first batches of tests calling `process` directly (no handler to hold them) would meet
        // another test's rebuild and fail (CounterReadinessTests covers the missing marker).
        try await CounterReadiness.markReady(redis)
        return PointsHarness(app: TestEnvironment.unique("wx"), prefix: "t" + UUID().uuidString.prefix(8).lowercased(),
                             queue: queue, database: database, redis: redis,
                             publisher: publisher, timeZone: zone)
    }

    /// An event kind only this test's rules name.
    func kind(_ name: String) -> EventKind { EventKind("\(prefix).\(name)") }

    func event(_ id: String, _ kind: EventKind, openid: String, at time: String, unionid: String? = nil,
               attributes: [String: JSONValue] = [:]) -> Envelope {
        let date = RFC3339.parse(time) ?? Date()
        return Envelope(id: "\(app):\(id)", platform: .wechat, app: app, kind: kind,
                        subject: .init(openid: openid, unionid: unionid), occurredAt: date, receivedAt: date, attributes: attributes)
    }

    /// The loyalty program with a fixed program, on the harness's servers (or the given ones).
    func loyalty(_ program: RuleBook.Program, redis: RedisPool? = nil, database: PostgresPool? = nil,
                 news: any PointsNewsPolicy = AlwaysAnnounce()) -> LoyaltyService {
        let database = database ?? self.database
        return LoyaltyService(rules: RuleBook(fixed: program), members: MemberDirectory(database: database),
                              decider: PointsDecider(redis: redis ?? self.redis, calendar: PeriodCalendar(timeZone: timeZone)),
                              ledger: Ledger(database: database, news: news))
    }

    /// The pipeline as a worker runs it (history, then Loyalty, in one transaction per batch).
    func pool(_ program: RuleBook.Program, redis: RedisPool? = nil, database: PostgresPool? = nil) -> Pipeline {
        Pipeline.standard(database: database ?? self.database, loyalty: loyalty(program, redis: redis, database: database),
                          audiences: AudienceService(database: database ?? self.database))
    }

    func publish(_ events: [Envelope]) async throws {
        for event in events {
            // Straight to the test's queue through the default exchange: no other consumer sees it.
            let outcome = await publisher.publish(exchange: "", routingKey: queue.rawValue, body: try event.encoded(),
                                                  properties: AMQPProperties(messageID: event.id, contentType: "application/json"))
            #expect(outcome == .acked)
        }
    }

    /// Starts `count` workers on the test's queue; cancel the returned tasks to stop them.
    func startWorkers(_ count: Int, program: RuleBook.Program) async throws -> [Task<Void, any Error>] {
        var tasks: [Task<Void, any Error>] = []
        for n in 0..<count {
            var amqp = try AMQPConfiguration(url: TestEnvironment.amqpURL)
            amqp.connectionName = "test-points-\(n)"
            let database = PostgresPool(url: TestEnvironment.databaseURL, maximumConnections: 2)
            let redis = try await RedisPool(url: TestEnvironment.redisURL, size: 1)
            let consumer = ConsumerService(amqp: amqp, queue: queue, prefetch: 16,
                                           handler: EnvelopeBatchHandler(pool(program, redis: redis, database: database),
                                                                         logger: Logger(label: "test.points")),
                                           logger: Logger(label: "test.points"))
            tasks.append(Task {
                defer { Task { await database.close(); await redis.close() } }
                try await consumer.run()
            })
        }
        return tasks
    }

    func member(_ openid: String) async throws -> MemberView? {
        guard let id = try await MemberDirectory(database: database).lookup(Identity(platform: .wechat, app: app, openid: openid)) else {
            return nil
        }
        return try await MemberQueries(database: database).member(id)
    }

    func ledgerCount() async throws -> Int {
        try await database.query("""
            SELECT count(*) AS c FROM ledger WHERE member_id IN (SELECT member_id FROM member_identities WHERE app = $1)
            """, [app])[0].int("c") ?? 0
    }

    /// Polls until `done` holds and nothing is waiting in the queue, then waits a little longer so
    /// that anything extra (a cap exceeded, a second grant) would show.
    func waitUntil(timeout: Duration = .seconds(30), _ done: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if try await done(), try await publisher.messageCount(queue: queue.rawValue) == 0 { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        try await Task.sleep(for: .milliseconds(500))
    }

    /// Stops the workers; whatever they had not acked returns to the queue, so an empty queue
    /// afterwards means every delivery was processed and settled.
    func stop(_ workers: [Task<Void, any Error>]) async throws {
        for worker in workers { worker.cancel() }
        for worker in workers { _ = await worker.result }
        #expect(try await publisher.messageCount(queue: queue.rawValue) == 0, "deliveries left unsettled")
        #expect(try await publisher.messageCount(queue: queue.deadLetter.rawValue) == 0, "deliveries dead-lettered")
    }

    func close() async {
        try? await publisher.deleteQueue(queue.rawValue)
        try? await publisher.deleteQueue(queue.deadLetter.rawValue)
        await publisher.close()
        await redis.close()
        await database.close()
    }
}

extension RuleBook.Program {
    /// A program with the plain Monday-Friday calendar in the harness's zone (no declared holidays).
    init(rules: [PointsRule], levels: LevelTable) {
        self.init(rules: rules, levels: levels, calendar: BusinessCalendar(timeZone: TimeZone(identifier: "Asia/Shanghai") ?? .current))
    }
}
