import Audiences
import AMQPClient
import Contracts
import DeadLetters
import Foundation
import Logging
import Loyalty
import Members
import Pipeline
import PostgresClient
import Runtime
import Synchronization
import Testing
import Workers

/// A handler that fails on demand, registered after Loyalty: its failure inside the batch
/// transaction must take the history and the ledger rows down with it.
final class Tripwire: PipelineHandler {
    let selector = EventSelector.all
    /// Transactions still to fail as an outage (a server error that is no event's fault).
    let outages: Mutex<Int>
    /// Event ids refused for good.
    let refused: Set<String>
    let runs = Mutex(0)

    init(outages: Int = 0, refused: Set<String> = []) {
        self.outages = Mutex(outages)
        self.refused = refused
    }

    struct Outage: Error {}

    func prepare(_ events: [Envelope]) async throws -> [String] { events.map(\.id) }

    func handle(_ ids: [String], firstStored: Set<String>, in transaction: isolated PostgresConnection) throws -> [String] {
        runs.withLock { $0 += 1 }
        if let bad = ids.first(where: refused.contains) { throw EventRefused("the tripwire refuses \(bad)") }
        if outages.withLock({ left in defer { left = max(0, left - 1) }; return left > 0 }) { throw Outage() }
        return ids
    }
}

@Suite("Pipeline: one delivery per event, history and points in one transaction, the upgrade drain")
struct PipelineTests {
    static let externalKeys = ["wechat.subscribe", "wechat.message.text", "alipay.message.text", "weibo.follow", "qq.click",
                               "server.mall.order_paid", "h5.page_view", "h5.share"]
    static let followUpKeys = ["fanflow.points.granted", "fanflow.points.matured", "fanflow.member.level_changed",
                               "fanflow.flashsale.reserved", "fanflow.push.retry", "fanflow.orders.reconcile"]

