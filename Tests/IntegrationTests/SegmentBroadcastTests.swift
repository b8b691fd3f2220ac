import AsyncHTTPClient
import Contracts
import FakePlatform
import FlashSales
import Foundation
@testable import Gateway
import Hummingbird
import HummingbirdTesting
import HTTPTypes
import Jobs
import Logging
import Members
import Platforms
import PostgresClient
import Pushes
import RedisClient
import Testing
@testable import Workers

/// The test's own segment store: a segment's members are every member with an identity on any of
/// its apps, read from PostgreSQL in ascending id order as the real store answers them.
struct IdentitySegments: BroadcastAudience {
    let database: PostgresPool
    /// Segment code to the apps whose members it holds.
    let segments: [String: [String]]

    func segmentExists(_ code: String) async throws -> Bool { segments[code] != nil }

    func members(segment code: String, after cursor: Int64, limit: Int) async throws -> [Int64]? {
        guard let apps = segments[code] else { return nil }
        return try await database.query("""
            SELECT DISTINCT member_id FROM member_identities WHERE app = ANY($1::text[]) AND member_id > $2 ORDER BY member_id LIMIT $3
            """, [PostgresArray(apps), cursor, limit]).map { try $0.require("member_id", as: Int64.self) }
    }
}

/// Segment broadcasts over several official accounts: the body's app order decides who gets
/// which, reachability by identity and latest follow event, exactly one push per member across
/// batches and redelivered batch jobs, per-app counts, refusals with codes, and the tag form beside
/// it. On a database of the test's own: the push worker's job runners claim every due push job.
@Suite("Segment broadcasts", .serialized)
struct SegmentBroadcastTests {
    static let logger = Logger(label: "test.segmentbroadcasts")

    struct Setup: Sendable {
        /// The gateway as deployed: segments from Audiences' store on the scratch database.
        let gateway: any TestClientProtocol
        let gatewayObject: Gateway
        /// The gateway's push admin routes given the test's segment store, over HTTP.
        let admin: any TestClientProtocol
        /// The push worker's service, with the test's segment store.
        let service: PushService
        let fake: FakeWeChat
        /// Official accounts: `a` and `b` are broadcast to, `c` is not.
        let a: String, b: String, c: String
        /// The segment of every member with an identity on `a`, `b` or `c`.
        let segment: String
        let audience: IdentitySegments
        let database: PostgresPool
    }

