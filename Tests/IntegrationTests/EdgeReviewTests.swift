import Contracts
import Foundation
@testable import Gateway
import Hummingbird
import HummingbirdTesting
import HTTPTypes
import Platforms
import PostgresClient
import RedisClient
import Testing

/// Fixes from a review of the gateway's edges, each over real HTTP and real servers.
@Suite("Gateway edges: review fixes")
struct EdgeReviewTests {
    static func subscribe(_ from: String) -> ByteBuffer {
        ByteBuffer(string: "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[\(from)]]></FromUserName><CreateTime>\(GatewayWebhookTests.now)</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe]]></Event></xml>")
    }

    @Test("WeChat plain mode: digits moved from the nonce onto the timestamp (same signature, fresh milliseconds) carry no forged body")
    func wechatDigitShift() async throws {
        try await GatewayHarness.run { client, tap, _ in
            let app = TestEnvironment.unique("wx")
            try await GatewayHarness.register(client, "wechat", app, ["token": "tok"])
            // The captured request: its nonce sorts after its timestamp ("9…" > "1…"), so WeChat
            // signs `timestamp + nonce + token`.
            let timestamp = GatewayWebhookTests.now, nonce = "9424242424"
            let signature = WeChatCrypto.signature(["tok", timestamp, nonce])
            let genuine = try await client.execute(uri: "/wechat/\(app)?signature=\(signature)&timestamp=\(timestamp)&nonce=\(nonce)",
                                                   method: .post, body: Self.subscribe("fan-1"))
            #expect(genuine.status == .ok)
            // The attack: three digits of the nonce onto the timestamp, which now reads as fresh
            // milliseconds; the joined string, and so the signature, are the same.
            let shiftedTimestamp = timestamp + "942", shiftedNonce = "4242424"
            #expect(WeChatCrypto.signature(["tok", shiftedTimestamp, shiftedNonce]) == signature)
            let forged = try await client.execute(
                uri: "/wechat/\(app)?signature=\(signature)&timestamp=\(shiftedTimestamp)&nonce=\(shiftedNonce)",
                method: .post, body: Self.subscribe("attacker-chosen"))
            #expect(forged.status != .ok, "\(String(buffer: forged.body))")
            #expect(forged.status == .badRequest && GatewayHarness.errorCode(forged) == "missing_timestamp")
            let published = try await tap.wait(app: app, count: 1)
            #expect(published.map(\.envelope.subject.openid) == ["fan-1"])
        }
    }

