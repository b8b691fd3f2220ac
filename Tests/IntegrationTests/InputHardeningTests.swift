import AsyncHTTPClient
import Contracts
@preconcurrency import Crypto
import Foundation
@testable import Gateway
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Jobs
import Loyalty
import Platforms
import Pushes
import Testing

/// Input the gateway must refuse without dying or publishing: absurd times, bytes that are not
/// UTF-8, identities no platform issues, kinds that would pass for another's; and subjects a page
/// only claims. Over real HTTP, with a tap on `fanflow.events`.
@Suite("Input hardening")
struct InputHardeningTests {
    static let secret = "server-secret-0123456789"
    static var now: String { String(Int(Date().timeIntervalSince1970)) }

    /// A fresh nonce per request, as WeChat sends them: a (timestamp, nonce) pair seen with another body is refused.
    static func wechatQuery(token: String, timestamp: String = now, nonce: String = String(UInt32.random(in: 100_000...UInt32.max))) -> String {
        GatewayWebhookTests.wechatQuery(token: token, timestamp: timestamp, nonce: nonce)
    }

    static func signed(_ body: [UInt8], app: String) -> HTTPFields {
        let timestamp = now
        let mac = HMAC<SHA256>.authenticationCode(for: Array(timestamp.utf8) + [UInt8(ascii: ".")] + body,
                                                  using: SymmetricKey(data: Array(secret.utf8)))
        return [.fanflowApp: app, .fanflowTimestamp: timestamp, .fanflowSignature: "sha256=" + Bytes.hex(mac),
                .contentType: "application/json"]
    }

    static func health(_ client: any TestClientProtocol) async throws {
        try await client.execute(uri: "/health", method: .get) { response in
            #expect(response.status == .ok)
        }
    }

    @Test("a signed plain-mode WeChat callback with an absurd CreateTime is 400 malformed_message, and the gateway lives on")
    func wechatAbsurdCreateTime() async throws {
        try await GatewayHarness.run { client, tap, _ in
            let app = TestEnvironment.unique("wx")
            try await GatewayHarness.register(client, "wechat", app, ["token": "tok"])
            for createTime in ["9223372036854775807", "100000000000000000", "-1", "0", "5000000000"] {
                let xml = "<xml><ToUserName>gh</ToUserName><FromUserName>fan-1</FromUserName><CreateTime>\(createTime)</CreateTime>"
                    + "<MsgType>event</MsgType><Event>subscribe</Event></xml>"
                try await client.execute(uri: "/wechat/\(app)?\(Self.wechatQuery(token: "tok"))", method: .post,
                                         body: ByteBuffer(string: xml)) { response in
                    #expect(response.status == .badRequest, "CreateTime \(createTime)")
                    #expect(GatewayHarness.errorCode(response) == "malformed_message")
                }
                try await Self.health(client)
            }
            let good = "<xml><ToUserName>gh</ToUserName><FromUserName>fan-1</FromUserName><CreateTime>\(Self.now)</CreateTime>"
                + "<MsgType>event</MsgType><Event>subscribe</Event></xml>"
            try await client.execute(uri: "/wechat/\(app)?\(Self.wechatQuery(token: "tok"))", method: .post,
                                     body: ByteBuffer(string: good)) { response in
                #expect(response.status == .ok)
            }
            let published = try await tap.wait(app: app, count: 1)
            #expect(published.count == 1)
            #expect(published.first?.envelope.subject.verified == true)
        }
    }