    static func with(batch: Int, _ body: @Sendable (Setup) async throws -> Void) async throws {
        try await ScratchDatabase.with { _, url in
            let fake = FakeWeChat()
            let a = TestEnvironment.unique("wxsa"), b = TestEnvironment.unique("wxsb"), c = TestEnvironment.unique("wxsc")
            for app in [a, b, c] { fake.register(app: app, secret: "secret-\(app)") }
            let router = Router()
            fake.addRoutes(to: router)
            let database = PostgresPool(url: url, maximumConnections: 16)
            let redis = try await RedisPool(url: TestEnvironment.redisURL, size: 2)
            let segment = TestEnvironment.unique("seg")
            let audience = IdentitySegments(database: database, segments: [segment: [a, b, c]])
            do {
                try await Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0))).test(.live) { platform in
                    let base = "http://127.0.0.1:\(try #require(platform.port))"
                    let client = WeChatClient(http: HTTPClient.shared, base: base)
                    let broker = AccessTokenBroker(redis: redis, client: client, secrets: { [a, b, c].contains($0) ? "secret-\($0)" : nil },
                                                   logger: logger)
                    let sender = PushSender(client: client, broker: broker, alipay: AlipayClient(http: HTTPClient.shared, base: base),
                                            alipayKeys: AlipayKeyring { _ in nil })
                    // As `PushPool.service` builds it, with the segment store handed in.
                    let service = PushService(store: PushStore(database: database), sender: sender,
                                              pace: PushPace(redis: redis, ratePerSecond: 0, dailyQuota: 100_000),
                                              members: DirectoryMembers(directory: MemberDirectory(database: database)),
                                              reservations: OrderPayments(store: FlashSaleStore(database: database)), logger: logger,
                                              broadcastBatch: batch, audience: audience)
                    try await GatewayHarness.run(["FANFLOW_DATABASE_URL": url]) { gatewayClient, _, gateway in
                        let routes = Router(context: GatewayRequestContext.self)
                        gateway.addPushAdminRoutes(routes.group("/admin/v1")
                            .add(middleware: AdminAuthMiddleware(token: BearerToken(GatewayHarness.adminToken))), audience: audience)
                        try await Application(router: routes, configuration: .init(address: .hostname("127.0.0.1", port: 0))).test(.live) { admin in
                            try await body(Setup(gateway: gatewayClient, gatewayObject: gateway, admin: admin, service: service, fake: fake, a: a, b: b, c: c,
                                                 segment: segment, audience: audience, database: database))
                        }
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
    }

    /// A member with an identity on each of `apps` (openid `<name>-<app>`), made through the member
    /// directory as a follow makes them.
    static func member(_ name: String, on apps: [String], _ database: PostgresPool) async throws -> Int64 {
        let first = try #require(apps.first)
        let id = try await MemberDirectory(database: database).resolve(Identity(platform: .wechat, app: first, openid: "\(name)-\(first)"))
        for app in apps.dropFirst() {
            try await database.query("INSERT INTO member_identities (platform, app, openid, member_id) VALUES ('wechat', $1, $2, $3)",
                                     [app, "\(name)-\(app)", id])
        }
        return id
    }

    /// A stored `subscribe` or `unsubscribe` of `openid` on `app`, `hoursAgo` hours ago.
    static func follow(_ kind: EventKind, _ openid: String, app: String, hoursAgo: Double, _ database: PostgresPool) async throws {
        let at = Date().addingTimeInterval(-hoursAgo * 3600)
        try await database.query("""
            INSERT INTO events (id, platform, app, kind, openid, occurred_at, received_at) VALUES ($1, 'wechat', $2, $3, $4, $5, $5)
            """, [UUID().uuidString, app, kind.rawValue, openid, at])
    }

    static func template(_ client: any TestClientProtocol, _ code: String, app: String, id: String) async throws {
        let (status, _) = try await PointsAdminTests.call(client, .put, "/admin/v1/templates/\(code)",
                                                          #"{"appId":"\#(app)","templateId":"\#(id)","fields":{"first":"Hi {{openid}}"}}"#)
        #expect(status == .created)
    }

    /// The raw body of a call: JSONSerialization forgets key order, and the order is what is checked.
    static func raw(_ client: any TestClientProtocol, _ method: HTTPRequest.Method, _ uri: String, _ body: String? = nil) async throws
        -> (HTTPResponse.Status, String) {
        try await client.execute(uri: uri, method: method, headers: GatewayHarness.adminHeaders, body: body.map { ByteBuffer(string: $0) }) {
            ($0.status, String(buffer: $0.body))
        }
    }

    /// Whether `keys` appear in `text` in this order.
    static func inOrder(_ text: String, _ keys: [String]) -> Bool {
        let places = keys.compactMap { text.range(of: $0)?.lowerBound }
        return places.count == keys.count && zip(places, places.dropFirst()).allSatisfy { $0 < $1 }
    }

    static func jobRunners(_ service: PushService, _ database: PostgresPool) -> [Task<Void, any Error>] {
        PushPool.jobs(service, runners: 1, limit: 100).services(store: JobStore(database: database), logger: logger)
            .map { runner in Task { try await runner.run() } }
    }

    /// Each member's app in broadcast `id`, from its pushes; fails when a member has two.
    static func reached(_ database: PostgresPool, broadcast id: Int64) async throws -> [Int64: String] {
        let rows = try await database.query("SELECT member_id, app_id FROM pushes WHERE broadcast_id = $1", [id])
        var apps: [Int64: String] = [:]
        for row in rows {
            let member = try row.require("member_id", as: Int64.self)
            #expect(apps[member] == nil, "member \(member) has two pushes")
            apps[member] = try row.require("app_id", as: String.self)
        }
        return apps
    }

    @Test("one push per member through the first app in the body's order they can be reached on, both orders; per-app counts; a redelivered batch changes nothing; the tag form beside it")
    func firstReachableApp() async throws {
        try await Self.with(batch: 2) { setup in
            let (a, b, c, database) = (setup.a, setup.b, setup.c, setup.database)
            let ta = TestEnvironment.unique("seg-ta"), tb = TestEnvironment.unique("seg-tb")
            try await Self.template(setup.gateway, ta, app: a, id: "TPL-A")
            try await Self.template(setup.gateway, tb, app: b, id: "TPL-B")

            let onlyA = try await Self.member("only-a", on: [a], database)
            let onlyB = try await Self.member("only-b", on: [b], database)
            let both = try await Self.member("both", on: [a, b], database)
            // Unsubscribed from A (after following it), still following B: reached on B.
            let leftA = try await Self.member("left-a", on: [a, b], database)
            try await Self.follow(.subscribe, "left-a-\(a)", app: a, hoursAgo: 2, database)
            try await Self.follow(.unsubscribe, "left-a-\(a)", app: a, hoursAgo: 1, database)
            // Unsubscribed from A, on nothing else in the map: skipped.
            let goneA = try await Self.member("gone-a", on: [a], database)
            try await Self.follow(.unsubscribe, "gone-a-\(a)", app: a, hoursAgo: 1, database)
            // Only on C, which the broadcast does not list: skipped.
            let elsewhere = try await Self.member("elsewhere", on: [c], database)
            // Unsubscribed from A, then followed it again: reached on A.
            let backA = try await Self.member("back-a", on: [a], database)
            try await Self.follow(.unsubscribe, "back-a-\(a)", app: a, hoursAgo: 2, database)
            try await Self.follow(.subscribe, "back-a-\(a)", app: a, hoursAgo: 1, database)
            // On both, unsubscribed from B: reached on A whatever the order.
            let leftB = try await Self.member("left-b", on: [a, b], database)
            try await Self.follow(.unsubscribe, "left-b-\(b)", app: b, hoursAgo: 1, database)

            // A tag broadcast beside them, through the gateway as deployed (no segment store).
            let tag = TestEnvironment.unique("seg-tag")
            try await database.query("INSERT INTO member_tags (member_id, tag) SELECT unnest($1::bigint[]), $2",
                                     [PostgresArray([onlyA, both].map(String.init)), tag])
            var (status, json) = try await PointsAdminTests.call(setup.gateway, .post, "/admin/v1/broadcasts", #"{"template":"\#(ta)","tags":["\#(tag)"]}"#)
            #expect(status == .created)
            #expect(json["template"] as? String == ta && json["tags"] as? [String] == [tag] && json["segment"] == nil)
            let tagged = Int64(try #require(json["id"] as? Int))

            // Two segment broadcasts over the same apps, in both orders.
            var body: String
            (status, body) = try await Self.raw(setup.admin, .post, "/admin/v1/broadcasts",
                                                #"{"segment":"\#(setup.segment)","templates":{"\#(a)":"\#(ta)","\#(b)":"\#(tb)"}}"#)
            #expect(status == .created, "\(body)")
            #expect(Self.inOrder(body, [#""templates":{"\#(a)":"\#(ta)","\#(b)":"\#(tb)"}"#]), "\(body)")
            json = (try JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any] ?? [:]
            #expect(json["status"] as? String == "scheduled" && json["segment"] as? String == setup.segment)
            #expect(json["template"] == nil && json["tags"] == nil)
            let aFirst = Int64(try #require(json["id"] as? Int))
            (status, body) = try await Self.raw(setup.admin, .post, "/admin/v1/broadcasts",
                                                #"{"templates":{"\#(b)":"\#(tb)","\#(a)":"\#(ta)"},"segment":"\#(setup.segment)","at":null}"#)
            #expect(status == .created, "\(body)")
            #expect(Self.inOrder(body, [#""templates":{"\#(b)":"\#(tb)","\#(a)":"\#(ta)"}"#]), "\(body)")
            json = (try JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any] ?? [:]
            let bFirst = Int64(try #require(json["id"] as? Int))

            let runners = Self.jobRunners(setup.service, database)
            try await FlashSaleTests.waitFor("every batch and send job done") {
                let open = try await database.query("SELECT count(*) AS n FROM jobs WHERE status <> 'done'").first?.require("n", as: Int.self)
                let fanned = try await database.query("SELECT count(*) AS n FROM broadcasts WHERE status = 'fanned_out'").first?
                    .require("n", as: Int.self)
                return open == 0 && fanned == 3
            }
            await PushPoolTests.stop(runners)

            let expectedA: [Int64: String] = [onlyA: a, onlyB: b, both: a, leftA: b, backA: a, leftB: a]
            let expectedB: [Int64: String] = [onlyA: a, onlyB: b, both: b, leftA: b, backA: a, leftB: a]
            #expect(try await Self.reached(database, broadcast: aFirst) == expectedA)
            #expect(try await Self.reached(database, broadcast: bFirst) == expectedB)
            #expect(try await Self.reached(database, broadcast: tagged) == [onlyA: a, both: a])
            for skipped in [goneA, elsewhere] {
                #expect(try await database.query("SELECT 1 FROM pushes WHERE member_id = $1", [skipped]).isEmpty)
            }
            // What the platform got: each message from the app the member was reached on, to their openid there.
            let names: [Int64: String] = [onlyA: "only-a", onlyB: "only-b", both: "both", leftA: "left-a", backA: "back-a", leftB: "left-b"]
            var expectedSends: [String: Int] = [:]
            for expected in [expectedA, expectedB, [onlyA: a, both: a]] {
                for (member, app) in expected { expectedSends["\(app) \(names[member] ?? "")-\(app)", default: 0] += 1 }
            }
            var sends: [String: Int] = [:]
            for sent in setup.fake.sent { sends["\(sent.app) \(sent.toUser)", default: 0] += 1 }
            #expect(sends == expectedSends)
            #expect(setup.fake.sent.allSatisfy { $0.templateID == ($0.app == a ? "TPL-A" : "TPL-B") })

            // Per-app counts, through the gateway as deployed: reading needs no segment store.
            (status, body) = try await Self.raw(setup.gateway, .get, "/admin/v1/broadcasts/\(aFirst)")
            #expect(status == .ok)
            #expect(Self.inOrder(body, [#""templates":{"\#(a)":"\#(ta)","\#(b)":"\#(tb)"}"#]), "\(body)")
            #expect(Self.inOrder(body, [#""apps":{"\#(a)":"#, #""\#(b)":{"#]), "apps in the broadcast's order: \(body)")
            json = (try JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any] ?? [:]
            #expect(json["status"] as? String == "fanned_out" && json["recipients"] as? Int == 6)
            #expect((json["counts"] as? [String: Int]) == ["sent": 6])
            #expect(json["templates"] as? [String: String] == [a: ta, b: tb])
            var apps = json["apps"] as? [String: [String: Any]] ?? [:]
            #expect(apps[a]?["template"] as? String == ta && apps[a]?["recipients"] as? Int == 4 && apps[a]?["counts"] as? [String: Int] == ["sent": 4])
            #expect(apps[b]?["template"] as? String == tb && apps[b]?["recipients"] as? Int == 2 && apps[b]?["counts"] as? [String: Int] == ["sent": 2])
            (status, json) = try await PointsAdminTests.call(setup.gateway, .get, "/admin/v1/broadcasts/\(bFirst)")
            apps = json["apps"] as? [String: [String: Any]] ?? [:]
            #expect(apps[a]?["recipients"] as? Int == 3 && apps[b]?["recipients"] as? Int == 3)
            (status, json) = try await PointsAdminTests.call(setup.gateway, .get, "/admin/v1/broadcasts/\(tagged)")
            #expect(json["template"] as? String == ta && json["tags"] as? [String] == [tag] && json["recipients"] as? Int == 2)
            apps = json["apps"] as? [String: [String: Any]] ?? [:]
            #expect(apps.count == 1 && apps[a]?["recipients"] as? Int == 2)

            // Every batch job run again, as after a worker died before recording it done: nothing changes.
            let pushes = try await database.query("SELECT count(*) AS n FROM pushes").first?.require("n", as: Int.self)
            let jobs = try await database.query("SELECT count(*) AS n FROM jobs").first?.require("n", as: Int.self)
            let batches = try await database.query("SELECT id FROM jobs WHERE kind = $1 AND payload->>'broadcastId' = ANY($2::text[]) ORDER BY id",
                                                   [PushJobs.broadcast.rawValue, PostgresArray([aFirst, bFirst].map(String.init))])
                .map { try $0.require("id", as: Int64.self) }
            #expect(batches.count == 2 * 5, "8 members in batches of 2: four full batches and the empty one after, per broadcast")
            var again: [Job] = []
            for id in batches { again.append(try #require(try await JobStore(database: database).job(id: id))) }
            let handler = try #require(PushJobs.handlers(setup.service)[PushJobs.broadcast])
            #expect(await handler.run(again) == Array(repeating: .done, count: again.count))
            #expect(try await setup.service.broadcasts.fanOut(aFirst, after: 0) == .notDue)
            #expect(try await database.query("SELECT count(*) AS n FROM pushes").first?.require("n", as: Int.self) == pushes)
            #expect(try await database.query("SELECT count(*) AS n FROM jobs").first?.require("n", as: Int.self) == jobs)
            #expect(try await Self.reached(database, broadcast: aFirst) == expectedA)
            (_, json) = try await PointsAdminTests.call(setup.gateway, .get, "/admin/v1/broadcasts/\(aFirst)")
            #expect(json["recipients"] as? Int == 6)
        }
    }

    @Test("refusals: unknown segment, unknown template, another app's template (422, app named), app counts, both forms at once (400), no segment store (503); scheduled, cancelled, and a worker without segments or with the segment gone")
    func refusalsAndCancel() async throws {
        try await Self.with(batch: 1000) { setup in
            let (a, b, database) = (setup.a, setup.b, setup.database)
            let ta = TestEnvironment.unique("seg-ta"), tb = TestEnvironment.unique("seg-tb")
            try await Self.template(setup.gateway, ta, app: a, id: "TPL-A")
            try await Self.template(setup.gateway, tb, app: b, id: "TPL-B")
            let seg = setup.segment
            func post(_ client: any TestClientProtocol, _ body: String) async throws -> (HTTPResponse.Status, String?, String) {
                let (status, json) = try await PointsAdminTests.call(client, .post, "/admin/v1/broadcasts", body)
                return (status, FlashSaleTests.code(json), SchedulerAdminTests.error(json, "message") ?? "")
            }
            var (status, code, message) = try await post(setup.admin, #"{"segment":"no-such-segment","templates":{"\#(a)":"\#(ta)"}}"#)
            #expect((status, code) == (.unprocessableContent, "unknown_segment"))
            let (unknown, refusal) = try await PointsAdminTests.call(setup.admin, .post, "/admin/v1/broadcasts",
                                                                     #"{"segment":"\#(seg)","templates":{"\#(a)":"\#(ta)","\#(b)":"no-such-template"}}"#)
            #expect((unknown, FlashSaleTests.code(refusal)) == (.unprocessableContent, "unknown_template"))
            #expect(SchedulerAdminTests.error(refusal, "message")?.contains(b) == true && SchedulerAdminTests.error(refusal, "path") == "templates.\(b)")
            (status, code, message) = try await post(setup.admin, #"{"segment":"\#(seg)","templates":{"\#(a)":"\#(ta)","\#(a)x":"\#(tb)"}}"#)
            #expect((status, code) == (.unprocessableContent, "template_app_mismatch") && message.contains("\(a)x") && message.contains(b), "\(message)")
            let eleven = (0..<11).map { #""wx\#($0)":"\#(ta)""# }.joined(separator: ",")
            for refused in [#"{"segment":"\#(seg)","templates":{}}"#, #"{"segment":"\#(seg)","templates":{\#(eleven)}}"#,
                            #"{"segment":"\#(seg)","templates":{"\#(a)":"\#(ta)"},"tags":["vip"]}"#,
                            #"{"segment":"\#(seg)","templates":{"\#(a)":"\#(ta)"},"template":"\#(ta)"}"#,
                            #"{"segment":"\#(seg)","templates":["\#(ta)"]}"#, #"{"segment":"\#(seg)","templates":{"\#(a)":7}}"#,
                            #"{"segment":"\#(seg)","templates":{"bad app!":"\#(ta)"}}"#, #"{"templates":{"\#(a)":"\#(ta)"}}"#,
                            #"{"segment":"Not A Code","templates":{"\#(a)":"\#(ta)"}}"#,
                            #"{"segment":"\#(seg)","templates":{"\#(a)":"\#(ta)"},"at":"tomorrow"}"#] {
                (status, code, message) = try await post(setup.admin, refused)
                #expect((status, code) == (.badRequest, "invalid_broadcast"), "\(refused): \(message)")
            }
            // The gateway as deployed reads segments from Audiences' store, where this test's segment
            // (its own audience above) is not saved.
            (status, code, _) = try await post(setup.gateway, #"{"segment":"\#(seg)","templates":{"\#(a)":"\#(ta)"}}"#)
            #expect((status, code) == (.unprocessableContent, "unknown_segment"))
            #expect(try await database.query("SELECT count(*) AS n FROM broadcasts").first?.require("n", as: Int.self) == 0, "a refusal stored a broadcast")
            // Without a segment store a gateway refuses the segment form, and only it.
            let bare = Router(context: GatewayRequestContext.self)
            setup.gatewayObject.addPushAdminRoutes(bare.group("/admin/v1"), audience: nil)
            let body = #"{"segment":"\#(seg)","templates":{"\#(a)":"\#(ta)"}}"#
            try await Application(router: bare).test(.router) { client in
                let (refused, json) = try await PointsAdminTests.call(client, .post, "/admin/v1/broadcasts", body)
                #expect((refused, FlashSaleTests.code(json)) == (.serviceUnavailable, "segments_unavailable"))
            }

            // Scheduled for later, then cancelled through the gateway as deployed.
            let later = RFC3339.format(Date().addingTimeInterval(3600))
            var (created, json) = try await PointsAdminTests.call(setup.admin, .post, "/admin/v1/broadcasts",
                                                                 #"{"segment":"\#(seg)","templates":{"\#(a)":"\#(ta)"},"at":"\#(later)"}"#)
            #expect(created == .created && json["status"] as? String == "scheduled")
            let id = Int64(try #require(json["id"] as? Int))
            // A worker without a segment store leaves the batch waiting; one whose segment is gone stops.
            let store = PushStore(database: database)
            #expect(try await Broadcasts(store: store, audience: nil).fanOut(id, after: 0) == .segmentsUnavailable)
            let emptied = IdentitySegments(database: database, segments: [:])
            #expect(try await Broadcasts(store: store, audience: emptied).fanOut(id, after: 0) == .segmentGone(seg))
            (created, json) = try await PointsAdminTests.call(setup.gateway, .post, "/admin/v1/broadcasts/\(id)/cancel")
            #expect(created == .ok && json["status"] as? String == "cancelled" && json["segment"] as? String == seg)
            (created, json) = try await PointsAdminTests.call(setup.gateway, .post, "/admin/v1/broadcasts/\(id)/cancel")
            #expect((created, FlashSaleTests.code(json)) == (.conflict, "already_cancelled"))
            #expect(try await setup.service.broadcasts.fanOut(id, after: 0) == .notDue)
            #expect(try await database.query("SELECT count(*) AS n FROM pushes").first?.require("n", as: Int.self) == 0)
        }
    }

    @Test("the order of one member's keys survives the parse; the rest is parse(_:)'s, limits and refusals included")
    func keyOrder() throws {
        func order(_ text: String) throws -> [String]? { try JSONValue.parse(Array(text.utf8), keyOrderOf: "templates").keys }
        let text = #"{"at":null, "templates" : {"wxB":"b","wxA":"a","wxC":{"x":1},"wxA":"again"},"segment":"s"}"#
        let parsed = try JSONValue.parse(Array(text.utf8), keyOrderOf: "templates")
        #expect(parsed.keys == ["wxB", "wxA", "wxC"], "a repeated key keeps its first place")
        #expect(parsed.value == (try JSONValue.parse(Array(text.utf8))))
        let many = (0..<50).map { "app\(($0 * 37) % 50)" }
        #expect(try order("{\"templates\":{" + many.map { "\"\($0)\":1" }.joined(separator: ",") + "}}") == many)
        #expect(try order(#"{"templates":{}}"#) == [])
        #expect(try order(#"{"templates":{"b":1,"a":2},"templates":{"z":1}}"#) == ["b", "a"], "the first of a repeated member, as parse keeps")
        #expect(try order(#"{"x":{"templates":{"b":1,"a":2}}}"#) == nil, "only the top-level member")
        #expect(try order(#"{"templates":["b","a"]}"#) == nil)
        #expect(try order(#"[{"templates":{"b":1}}]"#) == nil)
        #expect(try order(#"{"segment":"s"}"#) == nil)
        #expect(try order(#"{"templates":{"b":1,"a":2,}}"#) == ["b", "a"], "a trailing comma, as parse accepts it")
        for refused in [#"{"templates":{"b":1}} x"#, #"{"templates":{"b":1"#, #"{"templates":{"b":01}}"#,
                        "{\"templates\":{\"b\":" + String(repeating: "[", count: 600) + String(repeating: "]", count: 600) + "}}"] {
            #expect(throws: JSONParseError.self, "\(refused.prefix(40))") { try order(refused) }
        }
    }
}
