import AMQPClient
import AsyncHTTPClient
import Contracts
import FakePlatform
import FlashSales
import Foundation
import Hummingbird
import HummingbirdTesting
import Jobs
import Logging
import Loyalty
import Members
import Platforms
import PostgresClient
import Pushes
import RedisClient
import Runtime
import Scheduler
import Testing
import Workers

/// The push pool against the fake WeChat: templates and triggers through the admin API, follows
/// through signed webhooks and the push queue, outcomes by error code, retries and broadcasts
/// through push jobs, receipts. Serialized: several tests consume `fanflow.push`.
@Suite("Push pool", .serialized)
struct PushPoolTests {
    static let logger = Logger(label: "test.pushpool")

    /// A live gateway, a fake WeChat on its own port with `app` registered in both, and a push pool
    /// built as `fanflow worker --pool push` builds it (rate `rate` per second).
    struct Setup: Sendable {
        let client: any TestClientProtocol
        let fake: FakeWeChat
        let pool: PushPool
        /// The service behind `pool`, for the push worker's job runners (``PushPoolTests/jobRunners(_:count:)``).
        let service: PushService
        let app: String
        /// A fake Alipay gateway on the same port, with `alipayApp` registered in it and in the pool's keyring.
        let alipay: FakeAlipay
        let alipayApp: String
        let database: PostgresPool
        /// The fake platform's address, for a worker process of the test's.
        let base: String
        /// The database's URL (a scratch one when asked for), for a worker process of the test's.
        let databaseURL: String
        /// Every envelope published to `fanflow.events` during the test.
        let tap: EventTap
    }

    /// `scratch`: the gateway and the pool on a database of the test's own, for tests that run job
    /// runners: a runner claims every due push job, and on the shared database it would take other
    /// tests' jobs (and their schedulers ours).
    static func withPushes(rate: Int = 0, maxAttempts: Int = 6, broadcastBatch: Int = 1000, scratch: Bool = false,
                           _ body: @Sendable (Setup) async throws -> Void) async throws {
        guard !scratch else {
            try await ScratchDatabase.with { _, url in
                try await withPushes(rate: rate, maxAttempts: maxAttempts, broadcastBatch: broadcastBatch, databaseURL: url, body)
            }
            return
        }
        try await withPushes(rate: rate, maxAttempts: maxAttempts, broadcastBatch: broadcastBatch, databaseURL: TestEnvironment.databaseURL, body)
    }

