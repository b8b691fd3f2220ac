import AMQPClient
import Contracts
import FlashSales
import Foundation
import Jobs
import Members
import Logging
import Loyalty
import PostgresClient
import Pushes
import Runtime
import Scheduler
import Testing
import Workers

/// Push jobs run in the push worker, from the jobs table to the push service: no scheduler publishes
/// them and no message for them reaches `fanflow.push`. And the messages an older scheduler left in
/// the push queue are still handled, once.
extension PushPoolTests {
    /// The push jobs of the test's database that reached the broker: envelopes the tap saw with a
    /// job's id and its push or broadcast (the tap sees every test's events; this keeps ours).
    static func published(_ setup: Setup) async throws -> [Envelope] {
        let jobs = try await setup.database.query("SELECT id, payload::text AS payload FROM jobs WHERE kind LIKE 'push.%'")
        var mine: [String: [String: JSONValue]] = [:]
        for row in jobs {
            guard case .object(let payload)? = try? JSONValue.parse(try row.require("payload", as: [UInt8].self)) else { continue }
            mine["fanflow:job:\(try row.require("id", as: Int64.self))"] = payload
        }
        return setup.tap.all().map(\.envelope).filter { envelope in
            guard let payload = mine[envelope.id] else { return false }
            return ["pushId", "broadcastId", "reservationId"].contains { payload[$0] != nil && envelope.attributes[$0] == payload[$0] }
        }
    }