    @Test("bytes that are not UTF-8 are 400 malformed_body: WeChat plain and safe mode, /v1/events, beacons")
    func notUTF8() async throws {
        try await GatewayHarness.run { client, tap, gateway in
            let app = TestEnvironment.unique("wx")
            let aesKey = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
            try await GatewayHarness.register(client, "wechat", app, ["token": "tok", "encodingAESKey": aesKey])
            func xml(_ content: [UInt8]) -> [UInt8] {
                Array("<xml><ToUserName>gh</ToUserName><FromUserName>fan-1</FromUserName><CreateTime>\(Self.now)</CreateTime><MsgType>text</MsgType><Content><![CDATA[".utf8)
                    + content + Array("]]></Content><MsgId>77</MsgId></xml>".utf8)
            }
            // Plain mode.
            try await client.execute(uri: "/wechat/\(app)?\(Self.wechatQuery(token: "tok"))", method: .post,
                                     body: ByteBuffer(bytes: xml([0xFF, 0xFE, 0x41]))) { response in
                #expect(response.status == .badRequest)
                #expect(GatewayHarness.errorCode(response) == "malformed_body")
            }
            // Safe mode: the envelope is fine, the plaintext inside it is not.
            let crypto = try WeChatCrypto(encodingAESKey: aesKey, appID: app)
            let encrypted = crypto.encrypt(xml([0xC3, 0x28]))
            let timestamp = Self.now, nonce = "987654"
            let msgSignature = WeChatCrypto.signature(["tok", timestamp, nonce, encrypted])
            let query = "\(Self.wechatQuery(token: "tok", timestamp: timestamp, nonce: nonce))&encrypt_type=aes&msg_signature=\(msgSignature)"
            try await client.execute(uri: "/wechat/\(app)?\(query)", method: .post,
                                     body: ByteBuffer(string: "<xml><ToUserName>gh</ToUserName><Encrypt><![CDATA[\(encrypted)]]></Encrypt></xml>")) { response in
                #expect(response.status == .badRequest)
                #expect(GatewayHarness.errorCode(response) == "malformed_body")
            }

            // /v1/events, signed correctly over the bad bytes.
            let server = TestEnvironment.unique("shop")
            try await GatewayHarness.register(client, "server", server, ["secret": Self.secret])
            let memberApp = TestEnvironment.unique("wxm")
            let time = RFC3339.format(Date().addingTimeInterval(-5))
            let events = Array(#"{"events":[{"id":"e1","kind":"community.post","member":{"platform":"wechat","app":"\#(memberApp)","openid":"o1"},"occurredAt":"\#(time)","attributes":{"title":""#.utf8)
                + [0xFF, 0xFE] + Array(#""}}]}"#.utf8)
            try await client.execute(uri: "/v1/events", method: .post, headers: Self.signed(events, app: server),
                                     body: ByteBuffer(bytes: events)) { response in
                #expect(response.status == .badRequest)
                #expect(GatewayHarness.errorCode(response) == "malformed_body")
            }

            // Beacons, posted and as the pixel.
            let site = TestEnvironment.unique("site")
            try await GatewayHarness.register(client, "server", site, ["secret": Self.secret])
            let beacon = Array(#"{"site":"\#(site)","clientId":"c-1","events":[{"id":"\#(UUID().uuidString)","type":"page_view","occurredAt":"\#(time)","title":""#.utf8)
                + [0xED, 0xA0, 0x80] + Array(#""}]}"#.utf8)
            try await client.execute(uri: "/v1/collect", method: .post, body: ByteBuffer(bytes: beacon)) { response in
                #expect(response.status == .badRequest)
                #expect(GatewayHarness.errorCode(response) == "malformed_body")
            }
            let encoded = beacon.map { byte -> String in
                (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                    ? String(UnicodeScalar(byte)) : String(format: "%%%02X", byte)
            }.joined()
            try await client.execute(uri: "/v1/collect.gif?site=\(site)&d=\(encoded)", method: .get) { response in
                #expect(response.status == .badRequest)
                #expect(GatewayHarness.errorCode(response) == "malformed_body")
            }
            _ = gateway
            try await Task.sleep(for: .milliseconds(300))
            #expect(tap.envelopes(app: app).isEmpty)
            #expect(tap.envelopes(app: memberApp).isEmpty)
            #expect(tap.envelopes(app: site).isEmpty)
        }
    }

    @Test("identities no platform issues are 400 invalid_subject on webhooks and beacons, a per-event rejection in /v1/events")
    func invalidSubjects() async throws {
        try await GatewayHarness.run { client, tap, _ in
            let app = TestEnvironment.unique("wx")
            try await GatewayHarness.register(client, "wechat", app, ["token": "tok"])
            let bad = [String(repeating: "o", count: 5000), "<![CDATA[victim\u{0}evil]]>", String(repeating: "🎉", count: 900)]
            for from in bad {
                let xml = "<xml><ToUserName>gh</ToUserName><FromUserName>\(from)</FromUserName><CreateTime>\(Self.now)</CreateTime>"
                    + "<MsgType>event</MsgType><Event>subscribe</Event></xml>"
                try await client.execute(uri: "/wechat/\(app)?\(Self.wechatQuery(token: "tok"))", method: .post,
                                         body: ByteBuffer(string: xml)) { response in
                    #expect(response.status == .badRequest)
                    #expect(GatewayHarness.errorCode(response) == "invalid_subject")
                }
            }

            // App ids in paths: nothing that could not be an app id reaches a lookup.
            let good = "<xml><ToUserName>gh</ToUserName><FromUserName>fan-1</FromUserName><CreateTime>\(Self.now)</CreateTime>"
                + "<MsgType>event</MsgType><Event>subscribe</Event></xml>"
            for path in ["\(app)%00x", String(repeating: "w", count: 65), "%F0%9F%8E%89"] {
                try await client.execute(uri: "/wechat/\(path)?\(Self.wechatQuery(token: "tok"))", method: .post,
                                         body: ByteBuffer(string: good)) { response in
                    #expect(response.status == .notFound, "app id \(path.prefix(20))")
                    #expect(GatewayHarness.errorCode(response) == "unknown_app")
                }
            }

            // /v1/events: the bad events are rejected with the reason, the good one goes through.
            let server = TestEnvironment.unique("shop")
            try await GatewayHarness.register(client, "server", server, ["secret": Self.secret])
            let memberApp = TestEnvironment.unique("wxm")
            let time = RFC3339.format(Date().addingTimeInterval(-5))
            func event(_ id: String, openid: String, kind: String = "community.post") -> JSONValue {
                .object(["id": .string(id), "kind": .string(kind), "occurredAt": .string(time),
                         "member": .object(["platform": "wechat", "app": .string(memberApp), "openid": .string(openid)])])
            }
            let batch = JSONValue.object(["events": .array([
                event("good", openid: "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"),
                event("long", openid: String(repeating: "o", count: 5000)),
                event("nul", openid: "victim\u{0}evil"),
                event("emoji", openid: String(repeating: "🎉", count: 900)),
                event("platform-kind", openid: "o1", kind: "wechat.event.member_checkin"),
                event("long-kind", openid: "o1", kind: String(repeating: "k", count: 300)),
            ])]).jsonBytes
            try await client.execute(uri: "/v1/events", method: .post, headers: Self.signed(batch, app: server),
                                     body: ByteBuffer(bytes: batch)) { response in
                #expect(response.status == .ok)
                let results = GatewayHarness.json(response)["results"] as? [[String: Any]] ?? []
                #expect(results.map { $0["status"] as? String ?? "" } == ["accepted", "rejected", "rejected", "rejected", "rejected", "rejected"])
                for result in results[1...3] {
                    #expect((result["reason"] as? String)?.hasPrefix("invalid_subject") == true)
                }
                #expect((results[4]["reason"] as? String)?.contains("kind") == true)
            }
            let published = try await tap.wait(app: memberApp, count: 1)
            #expect(published.map(\.envelope.subject.openid) == ["oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"])
            #expect(published.first?.envelope.subject.verified == true)

            // Beacons: a page that sends a malformed openid gets the whole beacon refused.
            let site = TestEnvironment.unique("site")
            try await GatewayHarness.register(client, "server", site, ["secret": Self.secret])
            for openid in [String(repeating: "o", count: 129), "victim\\u0000evil", "o pen"] {
                let beacon = #"{"site":"\#(site)","clientId":"c-1","events":[{"id":"\#(UUID().uuidString)","type":"page_view","occurredAt":"\#(time)","openid":"\#(openid)"}]}"#
                try await client.execute(uri: "/v1/collect", method: .post, body: ByteBuffer(string: beacon)) { response in
                    #expect(response.status == .badRequest)
                    #expect(GatewayHarness.errorCode(response) == "invalid_subject")
                }
            }
            // An attribute with NUL is that event's rejection, not the batch's.
            let nul = #"{"site":"\#(site)","clientId":"c-1","events":[{"id":"\#(UUID().uuidString)","type":"page_view","occurredAt":"\#(time)","title":"a\u0000b"}]}"#
            try await client.execute(uri: "/v1/collect", method: .post, body: ByteBuffer(string: nul)) { response in
                #expect(response.status == .ok)
                #expect(GatewayHarness.json(response)["accepted"] as? Int == 0)
            }
            try await Task.sleep(for: .milliseconds(300))
            #expect(tap.envelopes(app: app).isEmpty)
            #expect(tap.envelopes(app: site).isEmpty)
        }
    }

    @Test("times outside 2000..2100 in /v1/events and beacons are rejected per event")
    func batchTimes() async throws {
        try await GatewayHarness.run { client, tap, _ in
            let site = TestEnvironment.unique("site")
            try await GatewayHarness.register(client, "server", site, ["secret": Self.secret])
            let now = RFC3339.format(Date())
            let ids = [UUID().uuidString, UUID().uuidString, UUID().uuidString]
            let beacon = #"{"site":"\#(site)","clientId":"c-1","events":[{"id":"\#(ids[0])","type":"page_view","occurredAt":"\#(now)"},{"id":"\#(ids[1])","type":"page_view","occurredAt":"9999-12-31T23:59:59Z"},{"id":"\#(ids[2])","type":"page_view","occurredAt":"1970-01-01T00:00:00Z"}]}"#
            try await client.execute(uri: "/v1/collect", method: .post, body: ByteBuffer(string: beacon)) { response in
                #expect(response.status == .ok)
                let answer = GatewayHarness.json(response)
                #expect(answer["accepted"] as? Int == 1)
                let rejected = answer["rejected"] as? [[String: Any]] ?? []
                #expect(rejected.count == 2)
                #expect(rejected.allSatisfy { ($0["reason"] as? String)?.hasPrefix("malformed_message") == true })
            }
            let published = try await tap.wait(app: site, count: 1)
            #expect(published.count == 1)
        }
    }

    @Test("a beacon with a member token is the member's, verified; without one its openid is a claim; a bad token is 401")
    func beaconVerification() async throws {
        try await GatewayHarness.run { client, tap, gateway in
            let site = TestEnvironment.unique("site")
            try await GatewayHarness.register(client, "server", site, ["secret": Self.secret])
            let time = RFC3339.format(Date())
            func beacon(_ id: String, token: String? = nil) -> String {
                let field = token.map { #","token":"\#($0)""# } ?? ""
                return #"{"site":"\#(site)","clientId":"c-1"\#(field),"events":[{"id":"\#(id)","type":"page_view","occurredAt":"\#(time)","openid":"o-page-claims","memberId":99}]}"#
            }
            let token = gateway.memberTokens.mint(member: 4242, expiresAt: Date().addingTimeInterval(600))
            let claimed = UUID().uuidString, byHeader = UUID().uuidString, byField = UUID().uuidString
            try await client.execute(uri: "/v1/collect", method: .post, body: ByteBuffer(string: beacon(claimed))) { response in
                #expect(response.status == .ok)
            }
            try await client.execute(uri: "/v1/collect", method: .post, headers: [.authorization: "Bearer \(token)"],
                                     body: ByteBuffer(string: beacon(byHeader))) { response in
                #expect(response.status == .ok)
            }
            try await client.execute(uri: "/v1/collect", method: .post, body: ByteBuffer(string: beacon(byField, token: token))) { response in
                #expect(response.status == .ok)
            }
            let expired = gateway.memberTokens.mint(member: 4242, expiresAt: Date().addingTimeInterval(-1))
            let refused: [(HTTPFields, String)] = [([.authorization: "Bearer m1.4242.9999999999.forged"], "bad_token"),
                                                   ([.authorization: "Bearer \(expired)"], "token_expired")]
            for (headers, code) in refused {
                try await client.execute(uri: "/v1/collect", method: .post, headers: headers,
                                         body: ByteBuffer(string: beacon(UUID().uuidString))) { response in
                    #expect(response.status == .unauthorized)
                    #expect(GatewayHarness.errorCode(response) == code)
                }
            }
            let published = try await tap.wait(app: site, count: 3)
            #expect(published.count == 3)
            let byID = Dictionary(published.map { ($0.envelope.id, $0.envelope) }, uniquingKeysWith: { first, _ in first })
            let open = try #require(byID[EventID.derive(.h5, app: site, ["beacon", claimed.lowercased()])])
            #expect(open.subject == Envelope.Subject(openid: "o-page-claims", verified: false))
            #expect(open.attributes["memberId"] == nil)
            for id in [byHeader, byField] {
                let member = try #require(byID[EventID.derive(.h5, app: site, ["beacon", id.lowercased()])])
                #expect(member.subject == Envelope.Subject(memberId: 4242, verified: true))
                #expect(member.attributes["memberId"] == .integer(4242))
            }
        }
    }

    @Test("/v1/events refuses business kinds in a platform's namespace; a WeChat event named member.checkin is not one")
    func passthroughKinds() async throws {
        try await GatewayHarness.run { client, tap, _ in
            let app = TestEnvironment.unique("wx")
            try await GatewayHarness.register(client, "wechat", app, ["token": "tok"])
            let xml = "<xml><ToUserName>gh</ToUserName><FromUserName>fan-1</FromUserName><CreateTime>\(Self.now)</CreateTime>"
                + "<MsgType>event</MsgType><Event>member.checkin</Event></xml>"
            try await client.execute(uri: "/wechat/\(app)?\(Self.wechatQuery(token: "tok"))", method: .post,
                                     body: ByteBuffer(string: xml)) { response in
                #expect(response.status == .ok)
            }
            let published = try await tap.wait(app: app, count: 1)
            let event = try #require(published.first)
            #expect(event.envelope.kind.rawValue == "wechat.event.member_checkin")
            #expect(event.routingKey == "wechat.wechat.event.member_checkin")
            #expect(event.envelope.kind != .memberCheckin)
        }
    }
}

/// Arithmetic on what the admin API and pages send never traps.
@Suite("Input arithmetic over HTTP")
struct InputArithmeticTests {
    @Test("a gift of 2^62 points redeemed three times is 409 insufficient_points, stock untouched, the gateway alive")
    func giftCostOverflow() async throws {
        let h = try await PointsHarness.open()
        let kind = h.kind("gift")
        let pool = h.pool(.init(rules: [PointsRule(code: "\(h.prefix)-g", kinds: [kind], points: 25, growth: 0, reason: "gift")],
                                levels: .standard))
        try await pool.process([h.event("p1", kind, openid: "dave", at: "2026-12-01T10:00:00+08:00")])
        let dave = try #require(try await h.member("dave")).id
        let gift = "\(h.prefix)-gold"
        try await GatewayHarness.run { client, _, _ in
            var (status, json) = try await MemberActionTests.call(client, .put, "/admin/v1/gifts/\(gift)",
                                                                  #"{"name":"gold","points":4611686018427387904,"stock":10}"#)
            #expect(status == .ok)
            let auth = try await MemberActionTests.token(client, member: dave)
            // Before the fix, 2^62 × 3 trapped inside the redemption's transaction.
            (status, json) = try await MemberActionTests.call(client, .post, "/v1/mall/redemptions",
                                                              #"{"giftId":"\#(gift)","quantity":3,"requestId":"req-overflow-1"}"#, headers: auth)
            #expect(status == .conflict)
            #expect((json["error"] as? [String: Any])?["code"] as? String == "insufficient_points")
            (status, json) = try await MemberActionTests.call(client, .get, "/admin/v1/gifts/\(gift)")
            #expect(json["stock"] as? Int == 10)
            (status, json) = try await MemberActionTests.call(client, .post, "/v1/mall/redemptions",
                                                              #"{"giftId":"\#(gift)","requestId":"req\u0000-evil"}"#, headers: auth)
            #expect(status == .badRequest)
            #expect((json["error"] as? [String: Any])?["code"] as? String == "invalid_request_id")
            try await InputHardeningTests.health(client)
        }
        #expect(try await h.member("dave")?.points == 25)
        await h.close()
    }
}

/// Numbers a platform's API answers with are input too.
@Suite("Platform answers")
struct PlatformAnswerTests {
    @Test("a stable_token answer with expires_in Int64.max is malformed, not a token whose expiry traps in the broker")
    func absurdTokenLifetime() async throws {
        let router = Router()
        router.post("/cgi-bin/stable_token") { _, _ in
            Response(status: .ok, headers: [.contentType: "application/json"],
                     body: .init(byteBuffer: ByteBuffer(string: #"{"access_token":"t","expires_in":9223372036854775807}"#)))
        }
        try await Application(router: router).test(.live) { client in
            let wechat = WeChatClient(http: HTTPClient.shared, base: "http://127.0.0.1:\(try #require(client.port))")
            await #expect(throws: WeChatClient.Failure.self) {
                _ = try await wechat.stableToken(app: "wx1", secret: "s", forceRefresh: false)
            }
        }
    }
}

/// A claimed subject reaches the points pool only through rules that opt in. The gateway makes
/// claims only of beacons, which earn nothing (``SubjectTests``); this is the rule's own check.
@Suite("Claimed subjects and points")
struct ClaimedPointsTests {
    @Test("a claimed envelope grants nothing under a normal rule, and grants under an allowClaimed rule")
    func claimedGrants() async throws {
        let h = try await PointsHarness.open()
        let strict = h.kind("strict"), open = h.kind("open")
        let program = RuleBook.Program(rules: [
            PointsRule(code: "\(h.prefix)-strict", kinds: [strict], points: 5, growth: 1, reason: "strict"),
            PointsRule(code: "\(h.prefix)-open", kinds: [open], points: 7, growth: 2, reason: "open", allowClaimed: true),
        ], levels: .standard, calendar: BusinessCalendar(timeZone: h.timeZone))
        func claimed(_ id: String, _ kind: EventKind, _ openid: String) -> Envelope {
            var event = h.event(id, kind, openid: openid, at: "2026-12-01T10:00:00+08:00")
            event.subject.verified = false
            return event
        }
        let pool = h.pool(program)
        try await pool.process([claimed("c1", strict, "o1"), claimed("c2", open, "o1")])
        #expect(try await h.member("o1")?.points == 7)
        // The same normal rule grants a verified subject.
        try await pool.process([h.event("v1", strict, openid: "o2", at: "2026-12-01T10:00:00+08:00")])
        #expect(try await h.member("o2")?.points == 5)
        await h.close()
    }
}