    @Test("Weibo: digits moved from the millisecond timestamp onto the nonce (fresh seconds, same signature) are refused")
    func weiboDigitShift() async throws {
        try await GatewayHarness.run { client, _, _ in
            let app = TestEnvironment.unique("wb")
            try await GatewayHarness.register(client, "weibo", app, ["appSecret": "weibo-secret"])
            let seconds = GatewayWebhookTests.now
            let timestamp = seconds + "942", nonce = "555"  // Weibo's 13 digits of milliseconds
            let signature = WeChatCrypto.signature(["weibo-secret", timestamp, nonce])
            let genuine = try await client.execute(uri: "/weibo/\(app)?signature=\(signature)&timestamp=\(timestamp)&nonce=\(nonce)&echostr=e1",
                                                   method: .get)
            #expect(genuine.status == .ok)
            // `seconds` + `942555` joins to the same string: a 10-digit "fresh" timestamp.
            #expect(WeChatCrypto.signature(["weibo-secret", seconds, "942555"]) == signature)
            let shifted = try await client.execute(uri: "/weibo/\(app)?signature=\(signature)&timestamp=\(seconds)&nonce=942555&echostr=e2",
                                                   method: .get)
            #expect(shifted.status == .badRequest && GatewayHarness.errorCode(shifted) == "missing_timestamp",
                    "\(shifted.status) \(String(buffer: shifted.body))")
        }
    }

    @Test("Weibo's pushes sign the query, not the body: the same signature with another body is 403 replayed; the same request again passes")
    func weiboBodyReplay() async throws {
        try await GatewayHarness.run { client, _, _ in
            let app = TestEnvironment.unique("wb")
            try await GatewayHarness.register(client, "weibo", app, ["appSecret": "weibo-secret"])
            let timestamp = GatewayWebhookTests.now + "123", nonce = String(UInt32.random(in: 100_000...UInt32.max))
            let uri = "/weibo/\(app)?signature=\(WeChatCrypto.signature(["weibo-secret", timestamp, nonce]))&timestamp=\(timestamp)&nonce=\(nonce)"
            func push(_ text: String) -> ByteBuffer {
                ByteBuffer(string: #"{"type":"text","sender_id":"5123456789","receiver_id":"1902538057","created_at":"Mon Jul 16 18:09:20 +0800 2012","text":"\#(text)","data":{}}"#)
            }
            let genuine = try await client.execute(uri: uri, method: .post, body: push("hello"))
            #expect(genuine.status == .ok, "\(genuine.status) \(String(buffer: genuine.body))")
            let retry = try await client.execute(uri: uri, method: .post, body: push("hello"))
            #expect(retry.status == .ok)
            let forged = try await client.execute(uri: uri, method: .post, body: push("attacker-chosen"))
            #expect(forged.status == .forbidden && GatewayHarness.errorCode(forged) == "replayed",
                    "\(forged.status) \(String(buffer: forged.body))")
        }
    }

    @Test("the plain-mode replay guard keys on the signature: the same signature with another body is a replay whatever the pair")
    func replayGuardKeyedOnSignature() async throws {
        try await GatewayHarness.run { _, _, gateway in
            let app = TestEnvironment.unique("wx")
            let signature = WeChatCrypto.signature(["tok", GatewayWebhookTests.now, TestEnvironment.unique("n")])
            let a: [UInt8] = Array("a".utf8), b: [UInt8] = Array("b".utf8)
            let first = try await gateway.replays.check(app: app, signature: signature, body: a)
            let retry = try await gateway.replays.check(app: app, signature: signature, body: a)
            let forged = try await gateway.replays.check(app: app, signature: signature, body: b)
            let otherApp = try await gateway.replays.check(app: app + "x", signature: signature, body: b)
            #expect(first == .first && retry == .sameRequest && forged == .replayed && otherApp == .first)
        }
    }

    static let form: HTTPFields = [.contentType: "application/x-www-form-urlencoded"]

    @Test("Alipay payment notifications: bad app ids refused before any lookup, unknown ids count against the client's lookup limit")
    func alipayAppLimits() async throws {
        try await GatewayHarness.run(["FANFLOW_APP_LOOKUP_RATE_PER_IP": "1"]) { client, _, _ in
            // A NUL in the id: refused on its shape (no query, so no 503 from the NUL).
            let nul = try await client.execute(uri: "/v1/payments/notify/alipay", method: .post, headers: Self.form,
                                               body: ByteBuffer(string: "app_id=a%00b&sign=x&sign_type=RSA2"))
            #expect(nul.status == .notFound, "\(String(buffer: nul.body))")
            let prefix = TestEnvironment.unique("nx")
            var statuses: [HTTPResponse.Status] = []
            for n in 0..<6 {
                let response = try await client.execute(uri: "/v1/payments/notify/alipay", method: .post, headers: Self.form,
                                                        body: ByteBuffer(string: "app_id=\(prefix)-\(n)&sign=x&sign_type=RSA2"))
                statuses.append(response.status)
            }
            #expect(statuses.filter { $0 == .tooManyRequests }.count >= 3, "\(statuses.map(\.code))")
        }
    }

    @Test("a credentials 500 tells an outside caller only the code and request id; the operator's text stays in the log")
    func credentialsFailureGeneric() async throws {
        try await GatewayHarness.run { client, _, gateway in
            let app = TestEnvironment.unique("ali")
            try await gateway.database.query("INSERT INTO apps (platform, app_id, credentials) VALUES ('alipay', $1, $2)",
                                             [app, #"{"alipayPublicKey":"x","appPrivateKey":"y"}"#])
            let response = try await client.execute(uri: "/v1/payments/notify/alipay", method: .post, headers: Self.form,
                                                    body: ByteBuffer(string: "app_id=\(app)&sign=x&sign_type=RSA2"))
            let text = String(buffer: response.body)
            #expect(response.status == .internalServerError)
            #expect(text.hasPrefix("failure: credentials_not_sealed"), "\(text)")
            #expect(!text.contains("secrets seal") && !text.contains(app), "\(text)")
            if let id = response.headers[.requestID] { #expect(text.contains(id)) }
            try await gateway.database.query("DELETE FROM apps WHERE platform = 'alipay' AND app_id = $1", [app])
        }
    }

    @Test("a NUL that the PostgreSQL wrapper refuses is the client's 400 malformed_message, not a retryable 503")
    func nulParameterIsBadRequest() async throws {
        try await GatewayHarness.run { _, _, gateway in
            do {
                _ = try await gateway.database.query("SELECT $1::text AS t", ["victim\u{0}evil"])
                Issue.record("the NUL reached the server")
            } catch {
                let mapped = GatewayError.storage(error)
                #expect(mapped.status == .badRequest && mapped.code.rawValue == "malformed_message", "\(mapped)")
            }
        }
    }
}