    static func levelTrigger(_ setup: Setup) async throws -> String {
        let code = TestEnvironment.unique("jlevel"), trigger = TestEnvironment.unique("t-jlevel")
        _ = try await put(setup.client, "/admin/v1/templates/\(code)",
                          #"{"appId":"\#(setup.app)","templateId":"TPL-J","fields":{"first":"Now {{level}}"}}"#)
        let (status, _) = try await put(setup.client, "/admin/v1/push-triggers/\(trigger)", #"{"event":"fanflow.member.level_changed","template":"\#(code)"}"#)
        #expect(status == .created)
        return trigger
    }

    static func levelChange(member: Int64) -> Envelope {
        Envelope(id: "fanflow:level:\(member):gold:\(UUID().uuidString)", platform: .fanflow, app: "", kind: .levelChanged, subject: .init(),
                 occurredAt: Date(), receivedAt: Date(), attributes: ["memberId": .integer(member), "from": "silver", "to": "gold"])
    }

    static func jobStatuses(_ database: PostgresPool, kind: JobKind, pushID: String) async throws -> [String] {
        try await database.query("SELECT status FROM jobs WHERE kind = $1 AND payload->>'pushId' = $2 ORDER BY id", [kind.rawValue, pushID])
            .map { try $0.require("status", as: String.self) }
    }

    @Test("a push retry and a payment reminder run in the push worker: the jobs go done, the platform gets the sends, nothing reaches the broker")
    func retryRunsInWorker() async throws {
        try await Self.withPushes(maxAttempts: 3, scratch: true) { setup in
            let (fake, app, database) = (setup.fake, setup.app, setup.database)
            let trigger = try await Self.levelTrigger(setup)
            let fan = Identity(platform: .wechat, app: app, openid: "retry-fan")
            let member = try #require(try await MemberDirectory(database: database).resolve([fan: nil])[fan])

            // The reminder's trigger, saved first: the worker reads triggers at most every 3 s.
            let remind = TestEnvironment.unique("jremind"), remindTrigger = TestEnvironment.unique("t-jremind")
            _ = try await Self.put(setup.client, "/admin/v1/templates/\(remind)",
                                   #"{"appId":"\#(app)","templateId":"TPL-JR","fields":{"first":"Pay {{amountYuan}} by {{payBy}}"}}"#)
            _ = try await Self.put(setup.client, "/admin/v1/push-triggers/\(remindTrigger)",
                                   #"{"event":"fanflow.push.flashsale_reminder","template":"\#(remind)"}"#)

            // The first attempt fails (503): the service says so, with the retry's job written.
            fake.inject(status: 503, times: 1)
            let change = Self.levelChange(member: member)
            let pushID = "\(trigger):\(change.id)"
            let outcome = try await setup.service.triggers.handle(change)
            guard case .fired(let fired) = outcome, fired.count == 1, case .attempted(pushID, .retryScheduled(1, _, "HTTP 503")) = fired[0].outcome else {
                Issue.record("not a scheduled retry: \(outcome)"); return
            }
            #expect(try await Self.status(database, pushID) == "pending")
            #expect(try await Self.jobStatuses(database, kind: PushJobs.retry, pushID: pushID) == ["scheduled"])

            // A payment reminder, made due now (it is written due 5 minutes before the pay-by time).
            let sale = TestEnvironment.unique("jfs")
            _ = try await PointsAdminTests.call(setup.client, .put, "/admin/v1/flash-sales/\(sale)", FlashSaleTests.sale(stock: 5, limit: 2))
            let reservation = FlashSaleStore.ReservationEvent(reservationID: UUID().uuidString, sale: sale, member: member, quantity: 1,
                                                              amount: 9900, payBy: Date().addingTimeInterval(900))
            #expect(try await FlashSaleStore(database: database).createOrders([reservation]) == 1)
            let reminders = try await database.query("UPDATE jobs SET due_at = now() WHERE kind = $1 AND payload->>'reservationId' = $2 RETURNING id",
                                                     [FlashSaleStore.reminderJob.rawValue, reservation.reservationID])
            let reminderJob = try #require(try reminders.first?.require("id", as: Int64.self))

            let runners = Self.jobRunners(setup, count: 1)
            try await FlashSaleTests.waitFor("the retry and the reminder sent") {
                let retried = try await Self.status(database, pushID)
                let reminded = try await Self.status(database, "\(remindTrigger):fanflow:job:\(reminderJob)")
                return (retried, reminded) == ("sent", "sent")
            }
            try await FlashSaleTests.waitFor("the jobs recorded done") {
                let retries = try await Self.jobStatuses(database, kind: PushJobs.retry, pushID: pushID)
                let reminder = try await database.query("SELECT status FROM jobs WHERE id = $1", [reminderJob]).first?.require("status", as: String.self)
                return retries == ["done"] && reminder == "done"
            }
            await Self.stop(runners)
            let sent = fake.sent.filter { $0.app == app && $0.toUser == "retry-fan" }
            #expect(sent.count == 2, "one level change, one reminder")
            #expect(sent.contains { "\($0.body["data"] ?? "")".contains("Now gold") })
            #expect(sent.contains { "\($0.body["data"] ?? "")".contains("Pay 99.00") })
            try await Task.sleep(for: .milliseconds(300))  // the tap's last deliveries
            #expect(try await Self.published(setup).isEmpty, "a push job went through the broker")
        }
    }

    @Test("a broadcast's batches and sends run in the push worker: every batch job and send job goes done, each member gets one push, nothing reaches the broker")
    func broadcastRunsInWorker() async throws {
        try await Self.withPushes(broadcastBatch: 10, scratch: true) { setup in
            let (client, fake, app, database) = (setup.client, setup.fake, setup.app, setup.database)
            let tag = TestEnvironment.unique("jvip"), code = TestEnvironment.unique("jnews")
            _ = try await Self.put(client, "/admin/v1/templates/\(code)", #"{"appId":"\#(app)","templateId":"TPL-JB","fields":{"first":"Hello"}}"#)
            let members = try await Self.tagged(25, app: app, tag: tag, database: database)
            let (status, json) = try await PointsAdminTests.call(client, .post, "/admin/v1/broadcasts", #"{"template":"\#(code)","tags":["\#(tag)"]}"#)
            #expect(status == .created)
            let id = try #require(json["id"] as? Int)

            let runners = Self.jobRunners(setup, count: 2)
            try await FlashSaleTests.waitFor("every push") { fake.sent.filter { $0.app == app }.count >= members.count }
            try await FlashSaleTests.waitFor("every job recorded") {
                try await database.query("""
                    SELECT count(*) AS n FROM jobs WHERE status <> 'done'
                      AND (payload->>'broadcastId' = $1 OR payload->>'pushId' LIKE $2)
                    """, [String(id), "broadcast:\(id):%"]).first?.require("n", as: Int.self) == 0
            }
            await Self.stop(runners)
            let batches = try await database.query("SELECT payload->>'after' AS after FROM jobs WHERE kind = $1 AND payload->>'broadcastId' = $2",
                                                   [PushJobs.broadcast.rawValue, String(id)])
            #expect(batches.count == 3, "25 members in batches of 10")
            let sends = try await database.query("SELECT count(*) AS n FROM jobs WHERE kind = $1 AND payload->>'pushId' LIKE $2",
                                                 [PushJobs.send.rawValue, "broadcast:\(id):%"])
            #expect(try sends.first?.require("n", as: Int.self) == members.count)
            let sent = fake.sent.filter { $0.app == app }
            #expect(sent.count == members.count && Set(sent.map(\.toUser)).count == members.count)
            let (_, view) = try await PointsAdminTests.call(client, .get, "/admin/v1/broadcasts/\(id)")
            #expect(view["status"] as? String == "fanned_out")
            #expect((view["counts"] as? [String: Int])?["sent"] == members.count)
            try await Task.sleep(for: .milliseconds(300))
            #expect(try await Self.published(setup).isEmpty, "a push job went through the broker")
        }
    }

    @Test("a fanflow.push.retry message an older scheduler left in the push queue is handled, once, even delivered twice")
    func legacyRetryMessage() async throws {
        try await Self.withPushes(maxAttempts: 3, scratch: true) { setup in
            let (fake, app, database) = (setup.fake, setup.app, setup.database)
            let trigger = try await Self.levelTrigger(setup)
            let fan = Identity(platform: .wechat, app: app, openid: "legacy-fan")
            let member = try #require(try await MemberDirectory(database: database).resolve([fan: nil])[fan])
            fake.inject(status: 503, times: 1)
            let change = Self.levelChange(member: member)
            let pushID = "\(trigger):\(change.id)"
            _ = try await setup.service.triggers.handle(change)
            #expect(try await Self.status(database, pushID) == "pending")

            // As an older scheduler did: the job claimed, published, recorded done.
            let claimed = try await JobStore(database: database).claim(owner: "old-scheduler", kinds: [PushJobs.retry], limit: 10, lease: .seconds(60),
                                                                       now: Date().addingTimeInterval(60))
            let job = try #require(claimed.first { $0.payload["pushId"] == .string(pushID) })
            try await JobStore(database: database).record([(job, .done)], owner: "old-scheduler")
            let message = job.legacyEnvelope()
            #expect(message.routingKey == "fanflow.push.retry")

            // Its message, twice (a publish retried after a lost confirm), on a queue of the test's
            // own: the shared push queue would hand it to other tests' consumers.
            let queue = QueueName(rawValue: TestEnvironment.unique("test.push.legacy"))
            let publisher = try await AMQPConnection(url: TestEnvironment.amqpURL)
            try await publisher.enableConfirms()
            try await publisher.declare(Topology(queues: [.init(name: queue, bindings: [], deliveryLimit: 10)]))
            for _ in 0..<2 {
                let outcome = await publisher.publish(exchange: "", routingKey: queue.rawValue, body: try message.encoded(),
                                                      properties: AMQPProperties(messageID: message.id, contentType: "application/json"))
                #expect(outcome == .acked)
            }
            var amqp = try AMQPConfiguration(url: TestEnvironment.amqpURL)
            amqp.connectionName = "test-push-legacy"
            let consumer = ConsumerService(amqp: amqp, queue: queue, prefetch: 10, handler: EnvelopeBatchHandler(setup.pool, logger: Self.logger),
                                           logger: Self.logger)
            let consuming = Task { try await consumer.run() }
            try await FlashSaleTests.waitFor("the legacy retry sent") { try await Self.status(database, pushID) == "sent" }
            try await FlashSaleTests.waitFor("both deliveries settled") { try await publisher.messageCount(queue: queue.rawValue) == 0 }
            try await Task.sleep(for: .milliseconds(300))
            consuming.cancel()
            _ = await consuming.result
            #expect(fake.sent.filter { $0.app == app && $0.toUser == "legacy-fan" }.count == 1, "sent twice")
            #expect(try await publisher.messageCount(queue: queue.deadLetter.rawValue) == 0, "the second delivery was dead-lettered")
            let attempts = try await database.query("SELECT attempts FROM pushes WHERE id = $1", [pushID]).first?.require("attempts", as: Int.self)
            #expect(attempts == 2)
            try await publisher.deleteQueue(queue.rawValue)
            try await publisher.deleteQueue(queue.deadLetter.rawValue)
            await publisher.close()
        }
    }
}
