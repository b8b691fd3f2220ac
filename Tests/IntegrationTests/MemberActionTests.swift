import AMQPClient
import Contracts
import Foundation
import Hummingbird
import HummingbirdTesting
import HTTPTypes
import Logging
import Loyalty
import Members
import Runtime
import Testing
import Workers

/// What H5 pages do for a signed-in member, over real HTTP: tokens, product codes, the points mall.
@Suite("Member actions: tokens, product codes, redemptions, expiry")
struct MemberActionTests {
    static func call(_ client: any TestClientProtocol, _ method: HTTPRequest.Method, _ uri: String, _ body: String? = nil,
                     headers: HTTPFields = GatewayHarness.adminHeaders) async throws -> (HTTPResponse.Status, [String: Any]) {
        try await PointsAdminTests.call(client, method, uri, body, headers: headers)
    }

    static func token(_ client: any TestClientProtocol, member: Int64) async throws -> HTTPFields {
        let (status, json) = try await call(client, .post, "/admin/v1/members/\(member)/tokens", #"{"ttlSeconds":600}"#)
        #expect(status == .created)
        #expect((json["expiresAt"] as? String).flatMap(RFC3339.parse) != nil)
        return [.authorization: "Bearer \(json["token"] as? String ?? "")", .contentType: "application/json"]
    }

    static func errorCode(_ json: [String: Any]) -> String? { (json["error"] as? [String: Any])?["code"] as? String }

    @Test("codes: imported as CSV and JSON, verified once by the first member, refused after; the grant follows through the outbox")
    func productCodes() async throws {
        let h = try await PointsHarness.open()
        let directory = MemberDirectory(database: h.database)
        let alice = try await directory.resolve(Identity(platform: .wechat, app: h.app, openid: "alice"))
        let bob = try await directory.resolve(Identity(platform: .wechat, app: h.app, openid: "bob"))
        let prefix = h.prefix.uppercased()
        try await GatewayHarness.run(["FANFLOW_H5_ORIGINS": "https://h5.brand.example"]) { client, tap, _ in
            let csv = "code,sku,batch\r\n\(prefix)-1,SKU-A,B1\r\n\(prefix)-2,SKU-A,\r\n\(prefix)-3,SKU-B,B2\r\n"
            var (status, json) = try await Self.call(client, .post, "/admin/v1/product-codes", csv,
                                                     headers: [.authorization: "Bearer \(GatewayHarness.adminToken)", .contentType: "text/csv"])
            #expect(status == .ok)
            #expect(json["imported"] as? Int == 3)
            (status, json) = try await Self.call(client, .post, "/admin/v1/product-codes",
                                                 #"{"codes":[{"code":"\#(prefix)-3","sku":"SKU-B"},{"code":"\#(prefix)-4","sku":"SKU-C"}]}"#)
            #expect(json["imported"] as? Int == 1)
            #expect(json["alreadyImported"] as? Int == 1)
            (status, json) = try await Self.call(client, .post, "/admin/v1/product-codes", #"{"codes":[{"code":"x y","sku":"S"}]}"#)
            #expect(status == .badRequest)
            #expect(Self.errorCode(json) == "invalid_code")

            let aliceAuth = try await Self.token(client, member: alice)
            let bobAuth = try await Self.token(client, member: bob)
            (status, json) = try await Self.call(client, .post, "/v1/codes/verify", #"{"code":"\#(prefix)-1"}"#, headers: aliceAuth)
            #expect(status == .ok)
            #expect(json["sku"] as? String == "SKU-A")
            #expect(json["memberId"] as? Int == Int(alice))
            (status, json) = try await Self.call(client, .post, "/v1/codes/verify", #"{"code":"\#(prefix)-1"}"#, headers: bobAuth)
            // Someone else's code answers as an unknown one does (codes cannot be enumerated); the member's own, 409.
            #expect(status == .notFound)
            #expect(Self.errorCode(json) == "unknown_code")
            (status, json) = try await Self.call(client, .post, "/v1/codes/verify", #"{"code":"\#(prefix)-1"}"#, headers: aliceAuth)
            #expect(status == .conflict)
            #expect(Self.errorCode(json) == "already_verified")
            (status, json) = try await Self.call(client, .post, "/v1/codes/verify", #"{"code":"\#(prefix)-FAKE"}"#, headers: aliceAuth)
            #expect(status == .notFound)
            #expect(Self.errorCode(json) == "unknown_code")
            (status, json) = try await Self.call(client, .post, "/v1/codes/verify", #"{"code":"\#(prefix)-2"}"#, headers: [:])
            #expect(status == .unauthorized)
            (status, json) = try await Self.call(client, .post, "/v1/codes/verify", #"{"code":"\#(prefix)-2"}"#,
                                                 headers: [.authorization: "Bearer m1.\(alice).99999999999.forged"])
            #expect(Self.errorCode(json) == "bad_token")
            // A browser's preflight from the brand's H5 domain is answered.
            try await client.execute(uri: "/v1/codes/verify", method: .options,
                                     headers: [.origin: "https://h5.brand.example", .accessControlRequestMethod: "POST"]) { response in
                #expect(response.headers[.accessControlAllowOrigin] == "https://h5.brand.example")
                #expect(response.headers[.accessControlAllowHeaders]?.lowercased().contains("authorization") == true)
            }

            // The verification's event leaves through the outbox, under the member's identity, and grants the rule.
            let broker = ManagedAMQPConnection(configuration: try AMQPConfiguration(url: TestEnvironment.amqpURL),
                                               logger: Logger(label: "test")) { try await $0.enableConfirms() }
            try await broker.start()
            let relay = OutboxRelay(outbox: Outbox(database: h.database), broker: broker, logger: Logger(label: "test"))
            for _ in 0..<20 { if try await relay.relayOnce() == 0 { break } }
            await broker.close()
            let published = try await tap.wait(app: h.app, count: 1)
            let event = try #require(published.first)
            #expect(event.routingKey == "wechat.code.verified")
            #expect(event.envelope.subject.openid == "alice")
            #expect(event.envelope.attributes["code"] == .string("\(prefix)-1"))
            let pool = h.pool(.init(rules: ProgramPreset.membership.rules, levels: .standard))
            try await pool.process([event.envelope])
            try await pool.process([event.envelope])
            let view = try #require(try await h.member("alice"))
            #expect((view.points, view.growth) == (5, 50))
        }
        await h.close()
    }

    @Test("redemptions: never a negative balance, never more than stock, a retried request id answers the same")
    func redemptions() async throws {
        let h = try await PointsHarness.open()
        let kind = h.kind("gift")
        let pool = h.pool(.init(rules: [PointsRule(code: "\(h.prefix)-g", kinds: [kind], points: 25, growth: 0, reason: "gift")],
                                levels: .standard))
        try await pool.process([h.event("p1", kind, openid: "carol", at: "2026-12-01T10:00:00+08:00")])
        for n in 0..<8 { try await pool.process([h.event("r\(n)", kind, openid: "rich", at: "2026-12-01T10:00:00+08:00")]) }
        let carol = try #require(try await h.member("carol")).id
        let rich = try #require(try await h.member("rich")).id
        let gift = "\(h.prefix)-mug"
        try await GatewayHarness.run { client, _, _ in
            var (status, json) = try await Self.call(client, .put, "/admin/v1/gifts/\(gift)", #"{"name":"mug","points":10,"stock":4}"#)
            #expect(status == .ok)
            let auth = try await Self.token(client, member: carol)
            (status, json) = try await Self.call(client, .post, "/v1/mall/redemptions",
                                                 #"{"giftId":"\#(gift)","quantity":1,"requestId":"req-carol-1"}"#, headers: auth)
            #expect(status == .created)
            #expect(json["balance"] as? Int == 15)
            let first = json["redemptionId"] as? Int
            (status, json) = try await Self.call(client, .post, "/v1/mall/redemptions",
                                                 #"{"giftId":"\#(gift)","quantity":1,"requestId":"req-carol-1"}"#, headers: auth)
            #expect(status == .ok)
            #expect(json["redemptionId"] as? Int == first)
            (status, json) = try await Self.call(client, .post, "/v1/mall/redemptions",
                                                 #"{"giftId":"\#(gift)","quantity":2,"requestId":"req-carol-2"}"#, headers: auth)
            #expect(status == .conflict)
            #expect(Self.errorCode(json) == "insufficient_points")
            (status, json) = try await Self.call(client, .get, "/admin/v1/gifts/\(gift)")
            #expect(json["stock"] as? Int == 3) // the refused redemption took no stock
            (status, json) = try await Self.call(client, .post, "/v1/mall/redemptions",
                                                 #"{"giftId":"nothing","requestId":"req-carol-3"}"#, headers: auth)
            #expect(Self.errorCode(json) == "unknown_gift")
            (status, json) = try await Self.call(client, .post, "/v1/mall/redemptions", #"{"giftId":"\#(gift)"}"#, headers: auth)
            #expect(Self.errorCode(json) == "invalid_request_id")

            // Ten requests race for the 3 left: 3 are granted, 7 refused, and the balance pays for exactly 3.
            let richAuth = try await Self.token(client, member: rich)
            let outcomes = try await withThrowingTaskGroup(of: HTTPResponse.Status.self) { group in
                for n in 0..<10 {
                    group.addTask {
                        try await Self.call(client, .post, "/v1/mall/redemptions",
                                            #"{"giftId":"\#(gift)","requestId":"req-rich-\#(n)-x"}"#, headers: richAuth).0
                    }
                }
                var outcomes: [HTTPResponse.Status] = []
                for try await outcome in group { outcomes.append(outcome) }
                return outcomes
            }
            #expect(outcomes.filter { $0 == .created }.count == 3)
            #expect(outcomes.filter { $0 == .conflict }.count == 7)
            (status, json) = try await Self.call(client, .get, "/admin/v1/gifts/\(gift)")
            #expect(json["stock"] as? Int == 0)
        }
        #expect(try await h.member("rich")?.points == 200 - 30)
        let spent = try await MemberQueries(database: h.database).ledger(member: rich, LedgerFilter(kind: "redemption"))
        #expect(spent.map(\.points) == [-10, -10, -10])
        await h.close()
    }

    @Test("expiry takes back what is left of expiring points, oldest spent first")
    func expiry() async throws {
        let h = try await PointsHarness.open()
        let kind = h.kind("earn")
        let rule = PointsRule(code: "\(h.prefix)-exp", kinds: [kind], points: 10, growth: 1, reason: "earn", pointsExpireAfterDays: 30)
        let pool = h.pool(.init(rules: [rule], levels: .standard))
        // 10 points on 1 November and 10 on 20 November, then 15 spent: the 1 November grant was
        // spent whole and 5 of the second; on 1 December the first expires with nothing left of it.
        try await pool.process([h.event("a", kind, openid: "dave", at: "2026-11-01T10:00:00+08:00")])
        try await pool.process([h.event("b", kind, openid: "dave", at: "2026-11-20T10:00:00+08:00")])
        let dave = try #require(try await h.member("dave")).id
        let mall = PointsMall(database: h.database)
        try await mall.putGift(.init(id: "\(h.prefix)-pen", name: "pen", points: 15, stock: 5))
        #expect(try await mall.redeem(member: dave, giftID: "\(h.prefix)-pen", quantity: 1, requestID: "dave-1").map(\.points) == .success(15))
        let ledger = Ledger(database: h.database)
        while try await ledger.expireDue(asOf: try #require(RFC3339.parse("2026-12-02T00:00:00+08:00")), levels: .standard) > 0 {}
        #expect(try await h.member("dave")?.points == 5)
        // On 20 December the second expires: the 5 left of it go.
        while try await ledger.expireDue(asOf: try #require(RFC3339.parse("2026-12-21T00:00:00+08:00")), levels: .standard) > 0 {}
        #expect(try await h.member("dave")?.points == 0)
        let expired = try await MemberQueries(database: h.database).ledger(member: dave, LedgerFilter(kind: "expiry"))
        #expect(expired.map(\.points) == [-5])
        await h.close()
    }
}
