import Contracts
@preconcurrency import Crypto
import Foundation
@testable import Gateway
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Platforms
import PostgresClient
import Testing

/// `/v1/events`, beacons, the admin API and the broker-down path, over real HTTP and AMQP.
@Suite("Gateway API")
struct GatewayAPITests {
    static let secret = "server-secret-0123456789"

    static func signed(_ body: String, app: String, secret: String = secret,
                       timestamp: String = String(Int(Date().timeIntervalSince1970))) -> HTTPFields {
        let mac = HMAC<SHA256>.authenticationCode(for: Array((timestamp + "." + body).utf8), using: SymmetricKey(data: Array(secret.utf8)))
        return [.fanflowApp: app, .fanflowTimestamp: timestamp, .fanflowSignature: "sha256=" + Bytes.hex(mac),
                .contentType: "application/json"]
    }

    static func event(_ id: String, kind: String = "community.post", openid: String = "o1", extra: String = "") -> String {
        let time = RFC3339.format(Date().addingTimeInterval(-30))
        return #"{"id":"\#(id)","kind":"\#(kind)","member":{"platform":"wechat","app":"wx-shop","openid":"\#(openid)"},"occurredAt":"\#(time)"\#(extra)}"#
    }

    @Test("/v1/events: a bad event is rejected alone, a retry is duplicate, over 500 is 413, bad HMAC 403")
    func serverEvents() async throws {
        try await GatewayHarness.run { client, tap, _ in
            let app = TestEnvironment.unique("shop")
            try await GatewayHarness.register(client, "server", app, ["secret": Self.secret])
            let events = [
                Self.event("e1"),
                Self.event("e2", kind: "mall.order_paid", extra: #","attributes":{"orderId":"A-1","amount":"199"}"#),
                Self.event("e3", kind: "mall.order_paid", extra: #","attributes":{"orderId":"A-1","amount":19900}"#),
                #"{"id":"e4","kind":"member.checkin","occurredAt":"2024-01-01T00:00:00Z"}"#,
            ]
            let body = #"{"events":[\#(events.joined(separator: ","))]}"#
            let expected: [(String, String)] = [("e1", "accepted"), ("e2", "rejected"), ("e3", "accepted"), ("e4", "rejected")]
            try await client.execute(uri: "/v1/events", method: .post, headers: Self.signed(body, app: app), body: ByteBuffer(string: body)) { response in
                #expect(response.status == .ok)
                let results = GatewayHarness.json(response)["results"] as? [[String: Any]] ?? []
                #expect(results.map { ($0["id"] as? String ?? "", $0["status"] as? String ?? "") }.elementsEqual(expected, by: ==))
                #expect((results[1]["reason"] as? String)?.contains("amount") == true)
                #expect((results[3]["reason"] as? String) == "member is required")
                #expect(results[0]["reason"] is NSNull)
            }
            try await client.execute(uri: "/v1/events", method: .post, headers: Self.signed(body, app: app), body: ByteBuffer(string: body)) { response in
                let results = GatewayHarness.json(response)["results"] as? [[String: Any]] ?? []
                #expect(results.map { $0["status"] as? String ?? "" } == ["duplicate", "rejected", "duplicate", "rejected"])
            }
            let published = try await tap.wait(app: "wx-shop", count: 2)
            let mine = published.filter { $0.envelope.attributes["sourceApp"] == .string(app) }
            #expect(mine.count == 2)
            let order = try #require(mine.first { $0.envelope.kind == .orderPaid })
            #expect(order.envelope.attributes["amount"] == .integer(19900))
            #expect(order.routingKey == "wechat.mall.order_paid")

            let many = #"{"events":[\#((0..<501).map { Self.event("m\($0)") }.joined(separator: ","))]}"#
            try await client.execute(uri: "/v1/events", method: .post, headers: Self.signed(many, app: app), body: ByteBuffer(string: many)) { response in
                #expect(response.status == .contentTooLarge)
                #expect(GatewayHarness.errorCode(response) == "too_many_events")
            }
            try await client.execute(uri: "/v1/events", method: .post, headers: Self.signed(body, app: app, secret: "wrong-secret-0123456789"),
                                     body: ByteBuffer(string: body)) { response in
                #expect(response.status == .forbidden)
            }
            let old = String(Int(Date().timeIntervalSince1970) - 600)
            try await client.execute(uri: "/v1/events", method: .post, headers: Self.signed(body, app: app, timestamp: old),
                                     body: ByteBuffer(string: body)) { response in
                #expect(response.status == .forbidden)
                #expect(GatewayHarness.errorCode(response) == "stale_timestamp")
            }
            try await client.execute(uri: "/v1/events", method: .post, headers: Self.signed("{", app: app), body: ByteBuffer(string: "{")) { response in
                #expect(response.status == .badRequest)
                #expect(GatewayHarness.errorCode(response) == "malformed_json")
            }
            #expect(tap.envelopes(app: "wx-shop").filter { $0.envelope.attributes["sourceApp"] == .string(app) }.count == 2)
        }
    }

    @Test("Beacons: JSON and sendBeacon text/plain, the pixel, sdk.js; unknown site 404; per-IP limit 429")
    func beacons() async throws {
        try await GatewayHarness.run(["FANFLOW_BEACON_RATE_PER_IP": "5"]) { client, tap, _ in
            let site = TestEnvironment.unique("site")
            try await GatewayHarness.register(client, "server", site, ["secret": Self.secret])
            let time = RFC3339.format(Date())
            let view = UUID().uuidString, share = UUID().uuidString
            let batch = #"{"site":"\#(site)","clientId":"c-1","events":[{"id":"\#(view)","type":"page_view","occurredAt":"\#(time)","url":"https://brand.example/p?ff_sb=o-sharer","title":"Spring","referrer":"","openid":"o-visitor","sharedBy":"o-sharer"},{"id":"\#(share)","type":"share","occurredAt":"\#(time)","url":"https://brand.example/p","title":"Spring","referrer":"","channel":"moments"}]}"#
            try await client.execute(uri: "/v1/collect", method: .post, headers: [.contentType: "text/plain;charset=UTF-8"],
                                     body: ByteBuffer(string: batch)) { response in
                #expect(response.status == .ok)
                #expect(GatewayHarness.json(response)["accepted"] as? Int == 2)
            }
            let pixelBatch = #"{"clientId":"c-2","events":[{"id":"\#(UUID().uuidString)","type":"dwell","occurredAt":"\#(time)","url":"u","title":"t","referrer":"","dwellMs":5300}]}"#
            let encoded = pixelBatch.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
            try await client.execute(uri: "/v1/collect.gif?site=\(site)&d=\(encoded)", method: .get) { response in
                #expect(response.status == .ok)
                #expect(response.headers[.contentType] == "image/gif")
            }
            try await client.execute(uri: "/v1/sdk.js", method: .get) { response in
                #expect(response.status == .ok)
                #expect(response.body.readableBytes > 1000 && response.body.readableBytes < 64 * 1024)
                #expect(String(buffer: response.body).contains("sendBeacon"))
            }
            try await client.execute(uri: "/v1/collect", method: .post, body: ByteBuffer(string: batch.replacingOccurrences(of: site, with: "nosuchsite"))) { response in
                #expect(response.status == .notFound)
            }
            // The IP's bucket holds ten (two seconds at 5/s): twelve at once are refused however long
            // the test took so far.
            let bigger = #"{"site":"\#(site)","clientId":"c-3","events":[\#((0..<12).map { _ in #"{"id":"\#(UUID().uuidString)","type":"click","occurredAt":"\#(time)","url":"u","title":"t","referrer":""}"# }.joined(separator: ","))]}"#
            try await client.execute(uri: "/v1/collect", method: .post, body: ByteBuffer(string: bigger)) { response in
                #expect(response.status == .tooManyRequests)
                #expect(GatewayHarness.errorCode(response) == "rate_limited")
            }
            let published = try await tap.wait(app: site, count: 3)
            #expect(published.count == 3)
            #expect(published.allSatisfy { $0.envelope.platform == .h5 && $0.routingKey.hasPrefix("h5.") })
            let pageView = try #require(published.first { $0.envelope.kind == .pageView })
            #expect(pageView.envelope.subject.openid == "o-visitor")
            #expect(pageView.envelope.attributes["sharedBy"] == .string("o-sharer"))
            #expect(pageView.envelope.attributes["clientId"] == .string("c-1"))
            #expect(published.first { $0.envelope.kind == .dwell }?.envelope.attributes["dwellMs"] == .integer(5300))
        }
    }

    @Test("Admin apps API: bearer token required, secrets masked, encrypted at rest with FANFLOW_SECRET_KEY")
    func adminApps() async throws {
        let key = Data((0..<32).map { _ in UInt8.random(in: 0...255) }).base64EncodedString()
        try await GatewayHarness.run(["FANFLOW_SECRET_KEY": key]) { client, _, gateway in
            let app = TestEnvironment.unique("wx")
            let uri = "/admin/v1/apps/wechat/\(app)"
            let credentials = #"{"token":"plain-token-value","encodingAESKey":"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG","appSecret":"app-secret-value-9876"}"#
            try await client.execute(uri: uri, method: .put, body: ByteBuffer(string: credentials)) { response in
                #expect(response.status == .unauthorized)
            }
            try await client.execute(uri: uri, method: .put, headers: [.authorization: "Bearer not-the-token-at-all"],
                                     body: ByteBuffer(string: credentials)) { response in
                #expect(response.status == .forbidden)
            }
            try await client.execute(uri: uri, method: .put, headers: GatewayHarness.adminHeaders, body: ByteBuffer(string: credentials)) { response in
                #expect(response.status == .created)
                let shown = GatewayHarness.json(response)["credentials"] as? [String: String] ?? [:]
                #expect(shown["appSecret"] == "****9876")
                #expect(!String(buffer: response.body).contains("app-secret-value"))
                #expect(GatewayHarness.json(response)["encryptedAtRest"] as? Bool == true)
            }
            try await client.execute(uri: uri, method: .put, headers: GatewayHarness.adminHeaders, body: ByteBuffer(string: credentials)) { response in
                #expect(response.status == .ok)
            }
            try await client.execute(uri: uri, method: .get, headers: GatewayHarness.adminHeaders) { response in
                #expect(response.status == .ok)
                #expect(!String(buffer: response.body).contains("plain-token-value"))
            }
            let stored = try await gateway.database.query("SELECT credentials FROM apps WHERE platform = 'wechat' AND app_id = $1", [app])
            let row = try #require(stored.first?.string("credentials"))
            #expect(row.hasPrefix("v2:") && !row.contains("app-secret-value"))

            try await client.execute(uri: uri, method: .put, headers: GatewayHarness.adminHeaders,
                                     body: ByteBuffer(string: #"{"token":"t","encodingAESKey":"too-short"}"#)) { response in
                #expect(response.status == .badRequest)
                #expect(GatewayHarness.errorCode(response) == "invalid_credentials")
            }
            let badKeys = #"{"alipayPublicKey":"not a key","appPrivateKey":"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"}"#
            try await client.execute(uri: "/admin/v1/apps/alipay/\(app)", method: .put, headers: GatewayHarness.adminHeaders,
                                     body: ByteBuffer(string: badKeys)) { response in
                #expect(response.status == .badRequest)
                #expect(GatewayHarness.errorCode(response) == "invalid_credentials")
                #expect(String(buffer: response.body).contains("alipayPublicKey"))
            }
            try await client.execute(uri: "/admin/v1/apps?platform=wechat", method: .get, headers: GatewayHarness.adminHeaders) { response in
                let listed = (GatewayHarness.json(response)["apps"] as? [[String: Any]] ?? []).compactMap { $0["appId"] as? String }
                #expect(listed.contains(app))
            }
            try await client.execute(uri: "/admin/v1/apps/alipay/\(app)", method: .get, headers: GatewayHarness.adminHeaders) { response in
                #expect(response.status == .notFound)
            }
            try await client.execute(uri: "/admin/v1/apps/myspace/\(app)", method: .put, headers: GatewayHarness.adminHeaders,
                                     body: ByteBuffer(string: credentials)) { response in
                #expect(response.status == .badRequest)
                #expect(GatewayHarness.errorCode(response) == "unknown_platform")
            }
            try await client.execute(uri: uri, method: .delete, headers: GatewayHarness.adminHeaders) { response in
                #expect(response.status == .noContent)
            }
            try await client.execute(uri: uri, method: .get, headers: GatewayHarness.adminHeaders) { response in
                #expect(response.status == .notFound)
            }
        }
    }

    @Test("Broker unreachable: the webhook is answered 503 within the deadline; after it returns the retry is published")
    func brokerDown() async throws {
        let amqp = TestEnvironment.amqpURL
        let brokerPort = Int(amqp.split(separator: ":").last?.split(separator: "/").first ?? "5672") ?? 5672
        let proxy = try CuttableProxy(targetPort: brokerPort)
        let viaProxy = amqp.replacingOccurrences(of: ":\(brokerPort)", with: ":\(proxy.port)")
        try await GatewayHarness.run(["FANFLOW_AMQP_URL": viaProxy]) { client, tap, _ in
            let app = TestEnvironment.unique("wx")
            try await GatewayHarness.register(client, "wechat", app, ["token": "tok"])
            let xml = "<xml><ToUserName>gh</ToUserName><FromUserName>fan</FromUserName><CreateTime>\(Int(Date().timeIntervalSince1970))</CreateTime><MsgType>event</MsgType><Event>subscribe</Event></xml>"
            let uri = "/wechat/\(app)?\(GatewayWebhookTests.wechatQuery(token: "tok"))"

            proxy.cut()
            let started = ContinuousClock.now
            try await client.execute(uri: uri, method: .post, body: ByteBuffer(string: xml)) { response in
                #expect(response.status == .serviceUnavailable)
                #expect(GatewayHarness.errorCode(response) == "publish_unconfirmed")
            }
            #expect(ContinuousClock.now - started < .seconds(4), "the platform retries after 5 s: the error must come first")
            #expect(tap.envelopes(app: app).isEmpty)

            proxy.restore()
            var status: HTTPResponse.Status = .serviceUnavailable
            for _ in 0..<60 where status != .ok {
                try await Task.sleep(for: .milliseconds(250))
                status = try await client.execute(uri: uri, method: .post, body: ByteBuffer(string: xml)) { $0.status }
            }
            #expect(status == .ok)
            let published = try await tap.wait(app: app, count: 1)
            #expect(published.count == 1)
        }
    }

    @Test("Redis unreachable: webhooks are still published (without retry detection) and counted")
    func redisDown() async throws {
        let redis = try await ThrowawayRedis.start()
        try await GatewayHarness.run(["FANFLOW_REDIS_URL": redis.url]) { client, tap, _ in
            let app = TestEnvironment.unique("wx")
            try await GatewayHarness.register(client, "wechat", app, ["token": "tok"])
            await redis.stop()
            let xml = "<xml><ToUserName>gh</ToUserName><FromUserName>fan</FromUserName><CreateTime>\(Int(Date().timeIntervalSince1970))</CreateTime><MsgType>text</MsgType><Content>hi</Content><MsgId>77</MsgId></xml>"
            try await client.execute(uri: "/wechat/\(app)?\(GatewayWebhookTests.wechatQuery(token: "tok"))", method: .post,
                                     body: ByteBuffer(string: xml)) { response in
                #expect(response.status == .ok)
                #expect(String(buffer: response.body) == "success")
            }
            #expect(try await tap.wait(app: app, count: 1).count == 1)
            try await client.execute(uri: "/metrics", method: .get) { response in
                #expect(String(buffer: response.body).contains("fanflow_gateway_dedupe_unavailable_total 1"))
            }
        }
    }

    @Test("a retry while the first attempt is still being published is answered 503 in_flight, not success")
    func retryWhileInFlight() async throws {
        try await GatewayHarness.run { client, tap, gateway in
            let app = TestEnvironment.unique("wx")
            try await GatewayHarness.register(client, "wechat", app, ["token": "tok"])
            // What the first attempt's claim looks like while its publish awaits the confirm.
            let key = "fanflow:seen:" + EventID.derive(.wechat, app: app, ["msg", "88"])
            _ = try await gateway.redis.connection.command(["SET", key, "another-request-token", "PX", "30000"])
            let xml = "<xml><ToUserName>gh</ToUserName><FromUserName>fan</FromUserName><CreateTime>\(Int(Date().timeIntervalSince1970))</CreateTime><MsgType>text</MsgType><Content>hi</Content><MsgId>88</MsgId></xml>"
            let uri = "/wechat/\(app)?\(GatewayWebhookTests.wechatQuery(token: "tok"))"
            try await client.execute(uri: uri, method: .post, body: ByteBuffer(string: xml)) { response in
                #expect(response.status == .serviceUnavailable)
                #expect(GatewayHarness.errorCode(response) == "in_flight")
            }
            // The first attempt failed and released its claim: the platform's next retry goes through.
            _ = try await gateway.redis.connection.command(["DEL", key])
            try await client.execute(uri: uri, method: .post, body: ByteBuffer(string: xml)) { response in
                #expect(response.status == .ok)
            }
            #expect(try await tap.wait(app: app, count: 1).count == 1)
        }
    }

    @Test("/metrics counts requests, errors by code, events by outcome and publish latency")
    func metrics() async throws {
        try await GatewayHarness.run { client, _, _ in
            try await client.execute(uri: "/wechat/nosuchapp-metrics", method: .get) { _ in }
            try await client.execute(uri: "/metrics", method: .get) { response in
                let text = String(buffer: response.body)
                #expect(text.contains(#"fanflow_gateway_errors_total{code="unknown_app"} 1"#))
                #expect(text.contains("fanflow_gateway_publish_seconds_bucket"))
                #expect(text.contains("fanflow_gateway_confirms_outstanding 0"))
            }
        }
    }
}