    /// Declares `queues` (unique names, the given bindings) on a private exchange, publishes one
    /// message per routing key and answers how many each queue received.
    static func deliveries(_ queues: [QueueName: [String]], keys: [String]) async throws -> [QueueName: Int] {
        let connection = try await AMQPConnection(url: TestEnvironment.amqpURL)
        try await connection.enableConfirms()
        let exchange = TestEnvironment.unique("test.pipeline.routing")
        try await connection.declareExchange(exchange, type: "topic")
        var names: [QueueName: String] = [:]
        for (queue, bindings) in queues {
            let name = TestEnvironment.unique("test.routing.\(queue.rawValue)")
            try await connection.declareQueue(name, options: AMQPQueueOptions(kind: .classic, durable: false))
            for pattern in bindings { try await connection.bindQueue(name, exchange: exchange, routingKey: pattern) }
            names[queue] = name
        }
        for key in keys { #expect(await connection.publish(exchange: exchange, routingKey: key, body: Array("{}".utf8)) == .acked) }
        try await Task.sleep(for: .milliseconds(200))
        var got: [QueueName: Int] = [:]
        for (queue, name) in names { got[queue] = try await connection.messageCount(queue: name) }
        for name in names.values { try? await connection.deleteQueue(name) }
        try? await connection.deleteExchange(exchange)
        await connection.close()
        return got
    }

    @Test("the standard topology delivers every external event once to the pipeline (the former one twice); follow-ups never reach it")
    func oneDeliveryPerEvent() async throws {
        let standard = Dictionary(uniqueKeysWithValues: Topology.standard.queues.map { ($0.name, $0.bindings) })
        let external = try await Self.deliveries(standard, keys: Self.externalKeys)
        #expect(external[.pipeline] == Self.externalKeys.count)
        #expect(external[.orders] == 0)
        // The push queue's platform bindings are the one second delivery left: wechat.subscribe here.
        #expect(external[.push] == 1)
        let followUps = try await Self.deliveries(standard, keys: Self.followUpKeys)
        #expect(followUps[.pipeline] == 0)

        // What the upgrade retired: the same external events cost two deliveries each (but the beacons', one).
        let retired = Dictionary(uniqueKeysWithValues: Topology.standard.retired.map { ($0.name, $0.bindings) })
        let before = try await Self.deliveries(retired, keys: Self.externalKeys)
        #expect(before[.behavior] == Self.externalKeys.count)
        #expect(before[.points] == Self.externalKeys.count - 1)
    }

    @Test("a handler failing inside the batch transaction rolls back the history row and the grant; retried, both are stored once")
    func oneTransaction() async throws {
        let h = try await PointsHarness.open()
        let kind = h.kind("post")
        let loyalty = h.loyalty(.init(rules: [PointsRule(code: "\(h.prefix)-post", kinds: [kind], points: 5, growth: 1, reason: "post")],
                                      levels: .standard))
        let tripwire = Tripwire(outages: 1)
        let pipeline = Pipeline(database: h.database, handlers: [loyalty, tripwire])
        let events = (1...3).map { h.event("e\($0)", kind, openid: "o\($0)", at: "2026-12-01T10:00:00+08:00") }
        // FanFlow's follow-ups in the batch (as a drained behavior queue would hold them): not history, not Loyalty's.
        let followUps = [
            Envelope(id: "\(h.app):news", platform: .fanflow, app: h.app, kind: .pointsGranted, subject: .init(openid: "o1"),
                     occurredAt: Date(), receivedAt: Date()),
            Envelope(id: "\(h.app):level", platform: .fanflow, app: h.app, kind: .levelChanged, subject: .init(openid: "o1"),
                     occurredAt: Date(), receivedAt: Date()),
        ]
        func stored() async throws -> Int {
            try await h.database.query("SELECT count(*) AS c FROM events WHERE app = $1", [h.app])[0].int("c") ?? -1
        }

        await #expect(throws: Tripwire.Outage.self) { try await pipeline.run(events + followUps) }
        #expect(try await stored() == 0)
        #expect(try await h.ledgerCount() == 0)

        let first = try await pipeline.run(events + followUps)
        #expect(first.stored == 3)
        #expect(first.outcomes(LoyaltyOutcome.self).filter { if case .granted = $0 { return true } else { return false } }.count == 3)
        #expect(first.outcomes(String.self).sorted() == events.map(\.id).sorted())
        #expect(try await stored() == 3)
        #expect(try await h.ledgerCount() == 3)

        // Redelivered whole: the stored decisions come back, the ledger's index stops a second write.
        let again = try await pipeline.run(events + followUps)
        #expect(again.outcomes(LoyaltyOutcome.self).filter { if case .alreadyApplied = $0 { return true } else { return false } }.count == 3)
        #expect(try await stored() == 3)
        #expect(try await h.ledgerCount() == 3)
        #expect(try await h.member("o1")?.points == 5)

        // Follow-ups alone open no transaction and call no handler.
        let runs = tripwire.runs.withLock { $0 }
        #expect(try await pipeline.run(followUps).stored == 0)
        #expect(tripwire.runs.withLock { $0 } == runs)
        try await h.database.query("DELETE FROM events WHERE app = $1", [h.app])
        await h.close()
    }

    @Test("through the consumer: an outage holds the batch and a refused event is split out and dead-lettered without its history; the rest once")
    func consumerSettles() async throws {
        let h = try await PointsHarness.open()
        let kind = h.kind("post")
        let loyalty = h.loyalty(.init(rules: [PointsRule(code: "\(h.prefix)-post", kinds: [kind], points: 2, growth: 0, reason: "post")],
                                      levels: .standard))
        let events = (0..<20).map { h.event("e\($0)", kind, openid: "o\($0 % 4)", at: "2026-12-01T10:00:00+08:00") }
        let refused = events[7].id
        let pipeline = Pipeline(database: h.database, handlers: [loyalty, Tripwire(outages: 2, refused: [refused])])
        try await h.publish(events + events)  // every event twice, as a retried webhook would
        var amqp = try AMQPConfiguration(url: TestEnvironment.amqpURL)
        amqp.connectionName = "test-pipeline"
        let consumer = ConsumerService(amqp: amqp, queue: h.queue, prefetch: 64,
                                       handler: EnvelopeBatchHandler(pipeline, logger: Logger(label: "test.pipeline"), deadLetterAfter: 3),
                                       logger: Logger(label: "test.pipeline"))
        let running = Task { try await consumer.run() }
        try await h.waitUntil {
            let granted = try await h.ledgerCount()
            let dead = try await h.publisher.messageCount(queue: h.queue.deadLetter.rawValue)
            return granted >= 19 && dead >= 2
        }
        running.cancel()
        _ = await running.result

        #expect(try await h.publisher.messageCount(queue: h.queue.rawValue) == 0)
        #expect(try await h.publisher.messageCount(queue: h.queue.deadLetter.rawValue) == 2)  // both copies of the refused event
        #expect(try await h.ledgerCount() == 19)
        let rows = try await h.database.query("SELECT id FROM events WHERE app = $1", [h.app]).compactMap { $0.string("id") }
        #expect(rows.count == 19)
        #expect(!rows.contains(refused))
        #expect(try await h.member("o3")?.points == 8)  // e3, e11, e15, e19 (e7 refused): 4 × 2
        try await h.database.query("DELETE FROM events WHERE app = $1", [h.app])
        await h.close()
    }

    @Test("upgrade: the retired queues are unbound, then drained into the pipeline; each event stored once and granted once, follow-ups not stored")
    func upgradeDrain() async throws {
        let h = try await PointsHarness.open()
        let kind = h.kind("post")
        let loyalty = h.loyalty(.init(rules: [PointsRule(code: "\(h.prefix)-post", kinds: [kind], points: 3, growth: 0, reason: "post")],
                                      levels: .standard))
        // The former topology on a private exchange: a behavior queue bound to everything, a points queue.
        let exchange = ExchangeName(rawValue: TestEnvironment.unique("test.upgrade.events"))
        let deadExchange = ExchangeName(rawValue: TestEnvironment.unique("test.upgrade.dead"))
        let oldBehavior = QueueName(rawValue: TestEnvironment.unique("test.upgrade.behavior"))
        let oldPoints = QueueName(rawValue: TestEnvironment.unique("test.upgrade.points"))
        let newPipeline = QueueName(rawValue: TestEnvironment.unique("test.upgrade.pipeline"))
        let retiredBindings = Dictionary(uniqueKeysWithValues: Topology.standard.retired.map { ($0.name, $0.bindings) })
        let former = Topology(queues: [.init(name: oldBehavior, bindings: retiredBindings[.behavior] ?? [], deliveryLimit: 10),
                                       .init(name: oldPoints, bindings: retiredBindings[.points] ?? [], deliveryLimit: 10)],
                              eventsExchange: exchange, deadLetterExchange: deadExchange)
        let upgraded = Topology(queues: [.init(name: newPipeline, bindings: Topology.pipelineBindings, deliveryLimit: 10)],
                                retired: [.init(name: oldBehavior, bindings: retiredBindings[.behavior] ?? [], successor: newPipeline),
                                          .init(name: oldPoints, bindings: retiredBindings[.points] ?? [], successor: newPipeline)],
                                eventsExchange: exchange, deadLetterExchange: deadExchange)
        try await h.publisher.declare(former)

        func publish(_ envelope: Envelope) async throws {
            let outcome = await h.publisher.publish(exchange: exchange.rawValue, routingKey: envelope.routingKey, body: try envelope.encoded(),
                                                    properties: AMQPProperties(messageID: envelope.id, contentType: "application/json"))
            #expect(outcome == .acked)
        }
        let posts = (0..<30).map { h.event("p\($0)", kind, openid: "o\($0 % 3)", at: "2026-12-01T10:00:00+08:00") }
        let beacon = Envelope(id: "\(h.app):view", platform: .h5, app: h.app, kind: .pageView, subject: .init(openid: "o1", verified: false),
                              occurredAt: Date(), receivedAt: Date())
        let followUp = Envelope(id: "\(h.app):news", platform: .fanflow, app: h.app, kind: .pointsGranted, subject: .init(openid: "o1"),
                                occurredAt: Date(), receivedAt: Date())
        for envelope in posts + [beacon, followUp] { try await publish(envelope) }
        try await Task.sleep(for: .milliseconds(200))
        #expect(try await h.publisher.messageCount(queue: oldBehavior.rawValue) == 32)
        #expect(try await h.publisher.messageCount(queue: oldPoints.rawValue) == 30)

        // The new version starts: its declare unbinds the retired queues; a new event reaches only the pipeline.
        try await h.publisher.declare(upgraded)
        try await h.publisher.declare(upgraded)  // idempotent, as every process declares at start
        let late = h.event("late", kind, openid: "o0", at: "2026-12-01T11:00:00+08:00")
        try await publish(late)
        try await Task.sleep(for: .milliseconds(200))
        #expect(try await h.publisher.messageCount(queue: oldBehavior.rawValue) == 32)
        #expect(try await h.publisher.messageCount(queue: oldPoints.rawValue) == 30)
        #expect(try await h.publisher.messageCount(queue: newPipeline.rawValue) == 1)

        // The pipeline pool's drains.
        let amqp = try AMQPConfiguration(url: TestEnvironment.amqpURL)
        let handler = EnvelopeBatchHandler(Pipeline.standard(database: h.database, loyalty: loyalty, audiences: AudienceService(database: h.database)), logger: Logger(label: "test.drain"))
        let store = DeadLetterStore(database: h.database)
        let drains = RetiredQueueDrain.services(amqp: amqp, topology: upgraded, prefetch: 8, handler: handler,
                                                keeper: { DeadLetterKeeper(store: store, workQueue: $0, logger: Logger(label: "test.drain")) },
                                                logger: Logger(label: "test.drain"))
        #expect(drains.count == 4)
        let running = drains.map { drain in Task { try await drain.run() } }
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            let left = try await h.publisher.messageCount(queue: oldBehavior.rawValue) + h.publisher.messageCount(queue: oldPoints.rawValue)
            if left == 0, try await h.ledgerCount() >= 30 { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        try await Task.sleep(for: .seconds(2))  // the drains' consumers let go once alone with an empty queue
        for task in running { task.cancel() }
        for task in running { _ = await task.result }

        #expect(try await h.publisher.messageCount(queue: oldBehavior.rawValue) == 0)
        #expect(try await h.publisher.messageCount(queue: oldPoints.rawValue) == 0)
        #expect(try await h.publisher.messageCount(queue: oldBehavior.deadLetter.rawValue) == 0)
        #expect(try await h.ledgerCount() == 30)
        #expect(try await h.member("o0")?.points == 30)  // p0, p3, … p27: 10 × 3 (the late event waits in the pipeline queue)
        let rows = try await h.database.query("SELECT id, count(*) OVER () AS n FROM events WHERE app = $1", [h.app])
        let ids = Set(rows.compactMap { $0.string("id") })
        #expect(rows.count == 31)
        #expect(ids.contains(beacon.id))
        #expect(!ids.contains(followUp.id))
        #expect(!ids.contains(late.id))

        try await h.database.query("DELETE FROM events WHERE app = $1", [h.app])
        for queue in [oldBehavior, oldPoints, newPipeline] {
            try? await h.publisher.deleteQueue(queue.rawValue)
            try? await h.publisher.deleteQueue(queue.deadLetter.rawValue)
        }
        try? await h.publisher.deleteExchange(exchange.rawValue)
        try? await h.publisher.deleteExchange(deadExchange.rawValue)
        await h.close()
    }

    @Test("a drain of a queue that does not exist does nothing and ends with its task")
    func drainWithoutQueue() async throws {
        let amqp = try AMQPConfiguration(url: TestEnvironment.amqpURL)
        let database = PostgresPool(url: TestEnvironment.databaseURL, maximumConnections: 1)
        let drain = RetiredQueueDrain(amqp: amqp, queue: QueueName(rawValue: TestEnvironment.unique("test.never-declared")), prefetch: 1,
                                      handler: EnvelopeBatchHandler(Pipeline(database: database, handlers: []), logger: Logger(label: "test")),
                                      poll: .milliseconds(50), logger: Logger(label: "test"))
        let running = Task { try await drain.run() }
        try await Task.sleep(for: .milliseconds(500))
        running.cancel()
        _ = await running.result
        await database.close()
    }

    @Test("--pool behavior and points still start the pipeline pool, with a deprecation warning; unknown names are refused")
    func poolAliases() throws {
        for alias in ["behavior", "points"] {
            let spec = try PoolSpec(parsing: "\(alias)=2")
            #expect(spec.name == .pipeline)
            #expect(spec.consumers == 2)
            #expect(spec.alias?.rawValue == alias)
            #expect(spec.deprecation?.contains("--pool pipeline=N") == true)
            #expect(spec.name.queue == .pipeline)
        }
        let pipeline = try PoolSpec(parsing: "pipeline=3")
        #expect(pipeline.name == .pipeline && pipeline.alias == nil && pipeline.deprecation == nil)
        #expect(try PoolSpec(parsing: "orders").name.queue == .orders)
        #expect(throws: PoolSpecError.self) { try PoolSpec(parsing: "nosuchpool=1") }
        #expect(throws: PoolSpecError.self) { try PoolSpec(parsing: "") }
        #expect(throws: PoolSpecError.self) { try PoolSpec(parsing: "pipeline=0") }
    }
}