    static func withPushes(rate: Int, maxAttempts: Int, broadcastBatch: Int, databaseURL: String,
                           _ body: @Sendable (Setup) async throws -> Void) async throws {
        let fake = FakeWeChat()
        let app = TestEnvironment.unique("wxp"), secret = "secret-\(app)"
        fake.register(app: app, secret: secret)
        let alipay = try FakeAlipay()
        let alipayApp = "2021" + String(UInt64.random(in: 100_000_000_000...999_999_999_999))
        let alipayKeys = try PushPlatformTests.appKeys()
        try alipay.register(app: alipayApp, publicKey: alipayKeys.publicKey)
        let router = Router()
        fake.addRoutes(to: router)
        alipay.addRoutes(to: router)
        // As many connections as `fanflow worker --pool push=2` opens (16 a consumer, with its job runner).
        let database = PostgresPool(url: databaseURL, maximumConnections: 32)
        let redis = try await RedisPool(url: TestEnvironment.redisURL, size: 2)
        do {
            try await Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0))).test(.live) { platform in
                let port = try #require(platform.port)
                let client = WeChatClient(http: HTTPClient.shared, base: "http://127.0.0.1:\(port)")
                let broker = AccessTokenBroker(redis: redis, client: client, secrets: { $0 == app ? secret : nil }, logger: logger)
                let keyring = AlipayKeyring { candidate in
                    candidate == alipayApp ? try AlipayCrypto(alipayPublicKey: alipay.alipayPublicKey, appPrivateKey: alipayKeys.privateKey) : nil
                }
                let sender = PushSender(client: client, broker: broker, alipay: AlipayClient(http: HTTPClient.shared, base: "http://127.0.0.1:\(port)"),
                                        alipayKeys: keyring)
                let service = PushPool.service(database: database, sender: sender,
                                               pace: PushPace(redis: redis, ratePerSecond: rate, dailyQuota: 100_000), logger: logger,
                                               policy: PushDelivery.RetryPolicy(maxAttempts: maxAttempts, baseBackoffSeconds: 0.2),
                                               broadcastBatch: broadcastBatch)
                let pool = PushPool(service: service, logger: logger)
                try await GatewayHarness.run(["FANFLOW_DATABASE_URL": databaseURL]) { gateway, tap, _ in
                    try await GatewayHarness.register(gateway, "wechat", app, ["token": "tok-\(app)", "appSecret": secret])
                    try await body(Setup(client: gateway, fake: fake, pool: pool, service: service, app: app, alipay: alipay, alipayApp: alipayApp,
                                         database: database, base: "http://127.0.0.1:\(port)", databaseURL: databaseURL, tap: tap))
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
        try await Self.withPushes { setup in
            let (client, fake, pool, app, database) = (setup.client, setup.fake, setup.pool, setup.app, setup.database)
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
            #expect(delivered.first?["memberId"] as? Int != nil, "a new follower's welcome belongs to the member the push pool made")
            (status, json) = try await PointsAdminTests.call(client, .get, "/admin/v1/pushes?status=bogus")
            #expect((status, FlashSaleTests.code(json)) == (.badRequest, "invalid_status"))

            consumer.cancel()
            _ = await consumer.result
            for trigger in [general, scene] { _ = try await PointsAdminTests.call(client, .delete, "/admin/v1/push-triggers/\(trigger)") }
        }
    }

    @Test("43004 is recorded and not retried; 45009 deferred to the quota reset, then sent; 5xx retried through scheduler jobs with growing delays, then dead (recorded, not dead-lettered); a level change reaches the member's openid")
    func outcomes() async throws {
        try await Self.withPushes(maxAttempts: 3) { setup in
            let (client, fake, pool, app, database) = (setup.client, setup.fake, setup.pool, setup.app, setup.database)
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
            let retryJobs = try await JobStore(database: database).list(kind: PushJobs.retry.rawValue, limit: 500)
            #expect(!retryJobs.contains { $0.payload["pushId"] == .string("\(trigger):\(gone.id)") })

            // Quota spent (45009): deferred to just after midnight in Beijing; once it resets, the retry sends it.
            fake.setQuota(app: app, limit: 0)
            let quota = try levelChange("gold-fan")
            let quotaID = "\(trigger):\(quota.id)"
            try await pool.process([quota])
            #expect(try await Self.status(database, quotaID) == "deferred")
            let deferred = try #require(try await JobStore(database: database).list(kind: PushJobs.retry.rawValue, limit: 500)
                .first { $0.payload["pushId"] == .string(quotaID) })
            let midnight = BeijingTime.nextMidnight(after: Date())
            #expect(deferred.dueAt >= midnight && deferred.dueAt <= midnight.addingTimeInterval(600))
            fake.setQuota(app: app, limit: nil)
            try await pool.process([deferred.legacyEnvelope()])
            #expect(try await Self.status(database, quotaID) == "sent")
            #expect(fake.sent.filter { $0.toUser == "gold-fan" }.count == 2)

            // 5xx three times: two retries at growing delays, then dead, its retry message acked (not dead-lettered).
            fake.inject(status: 503, times: 3)
            let flaky = try levelChange("flaky-fan")
            let pushID = "\(trigger):\(flaky.id)"
            // Each retry is due base × 2^attempt × [0.5, 1] (base 0.2 s here) after the failure, which
            // happened between `before` and `after`.
            var before = Date()
            try await pool.process([flaky])
            var after = Date()
            for attempt in 1...2 {
                let job = try #require(try await JobStore(database: database).list(kind: PushJobs.retry.rawValue, limit: 500)
                    .first { $0.payload["pushId"] == .string(pushID) && $0.payload["pushAttempt"] == .integer(Int64(attempt)) })
                let full = 0.2 * pow(2, Double(attempt - 1))
                #expect(job.dueAt >= before.addingTimeInterval(full / 2 - 0.01) && job.dueAt <= after.addingTimeInterval(full + 0.01),
                        "attempt \(attempt): due \(job.dueAt.timeIntervalSince(before)) s after the failing call began")
                #expect(try await Self.status(database, pushID) == "pending")
                let retry = job.legacyEnvelope()
                #expect(retry.routingKey == "fanflow.push.retry")
                before = Date()
                if attempt < 2 {
                    try await pool.process([retry])
                    after = Date()
                    try await pool.process([retry])  // a redelivered job sends nothing more
                } else {
                    try await pool.process([retry])
                    try await pool.process([retry])  // redelivered after the push died: nothing sent, nothing refused
                }
            }
            #expect(try await Self.status(database, pushID) == "dead")
            let dead = try await database.query("SELECT attempts, last_error FROM pushes WHERE id = $1", [pushID]).first
            #expect(dead?.int("attempts") == 3)
            #expect(dead?.string("last_error") == "HTTP 503")
            #expect(fake.sent.filter { $0.toUser == "flaky-fan" }.isEmpty)

            // Today's figures, summed in Redis for every worker, through the admin API and /metrics.
            let (status, json) = try await PointsAdminTests.call(client, .get, "/admin/v1/push-stats")
            #expect(status == .ok)
            let today = try #require((json["apps"] as? [[String: Any]])?.first { $0["appId"] as? String == app })
            #expect(today["outcomes"] as? [String: Int] == ["sent": 2, "unsubscribed": 1, "deferred": 1, "retried": 2, "dead": 1])
            #expect(today["used"] as? Int == 7, "every call that passed the pace counts against the quota")
            #expect(today["quotaLeft"] as? Int == (json["dailyQuota"] as? Int ?? 0) - 7)
            try await client.execute(uri: "/metrics", method: .get) { response in
                let text = String(buffer: response.body)
                #expect(text.contains("fanflow_push_outcomes_today{app=\"\(app)\",outcome=\"dead\"} 1"))
                #expect(text.contains("fanflow_push_quota_left{app=\"\(app)\"} "))
            }

            _ = try await PointsAdminTests.call(client, .delete, "/admin/v1/push-triggers/\(trigger)")
            try await database.query("DELETE FROM jobs WHERE kind = $1 AND payload->>'pushId' LIKE $2", [PushJobs.retry.rawValue, trigger + ":%"])
        }
    }

    /// `count` members with an identity on `app`, tagged `tag`.
    static func tagged(_ count: Int, app: String, tag: String, database: PostgresPool) async throws -> [Int64] {
        var ids: [Int64] = []
        for chunk in stride(from: 0, to: count, by: 2000) {
            let identities = (chunk..<min(chunk + 2000, count)).map { Identity(platform: .wechat, app: app, openid: "\(tag)-\($0)") }
            let resolved = try await MemberDirectory(database: database).resolve(Dictionary(uniqueKeysWithValues: identities.map { ($0, String?.none) }))
            ids += identities.compactMap { resolved[$0] }
        }
        try await database.query("INSERT INTO member_tags (member_id, tag) SELECT unnest($1::bigint[]), $2 ON CONFLICT DO NOTHING",
                                 [PostgresArray(ids.map(String.init)), tag])
        return ids
    }

    /// The push worker's job runners as `fanflow worker --pool push=<count> --prefetch <limit>`
    /// starts them, running until cancelled. 100 wide, as the test consumers' prefetch: every
    /// send of a batch polls the pace while it waits, and 1,000 of them would cost this machine's
    /// two cores more than the pace measures.
    static func jobRunners(_ setup: Setup, count: Int = 2, limit: Int = 100) -> [Task<Void, any Error>] {
        PushPool.jobs(setup.service, runners: count, limit: limit).services(store: JobStore(database: setup.database), logger: logger)
            .map { runner in Task { try await runner.run() } }
    }

    static func stop(_ tasks: [Task<Void, any Error>]) async {
        for task in tasks { task.cancel() }
        for task in tasks { _ = await task.result }
    }

    @Test("a broadcast to a tag of 10,000 members sends each one push, at the configured pace (within 5%); progress and counts; cancel")
    func broadcast() async throws {
        let rate = 100, audience = 10_000
        try await Self.withPushes(rate: rate, scratch: true) { setup in
            let (client, fake, app, database) = (setup.client, setup.fake, setup.app, setup.database)
            let tag = TestEnvironment.unique("vip"), code = TestEnvironment.unique("news")
            _ = try await Self.put(client, "/admin/v1/templates/\(code)",
                                   #"{"appId":"\#(app)","templateId":"TPL-N","fields":{"first":"Hi {{#nickname}}{{nickname}}{{/nickname}}{{^nickname}}friend{{/nickname}}","keyword1":"{{balance}}"}}"#)
            let members = try await Self.tagged(audience, app: app, tag: tag, database: database)
            #expect(members.count == audience)
            // Tagged but not on this app, and on this app but not tagged: neither receives it.
            _ = try await Self.tagged(5, app: TestEnvironment.unique("wx-other"), tag: tag, database: database)
            _ = try await MemberDirectory(database: database).resolve([Identity(platform: .wechat, app: app, openid: "untagged"): nil])

            var (status, json) = try await PointsAdminTests.call(client, .post, "/admin/v1/broadcasts", #"{"template":"\#(code)","tags":[]}"#)
            #expect((status, FlashSaleTests.code(json)) == (.badRequest, "invalid_broadcast"))
            (status, json) = try await PointsAdminTests.call(client, .post, "/admin/v1/broadcasts",
                                                             #"{"template":"\#(code)","tags":["\#(tag)","\#(tag)-none"]}"#)
            #expect(status == .created)
            let id = try #require(json["id"] as? Int)

            // Two job runners, as `--pool push=2` runs them: while one records its batch and claims
            // the next, the other sends, so no batch boundary stalls the pace.
            let runners = Self.jobRunners(setup, count: 2)
            try await FlashSaleTests.waitFor("every push", timeout: .seconds(240)) { fake.sent.filter { $0.app == app }.count >= audience }
            try await Task.sleep(for: .milliseconds(500))
            let sent = fake.sent.filter { $0.app == app }
            #expect(sent.count == audience)
            #expect(Set(sent.map(\.toUser)).count == audience, "a member got two")
            #expect(!sent.contains { $0.toUser == "untagged" })
            #expect("\(sent.first?.body["data"] ?? "")".contains("Hi friend"))
            let times = sent.map(\.at).sorted()
            let measured = Double(times.count - 1) / (times.last ?? Date()).timeIntervalSince(times.first ?? Date())
            // Where a shortfall comes from: pauses longer than the bucket's 250 ms are time the pace cannot make up.
            let gaps = zip(times.dropFirst(), times).map { $0.timeIntervalSince($1) }.sorted(by: >)
            Self.logger.notice("broadcast pace", metadata: ["measured": "\(measured)", "configured": "\(rate)",
                                                            "longestGaps": "\(gaps.prefix(5).map { Int($0 * 1000) })",
                                                            "pausedOver250ms": "\(gaps.filter { $0 > 0.25 }.reduce(0, +))"])
            #expect(abs(measured - Double(rate)) / Double(rate) <= 0.05, "measured \(measured)/s against \(rate)/s")

            (status, json) = try await PointsAdminTests.call(client, .get, "/admin/v1/broadcasts/\(id)")
            #expect(json["status"] as? String == "fanned_out")
            #expect(json["recipients"] as? Int == audience)
            #expect((json["counts"] as? [String: Int])?["sent"] == audience)
            (status, json) = try await PointsAdminTests.call(client, .post, "/admin/v1/broadcasts/\(id)/cancel")
            #expect(status == .ok)
            (status, json) = try await PointsAdminTests.call(client, .post, "/admin/v1/broadcasts/\(id)/cancel")
            #expect((status, FlashSaleTests.code(json)) == (.conflict, "already_cancelled"))
            (status, json) = try await PointsAdminTests.call(client, .get, "/admin/v1/broadcasts/999999999")
            #expect((status, FlashSaleTests.code(json)) == (.notFound, "unknown_broadcast"))

            await Self.stop(runners)
            #expect(try await Self.published(setup).isEmpty, "a push job went through the broker")
        }
    }

    @Test("a push worker process SIGKILLed mid-broadcast and started again: no member gets two, and all but the sends it was cut off in arrive")
    func workerKilledMidBroadcast() async throws {
        guard FileManager.default.isExecutableFile(atPath: SchedulerProcessTests.binary.path) else {
            Issue.record("no fanflow binary at \(SchedulerProcessTests.binary.path): build it first"); return
        }
        try await Self.withPushes(scratch: true) { setup in
            let (client, fake, app, database) = (setup.client, setup.fake, setup.app, setup.database)
            let tag = TestEnvironment.unique("vip"), code = TestEnvironment.unique("news")
            _ = try await Self.put(client, "/admin/v1/templates/\(code)", #"{"appId":"\#(app)","templateId":"TPL-K","fields":{"first":"Hello"}}"#)
            let count = 3000
            _ = try await Self.tagged(count, app: app, tag: tag, database: database)
            let (status, json) = try await PointsAdminTests.call(client, .post, "/admin/v1/broadcasts", #"{"template":"\#(code)","tags":["\#(tag)"]}"#)
            #expect(status == .created)
            let id = try #require(json["id"] as? Int)
            // No scheduler: the worker runs the broadcast's jobs itself.
            let environment = ["FANFLOW_WECHAT_API_BASE": setup.base, "FANFLOW_PUSH_RATE_PER_APP": "300", "FANFLOW_DATABASE_URL": setup.databaseURL]
            let first = try FlashSaleProcessTests.start(["worker", "--pool", "push=1", "--prefetch", "50"], environment: environment, log: "push-worker-1")
            try await FlashSaleTests.waitFor("some pushes", timeout: .seconds(60)) { fake.sent.filter { $0.app == app }.count >= 600 }
            FlashSaleProcessTests.kill(first)
            #expect(fake.sent.filter { $0.app == app }.count < count, "the worker finished before it was killed")
            let second = try FlashSaleProcessTests.start(["worker", "--pool", "push=1", "--prefetch", "50"], environment: environment, log: "push-worker-2")
            func settled() async throws -> (sent: Int, sending: Int) {
                let rows = try await database.query("SELECT status, count(*) AS n FROM pushes WHERE broadcast_id = $1 GROUP BY status", [id])
                let counts = Dictionary(uniqueKeysWithValues: rows.compactMap { row in row.string("status").map { ($0, row.int("n") ?? 0) } })
                return (counts["sent"] ?? 0, counts["sending"] ?? 0)
            }
            try await FlashSaleTests.waitFor("every push settled", timeout: .seconds(90)) {
                let (sent, sending) = try await settled()
                return sent + sending == count
            }
            try await Task.sleep(for: .milliseconds(500))
            FlashSaleProcessTests.stop(second)

            let sent = fake.sent.filter { $0.app == app }
            #expect(Set(sent.map(\.toUser)).count == sent.count, "a member got two pushes")
            let (recorded, cutOff) = try await settled()
            // Cut off mid-call: at most the sends the killed worker had in flight, each arrived at most once.
            #expect(cutOff <= 50)
            #expect(sent.count >= recorded && sent.count <= recorded + cutOff)
        }
    }


    @Test("a flash-sale reservation gets its payment reminder 5 minutes before its pay-by time, rendered; a paid one gets none")
    func reservationReminder() async throws {
        try await Self.withPushes { setup in
            let (client, fake, pool, app, database) = (setup.client, setup.fake, setup.pool, setup.app, setup.database)
            let code = TestEnvironment.unique("remind"), trigger = TestEnvironment.unique("t-remind")
            _ = try await Self.put(client, "/admin/v1/templates/\(code)",
                                   #"{"appId":"\#(app)","templateId":"TPL-R","fields":{"first":"Pay {{amountYuan}} for {{quantity}} of {{campaign}} by {{payBy}}"}}"#)
            let (status, _) = try await Self.put(client, "/admin/v1/push-triggers/\(trigger)",
                                                 #"{"event":"fanflow.push.flashsale_reminder","template":"\#(code)"}"#)
            #expect(status == .created)
            let sale = TestEnvironment.unique("fs")
            _ = try await PointsAdminTests.call(client, .put, "/admin/v1/flash-sales/\(sale)", FlashSaleTests.sale(stock: 5, limit: 2))
            let ids = try await MemberDirectory(database: database).resolve([Identity(platform: .wechat, app: app, openid: "buyer"): nil])
            let member = try #require(ids.values.first)
            let payBy = Date().addingTimeInterval(900)
            let store = FlashSaleStore(database: database)
            let open = FlashSaleStore.ReservationEvent(reservationID: UUID().uuidString, sale: sale, member: member, quantity: 2, amount: 19800, payBy: payBy)
            let paid = FlashSaleStore.ReservationEvent(reservationID: UUID().uuidString, sale: sale, member: member, quantity: 1, amount: 9900, payBy: payBy)
            #expect(try await store.createOrders([open, paid]) == 2)
            guard case .paid = try await store.pay(reservationID: paid.reservationID, amount: 9900, paidAt: Date(), reference: "t") else {
                Issue.record("not paid"); return
            }
            let jobs = try await JobStore(database: database).list(kind: FlashSaleStore.reminderJob.rawValue, limit: 500)
            for reservation in [open, paid] {
                let job = try #require(jobs.first { $0.payload["reservationId"] == .string(reservation.reservationID) })
                #expect(abs(job.dueAt.timeIntervalSince(payBy.addingTimeInterval(-300))) < 1)
                let envelope = job.legacyEnvelope()
                #expect(envelope.routingKey == "fanflow.push.flashsale_reminder")
                try await pool.process([envelope])
            }
            let sent = fake.sent.filter { $0.app == app }
            #expect(sent.count == 1, "the paid reservation got a reminder too")
            #expect("\(sent.first?.body["data"] ?? "")".contains("Pay 198.00 for 2 of \(sale) by \(BeijingTime.minutes(payBy))"))
            _ = try await PointsAdminTests.call(client, .delete, "/admin/v1/push-triggers/\(trigger)")
            try await database.query("DELETE FROM jobs WHERE kind IN ('flashsale.expire', 'push.flashsale_reminder') AND payload->>'saleId' = $1", [sale])
        }
    }

    @Test("points granted (every rule's share of one event summed) and purchase points matured reach the member through the outbox, relay and push queue, once each")
    func pointsNews() async throws {
        try await Self.withPushes { setup in
            let (client, fake, app, database) = (setup.client, setup.fake, setup.app, setup.database)
            let code = TestEnvironment.unique("pts")
            _ = try await Self.put(client, "/admin/v1/templates/\(code)",
                                   #"{"appId":"\#(app)","templateId":"TPL-P","fields":{"first":"{{event}}: +{{points}}","keyword1":"{{balance}}"}}"#)
            let granted = TestEnvironment.unique("t-granted"), matured = TestEnvironment.unique("t-matured")
            _ = try await Self.put(client, "/admin/v1/push-triggers/\(granted)", #"{"event":"fanflow.points.granted","template":"\#(code)"}"#)
            _ = try await Self.put(client, "/admin/v1/push-triggers/\(matured)", #"{"event":"fanflow.points.matured","template":"\#(code)"}"#)
            let fan = Identity(platform: .wechat, app: app, openid: "earner")
            let member = try #require(try await MemberDirectory(database: database).resolve([fan: nil])[fan])
            let checkin = "wechat:\(UUID().uuidString)", purchase = "server:\(UUID().uuidString)"
            func grant(_ rule: String, _ points: Int64, _ kind: LedgerGrant.Kind, event: String) -> LedgerGrant {
                LedgerGrant(member: member, kind: kind, rule: rule, points: points, growth: 0, reason: rule, eventID: event, ref: nil,
                            occurredAt: Date(), dueAt: kind == .pending ? Date().addingTimeInterval(86_400) : nil, subject: fan)
            }
            let ledger = Ledger(database: database)
            let grants = [grant("checkin", 10, .grant, event: checkin), grant("streak", 20, .grant, event: checkin),
                          grant("purchase", 50, .pending, event: purchase)]
            try await ledger.apply(grants: grants, reversals: [], levels: .standard)
            try await ledger.apply(grants: grants, reversals: [], levels: .standard)  // redelivered: no second news
            let pending = try #require(try await database.query("SELECT id FROM ledger WHERE member_id = $1 AND kind = 'pending'", [member]).first?.int("id"))
            #expect(try await ledger.mature(ids: [Int64(pending)], levels: .standard) == 1)
            #expect(try await ledger.mature(ids: [Int64(pending)], levels: .standard) == 0)

            let broker = ManagedAMQPConnection(configuration: try AMQPConfiguration(url: TestEnvironment.amqpURL),
                                               logger: Self.logger) { connection in try await connection.enableConfirms() }
            try await broker.start()
            let relay = Task { try await OutboxRelay(outbox: Outbox(database: database), broker: broker, logger: Self.logger).run() }
            let consumer = try Self.consume(setup.pool)
            try await FlashSaleTests.waitFor("two pushes", timeout: .seconds(60)) { fake.sent.filter { $0.app == app }.count >= 2 }
            try await Task.sleep(for: .milliseconds(500))
            let texts = fake.sent.filter { $0.app == app }.map { "\($0.body["data"] ?? "")" }
            #expect(texts.count == 2)
            #expect(texts.contains { $0.contains("points.granted: +30") }, "\(texts)")
            #expect(texts.contains { $0.contains("points.matured: +50") && $0.contains("80") }, "\(texts)")
            #expect(try await Self.status(database, "\(granted):fanflow:granted:\(member):\(checkin)") == "sent")
            #expect(try await Self.status(database, "\(matured):fanflow:matured:\(member):\(purchase)") == "sent")

            consumer.cancel()
            relay.cancel()
            _ = await consumer.result
            _ = await relay.result
            await broker.close()
            for trigger in [granted, matured] { _ = try await PointsAdminTests.call(client, .delete, "/admin/v1/push-triggers/\(trigger)") }
            try await database.query("DELETE FROM jobs WHERE unique_key = $1", ["loyalty.mature:\(pending)"])
        }
    }

    @Test("an Alipay template: a level change reaches the member's Alipay user id through the service window, rendered; a 20000 is retried through its job and sent; an unfollowed user is recorded")
    func alipayPushes() async throws {
        try await Self.withPushes(maxAttempts: 3) { setup in
            let (client, alipay, pool, app, database) = (setup.client, setup.alipay, setup.pool, setup.alipayApp, setup.database)
            let code = TestEnvironment.unique("ali-level"), trigger = TestEnvironment.unique("t-ali-level")
            var (status, _) = try await Self.put(client, "/admin/v1/templates/\(code)",
                ##"{"platform":"alipay","appId":"\##(app)","templateId":"TM-L","fields":{"first":"升级为 {{level}}","keyword1":"{{balance}}","head_color":"#ff6600"},"url":"https://brand.example/m/{{memberId}}"}"##)
            #expect(status == .created)
            (status, _) = try await Self.put(client, "/admin/v1/push-triggers/\(trigger)", #"{"event":"fanflow.member.level_changed","template":"\#(code)"}"#)
            #expect(status == .created)
            let fan = Identity(platform: .alipay, app: app, openid: "2088000000000101")
            let gone = Identity(platform: .alipay, app: app, openid: "2088000000000102")
            let ids = try await MemberDirectory(database: database).resolve([fan: nil, gone: nil])
            func levelChange(_ identity: Identity) throws -> Envelope {
                let member = try #require(ids[identity])
                return Envelope(id: "fanflow:level:\(member):gold:\(UUID().uuidString)", platform: .fanflow, app: "", kind: .levelChanged,
                                subject: .init(), occurredAt: Date(), receivedAt: Date(), attributes: ["memberId": .integer(member), "from": "silver", "to": "gold"])
            }
            alipay.inject(code: "20000")
            let change = try levelChange(fan)
            let pushID = "\(trigger):\(change.id)"
            try await pool.process([change])
            #expect(try await Self.status(database, pushID) == "pending")
            let job = try #require(try await JobStore(database: database).list(kind: PushJobs.retry.rawValue, limit: 500)
                .first { $0.payload["pushId"] == .string(pushID) })
            try await pool.process([job.legacyEnvelope()])
            #expect(try await Self.status(database, pushID) == "sent")
            let sent = try #require(alipay.sent.last)
            #expect(sent.toUser == "2088000000000101" && sent.templateID == "TM-L")
            #expect(sent.context["first"] == "升级为 gold" && sent.context["head_color"] == "#ff6600")
            #expect(sent.context["url"] == "https://brand.example/m/\(try #require(ids[fan]))")

            alipay.refuse(user: "2088000000000102", subCode: "USER_NOT_FOLLOW", subMessage: "用户未关注")
            let unfollowed = try levelChange(gone)
            try await pool.process([unfollowed])
            #expect(try await Self.status(database, "\(trigger):\(unfollowed.id)") == "unsubscribed")
            #expect(alipay.sent.count == 1)
            #expect(setup.fake.sent.filter { $0.app == setup.app }.isEmpty, "an Alipay push went to WeChat")

            _ = try await PointsAdminTests.call(client, .delete, "/admin/v1/push-triggers/\(trigger)")
        }
    }

    @Test("the shipped preset: templates and triggers for an app from its template ids, a welcome line per channel scene; refused with a code when wrong")
    func preset() async throws {
        try await Self.withPushes { setup in
            let (client, fake, pool, app) = (setup.client, setup.fake, setup.pool, setup.app)
            var (status, json) = try await PointsAdminTests.call(client, .post, "/admin/v1/push-triggers/presets/standard",
                                                                 #"{"appId":"\#(app)","templates":{"birthday":"TPL-B"}}"#)
            #expect((status, FlashSaleTests.code(json)) == (.badRequest, "invalid_preset"))
            (status, json) = try await PointsAdminTests.call(client, .post, "/admin/v1/push-triggers/presets/standard",
                                                             #"{"appId":"\#(app)","templates":{"points-granted":"TPL-P"},"scenes":{"s1":"hi"}}"#)
            #expect((status, FlashSaleTests.code(json)) == (.badRequest, "invalid_preset"), "scenes without a welcome")

            (status, json) = try await PointsAdminTests.call(client, .post, "/admin/v1/push-triggers/presets/standard", #"""
                {"appId":"\#(app)","templates":{"welcome":"TPL-W","points-granted":"TPL-P","level-changed":"TPL-L","reservation-made":"TPL-R",
                 "reservation-expiring":"TPL-X","points-matured":"TPL-M"},"scenes":{"store-42":"欢迎光临 42 号店"},"url":"https://brand.example/m"}
                """#)
            #expect(status == .ok)
            let triggers = (json["triggers"] as? [[String: Any]] ?? []).compactMap { $0["event"] as? String }
            #expect(Set(triggers) == ["wechat.subscribe", "fanflow.points.granted", "fanflow.member.level_changed", "fanflow.flashsale.reserved",
                                      "fanflow.push.flashsale_reminder", "fanflow.points.matured"])
            #expect(triggers.count == 7, "the scene's welcome is a trigger of its own")
            (status, json) = try await PointsAdminTests.call(client, .get, "/admin/v1/push-triggers/\(app).welcome.store-42")
            #expect(json["when"] as? [String: String] == ["scene": "store-42"])

            let consumer = try Self.consume(pool)
            try await Self.subscribe(client, app: app, openid: "fan-42", scene: "store-42")
            try await Self.subscribe(client, app: app, openid: "fan-any", scene: nil)
            try await FlashSaleTests.waitFor("two welcomes") { fake.sent.filter { $0.app == app }.count >= 2 }
            try await Task.sleep(for: .milliseconds(300))
            let sent = Dictionary(uniqueKeysWithValues: fake.sent.filter { $0.app == app }.map { ($0.toUser, "\($0.body["data"] ?? "")") })
            #expect(sent.count == 2)
            #expect(sent["fan-42"]?.contains("欢迎光临 42 号店") == true, "\(sent)")
            #expect(sent["fan-any"]?.contains("欢迎加入会员") == true, "\(sent)")
            consumer.cancel()
            _ = await consumer.result
            for name in PushPreset.names + ["welcome.store-42"] {
                _ = try await PointsAdminTests.call(client, .delete, "/admin/v1/push-triggers/\(app).\(name)")
            }
        }
    }

    @Test("FANFLOW_POINTS_NEWS=auto: points news are published while an enabled push trigger names their event, not otherwise")
    func pointsNewsWhileListened() async throws {
        try await Self.withPushes { setup in
            let (client, app, database) = (setup.client, setup.app, setup.database)
            let policy = ListenedPointsNews(store: PushStore(database: database), refresh: .zero)
            func listeners(_ event: String) async throws -> Int {
                try await database.query("SELECT count(*) AS n FROM push_triggers WHERE enabled AND event = $1", [event]).first?.int("n") ?? -1
            }
            // Nothing else listens in a fresh database; whatever does here decides the answer before ours.
            let before = await policy.announces(.pointsGranted)
            #expect(before == (try await listeners("fanflow.points.granted") > 0))
            let code = TestEnvironment.unique("pn"), trigger = TestEnvironment.unique("t-pn")
            _ = try await Self.put(client, "/admin/v1/templates/\(code)", #"{"appId":"\#(app)","templateId":"TPL-P","fields":{"first":"+{{points}}"}}"#)
            _ = try await Self.put(client, "/admin/v1/push-triggers/\(trigger)", #"{"event":"fanflow.points.granted","template":"\#(code)"}"#)
            #expect(await policy.announces(.pointsGranted))
            _ = try await Self.put(client, "/admin/v1/push-triggers/\(trigger)", #"{"event":"fanflow.points.granted","template":"\#(code)","enabled":false}"#)
            #expect(await policy.announces(.pointsGranted) == before, "a disabled trigger still counted")
            #expect(await policy.announces(.pointsMatured) == (try await listeners("fanflow.points.matured") > 0))
            _ = try await PointsAdminTests.call(client, .delete, "/admin/v1/push-triggers/\(trigger)")
        }
    }
}
