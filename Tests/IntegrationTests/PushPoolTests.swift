import AMQPClient
import AsyncHTTPClient
import Contracts
import FakePlatform
import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import Loyalty
import PostgresClient
import Pushes
import RedisClient
import Runtime
import Scheduler
import Testing
import Workers

/// The push pool against the fake WeChat: templates and triggers through the admin API, follows
/// through signed webhooks and the push queue, outcomes by error code, retries through scheduler
/// jobs, receipts. Serialized: both tests consume `fanflow.push`.
@Suite("Push pool", .serialized)
struct PushPoolTests {
    static let logger = Logger(label: "test.pushpool")

    /// A live gateway, a fake WeChat on its own port with `app` registered in both, and a push pool
    /// built as `fanflow worker --pool push` builds it (rate `rate` per second).
    static func withPushes(rate: Int = 0, maxAttempts: Int = 6,
                           _ body: @Sendable (any TestClientProtocol, FakeWeChat, PushPool, String, PostgresPool) async throws -> Void) async throws {
        let fake = FakeWeChat()
        let app = TestEnvironment.unique("wxp"), secret = "secret-\(app)"
        fake.register(app: app, secret: secret)
        let router = Router()
        fake.addRoutes(to: router)
        let database = PostgresPool(url: TestEnvironment.databaseURL, maximumConnections: 4)
        let redis = try await RedisPool(url: TestEnvironment.redisURL, size: 2)
        do {
            try await Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0))).test(.live) { platform in
                let port = try #require(platform.port)
                let client = WeChatClient(http: HTTPClient.shared, base: "http://127.0.0.1:\(port)")
                let broker = AccessTokenBroker(redis: redis, client: client, secrets: { $0 == app ? secret : nil }, logger: logger)
                let pool = PushPool(store: PushStore(database: database), sender: PushSender(client: client, broker: broker),
                                    pace: PushPace(redis: redis, ratePerSecond: rate, dailyQuota: 100_000), jobs: JobStore(database: database),
                                    logger: logger, maxAttempts: maxAttempts, baseBackoffSeconds: 0.2)
                try await GatewayHarness.run { gateway, _, _ in
                    try await GatewayHarness.register(gateway, "wechat", app, ["token": "tok-\(app)", "appSecret": secret])
                    try await body(gateway, fake, pool, app, database)
                }
            }
        } catch {
            await redis.close()
            await database.close()
            throw error
        }
        await redis.close()
        await database.close()
    }

    static func put(_ client: any TestClientProtocol, _ path: String, _ body: String) async throws -> (HTTPResponse.Status, [String: Any]) {
        try await PointsAdminTests.call(client, .put, path, body)
    }

    static func template(app: String, id: String, first: String) -> String {
        #"{"appId":"\#(app)","templateId":"\#(id)","fields":{"first":"\#(first)","remark":"{{#scene}}via {{scene}}{{/scene}}{{^scene}}welcome{{/scene}}"},"url":"https://brand.example/m/{{openid}}"}"#
    }

    static func subscribe(_ client: any TestClientProtocol, app: String, openid: String, scene: String?) async throws {
        let key = scene.map { "<EventKey><![CDATA[qrscene_\($0)]]></EventKey>" } ?? ""
        let xml = "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[\(openid)]]></FromUserName><CreateTime>\(GatewayWebhookTests.now)</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe]]></Event>\(key)</xml>"
        try await client.execute(uri: "/wechat/\(app)?\(GatewayWebhookTests.wechatQuery(token: "tok-\(app)"))", method: .post,
                                 body: ByteBuffer(string: xml)) { response in #expect(response.status == .ok) }
    }

    static func consume(_ pool: PushPool) throws -> Task<Void, any Error> {
        var amqp = try AMQPConfiguration(url: TestEnvironment.amqpURL)
        amqp.connectionName = "test-push"
        let consumer = ConsumerService(amqp: amqp, queue: .push, prefetch: 100, handler: EnvelopeBatchHandler(pool, logger: logger), logger: logger)
        return Task { try await consumer.run() }
    }

    static func status(_ database: PostgresPool, _ id: String) async throws -> String? {
        try await database.query("SELECT status FROM pushes WHERE id = $1", [id]).first?.string("status")
    }

    @Test("templates checked when saved; a welcome per QR scene through a signed follow and the push queue; receipts; the pushes view")
    func welcomes() async throws {
        try await Self.withPushes { client, fake, pool, app, database in
            let welcome = TestEnvironment.unique("welcome"), store = TestEnvironment.unique("welcome-store")
            // Refused when saved: a name FanFlow does not fill in, broken Mustache, partials.
            var (status, json) = try await Self.put(client, "/admin/v1/templates/\(welcome)",
                                                    Self.template(app: app, id: "TPL-W", first: "Hi {{nick}}"))
            #expect((status, FlashSaleTests.code(json)) == (.badRequest, "invalid_template"))
            #expect(SchedulerAdminTests.error(json, "message")?.contains("{{nick}}") == true)
            (status, json) = try await Self.put(client, "/admin/v1/templates/\(welcome)", Self.template(app: app, id: "TPL-W", first: "{{#level}}open"))
            #expect((status, FlashSaleTests.code(json)) == (.badRequest, "invalid_template"))
            (status, json) = try await Self.put(client, "/admin/v1/templates/\(welcome)", Self.template(app: app, id: "TPL-W", first: "{{> other}}"))
            #expect((status, FlashSaleTests.code(json)) == (.badRequest, "invalid_template"))

            (status, _) = try await Self.put(client, "/admin/v1/templates/\(welcome)",
                                             Self.template(app: app, id: "TPL-W", first: "{{#nickname}}Hi {{nickname}}{{/nickname}}{{^nickname}}Hi there{{/nickname}}"))
            #expect(status == .created)
            (status, _) = try await Self.put(client, "/admin/v1/templates/\(store)", Self.template(app: app, id: "TPL-S", first: "Welcome to our store"))
            #expect(status == .created)
            (status, json) = try await PointsAdminTests.call(client, .get, "/admin/v1/templates/\(store)")
            #expect(json["templateId"] as? String == "TPL-S")

            let general = TestEnvironment.unique("t-welcome"), scene = TestEnvironment.unique("t-store")
            (status, json) = try await Self.put(client, "/admin/v1/push-triggers/\(general)", #"{"event":"wechat.subscribe","template":"nope-\#(welcome)"}"#)
            #expect((status, FlashSaleTests.code(json)) == (.conflict, "unknown_template"))
            (status, json) = try await Self.put(client, "/admin/v1/push-triggers/\(general)", #"{"event":"wechat.nothing","template":"\#(welcome)"}"#)
            #expect((status, FlashSaleTests.code(json)) == (.badRequest, "invalid_trigger"))
            (status, _) = try await Self.put(client, "/admin/v1/push-triggers/\(general)", #"{"event":"wechat.subscribe","template":"\#(welcome)"}"#)
            #expect(status == .created)
            (status, _) = try await Self.put(client, "/admin/v1/push-triggers/\(scene)",
                                             #"{"event":"wechat.subscribe","when":{"scene":"store42"},"template":"\#(store)"}"#)
            #expect(status == .created)
            (status, json) = try await PointsAdminTests.call(client, .delete, "/admin/v1/templates/\(store)")
            #expect((status, FlashSaleTests.code(json)) == (.conflict, "template_in_use"))

            let consumer = try Self.consume(pool)
            try await Self.subscribe(client, app: app, openid: "fan-store", scene: "store42")
            try await Self.subscribe(client, app: app, openid: "fan-plain", scene: nil)
            try await FlashSaleTests.waitFor("two welcomes") { fake.sent.filter { $0.app == app }.count >= 2 }
            try await Task.sleep(for: .milliseconds(300))
            let sent = fake.sent.filter { $0.app == app }
            #expect(sent.count == 2, "one welcome per follow, the most specific trigger only")
            let byUser = Dictionary(uniqueKeysWithValues: sent.map { ($0.toUser, $0) })
            #expect(byUser["fan-store"]?.templateID == "TPL-S")
            #expect(byUser["fan-plain"]?.templateID == "TPL-W")
            let plainData = "\(byUser["fan-plain"]?.body["data"] ?? "")"
            #expect(plainData.contains("Hi there") && plainData.contains("welcome"), "\(plainData)")
            #expect("\(byUser["fan-store"]?.body["data"] ?? "")".contains("via store42"))
            #expect("\(byUser["fan-plain"]?.body["url"] ?? "")" == "https://brand.example/m/fan-plain")

            // The platform's receipt for the store welcome.
            let storeID = "\(scene):" // push ids start with the trigger code
            let msgID = try #require(byUser["fan-store"]?.msgID)
            let receipt = "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[fan-store]]></FromUserName><CreateTime>\(GatewayWebhookTests.now)</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event><MsgID>\(msgID)</MsgID><Status><![CDATA[success]]></Status></xml>"
            try await client.execute(uri: "/wechat/\(app)?\(GatewayWebhookTests.wechatQuery(token: "tok-\(app)"))", method: .post,
                                     body: ByteBuffer(string: receipt)) { response in #expect(response.status == .ok) }
            try await FlashSaleTests.waitFor("the receipt") {
                try await database.query("SELECT 1 FROM pushes WHERE id LIKE $1 AND status = 'delivered'", [storeID + "%"]).count == 1
            }
            (status, json) = try await PointsAdminTests.call(client, .get, "/admin/v1/pushes?status=delivered&limit=500")
            let delivered = (json["pushes"] as? [[String: Any]] ?? []).filter { $0["appId"] as? String == app }
            #expect(delivered.count == 1)
            #expect(delivered.first?["msgId"] as? Int == Int(msgID))
            (status, json) = try await PointsAdminTests.call(client, .get, "/admin/v1/pushes?status=bogus")
            #expect((status, FlashSaleTests.code(json)) == (.badRequest, "invalid_status"))

            consumer.cancel()
            _ = await consumer.result
            for trigger in [general, scene] { _ = try await PointsAdminTests.call(client, .delete, "/admin/v1/push-triggers/\(trigger)") }
        }
    }

    @Test("43004 is recorded and not retried; 5xx retried through scheduler jobs with growing delays, then dead and dead-lettered; a level change reaches the member's openid")
    func outcomes() async throws {
        try await Self.withPushes(maxAttempts: 3) { client, fake, pool, app, database in
            let code = TestEnvironment.unique("level")
            _ = try await Self.put(client, "/admin/v1/templates/\(code)",
                                   #"{"appId":"\#(app)","templateId":"TPL-L","fields":{"first":"Now {{level}} (was {{previousLevel}})","keyword1":"{{balance}}"}}"#)
            let trigger = TestEnvironment.unique("t-level")
            _ = try await Self.put(client, "/admin/v1/push-triggers/\(trigger)", #"{"event":"fanflow.member.level_changed","template":"\#(code)"}"#)
            let ids = try await MemberDirectory(database: database).resolve([
                Identity(platform: .wechat, app: app, openid: "gold-fan"): nil, Identity(platform: .wechat, app: app, openid: "gone-fan"): nil,
                Identity(platform: .wechat, app: app, openid: "flaky-fan"): nil,
            ])
            func levelChange(_ openid: String) throws -> Envelope {
                let member = try #require(ids[Identity(platform: .wechat, app: app, openid: openid)])
                return Envelope(id: "fanflow:level:\(member):gold:\(UUID().uuidString)", platform: .fanflow, app: "", kind: .levelChanged,
                                subject: .init(), occurredAt: Date(), receivedAt: Date(),
                                attributes: ["memberId": .integer(member), "from": "silver", "to": "gold"])
            }
            // Sent: rendered for the member, on their openid of the template's app.
            let gold = try levelChange("gold-fan")
            try await pool.process([gold])
            #expect(fake.sent.last?.toUser == "gold-fan")
            #expect("\(fake.sent.last?.body["data"] ?? "")".contains("Now gold (was silver)"))
            #expect(try await Self.status(database, "\(trigger):\(gold.id)") == "sent")
            // Redelivered: not sent again.
            try await pool.process([gold])
            #expect(fake.sent.filter { $0.toUser == "gold-fan" }.count == 1)

            // Unsubscribed: recorded, one call, no retry job.
            fake.refuse(openid: "gone-fan", errcode: 43004)
            let gone = try levelChange("gone-fan")
            try await pool.process([gone])
            #expect(try await Self.status(database, "\(trigger):\(gone.id)") == "unsubscribed")
            let retryJobs = try await JobStore(database: database).list(kind: PushPool.retryJob.rawValue, limit: 500)
            #expect(!retryJobs.contains { $0.payload["pushId"] == .string("\(trigger):\(gone.id)") })

            // 5xx three times: two retries at growing delays, then dead, its retry message refused (dead-lettered).
            fake.inject(status: 503, times: 3)
            let flaky = try levelChange("flaky-fan")
            let pushID = "\(trigger):\(flaky.id)"
            try await pool.process([flaky])
            var delays: [TimeInterval] = []
            for attempt in 1...2 {
                let job = try #require(try await JobStore(database: database).list(kind: PushPool.retryJob.rawValue, limit: 500)
                    .first { $0.payload["pushId"] == .string(pushID) && $0.payload["pushAttempt"] == .integer(Int64(attempt)) })
                delays.append(job.dueAt.timeIntervalSince(job.createdAt))
                #expect(try await Self.status(database, pushID) == "pending")
                let retry = PublishJobHandler.envelope(for: job)
                #expect(retry.routingKey == "fanflow.push.retry")
                if attempt < 2 {
                    try await pool.process([retry])
                    try await pool.process([retry])  // a redelivered job sends nothing more
                } else {
                    await #expect(throws: EventRefused.self) { try await pool.process([retry]) }
                }
            }
            #expect(delays[0] >= 0.1 && delays[0] <= 0.25 && delays[1] >= 0.2 && delays[1] <= 0.45, "\(delays)")
            #expect(try await Self.status(database, pushID) == "dead")
            let dead = try await database.query("SELECT attempts, last_error FROM pushes WHERE id = $1", [pushID]).first
            #expect(dead?.int("attempts") == 3)
            #expect(dead?.string("last_error") == "HTTP 503")
            #expect(fake.sent.filter { $0.toUser == "flaky-fan" }.isEmpty)

            _ = try await PointsAdminTests.call(client, .delete, "/admin/v1/push-triggers/\(trigger)")
            try await database.query("DELETE FROM jobs WHERE kind = $1 AND payload->>'pushId' LIKE $2", [PushPool.retryJob.rawValue, trigger + ":%"])
        }
    }
}
