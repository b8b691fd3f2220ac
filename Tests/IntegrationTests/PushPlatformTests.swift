@preconcurrency import _CryptoExtras
import AsyncHTTPClient
import FakePlatform
import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
@testable import Platforms
@testable import Pushes
import RedisClient
import Testing

/// The platform client, the shared access token and the outcome policy, against the fake WeChat
/// over real HTTP and a real Redis.
@Suite("Push platform")
struct PushPlatformTests {
    static let logger = Logger(label: "test.push")

    /// A fake WeChat on a port of its own, an app registered in it, and a sender through a broker.
    static func withPlatform(_ body: @Sendable (FakeWeChat, PushSender, AccessTokenBroker, String) async throws -> Void) async throws {
        let fake = FakeWeChat()
        let app = TestEnvironment.unique("wxapp"), secret = "secret-\(app)"
        fake.register(app: app, secret: secret)
        let router = Router()
        fake.addRoutes(to: router)
        try await serving(router) { base, redis in
            let client = WeChatClient(http: HTTPClient.shared, base: base)
            let broker = AccessTokenBroker(redis: redis, client: client, secrets: { $0 == app ? secret : nil }, logger: logger)
            try await body(fake, PushSender(client: client, broker: broker), broker, app)
        }
    }

    /// `router` live on a port of its own (its base URL), beside a Redis pool closed afterwards.
    static func serving(_ router: Router<BasicRequestContext>, _ body: @Sendable (String, RedisPool) async throws -> Void) async throws {
        let redis = try await RedisPool(url: TestEnvironment.redisURL, size: 2)
        do {
            try await Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0))).test(.live) { client in
                try await body("http://127.0.0.1:\(try #require(client.port))", redis)
            }
        } catch {
            await redis.close()
            throw error
        }
        await redis.close()
    }

    static func message(_ openid: String) -> WeChatClient.TemplateMessage {
        WeChatClient.TemplateMessage(toUser: openid, templateID: "TPL-points", url: "https://brand.example/points",
                                     data: ["first": "You earned points", "keyword1": "20", "remark": "Thanks"])
    }

    static func sendAll(_ sender: PushSender, app: String, count: Int) async -> [PushSender.Outcome] {
        await withTaskGroup(of: PushSender.Outcome.self) { group in
            for index in 0..<count { group.addTask { await sender.sendTemplate(app: app, message("openid-\(index)")) } }
            return await group.reduce(into: []) { $0.append($1) }
        }
    }

    @Test("20 concurrent sends with an expired token make exactly one refresh; with an invalidated one, exactly one forced refresh")
    func oneRefresh() async throws {
        try await Self.withPlatform { fake, sender, broker, app in
            _ = try await broker.token(app: app)
            #expect(fake.tokenIssues == 1)

            fake.expireTokens()
            let expired = await Self.sendAll(sender, app: app, count: 20)
            #expect(expired.allSatisfy { if case .sent = $0 { true } else { false } }, "\(expired)")
            #expect(fake.tokenIssues == 2)
            #expect(fake.forcedRefreshes == 0)

            fake.invalidateTokens()
            let invalid = await Self.sendAll(sender, app: app, count: 20)
            #expect(invalid.allSatisfy { if case .sent = $0 { true } else { false } }, "\(invalid)")
            #expect(fake.tokenIssues == 3)
            #expect(fake.forcedRefreshes == 1)
            #expect(broker.counters.forced.load(ordering: .relaxed) == 1)
            #expect(fake.sent.count == 40)
            #expect(fake.sent.first?.templateID == "TPL-points")

            // Forced refreshes past the platform's 20 a day are counted as over budget (and logged as errors).
            for index in 0..<20 {
                fake.invalidateTokens()
                if case .sent = await sender.sendTemplate(app: app, Self.message("again-\(index)")) {} else { Issue.record("not sent after a forced refresh") }
            }
            #expect(fake.forcedRefreshes == 21)
            #expect(broker.counters.overBudget.load(ordering: .relaxed) == 1)
        }
    }

    @Test("43004 and 43101 are refused without a retry; 45009 is deferred; 5xx, -1 and a dead platform ask for a retry; bad data is refused")
    func outcomes() async throws {
        try await Self.withPlatform { fake, sender, _, app in
            fake.refuse(openid: "gone", errcode: 43004)
            fake.refuse(openid: "blocking", errcode: 43101)
            let before = fake.sent.count
            if case .refused(.unsubscribed, let detail) = await sender.sendTemplate(app: app, Self.message("gone")), detail.hasPrefix("errcode 43004") {} else { Issue.record("43004 not refused") }
            if case .refused(.userBlock, _) = await sender.sendTemplate(app: app, Self.message("blocking")) {} else { Issue.record("43101 not refused") }
            #expect(fake.sent.count == before)

            fake.setQuota(app: app, limit: 0)
            if case .deferred = await sender.sendTemplate(app: app, Self.message("a")) {} else { Issue.record("45009 not deferred") }
            fake.setQuota(app: app, limit: nil)
            if case .sent = await sender.sendTemplate(app: app, Self.message("a")) {} else { Issue.record("not sent after the quota reset") }

            fake.inject(status: 502)
            if case .retry(let reason) = await sender.sendTemplate(app: app, Self.message("b")) { #expect(reason == "HTTP 502") } else {
                Issue.record("5xx not retried")
            }
            fake.inject(errcode: -1)
            if case .retry = await sender.sendTemplate(app: app, Self.message("b")) {} else { Issue.record("-1 not retried") }

            var bad = Self.message("c")
            bad.templateID = ""
            if case .refused(.refused, let detail) = await sender.sendTemplate(app: app, bad), detail.hasPrefix("errcode 40037") {} else { Issue.record("bad template id not refused") }
            #expect(await sender.sendText(app: app, toUser: "d", content: "Welcome!") == .sent(messageID: 0))
            #expect(fake.sent.last?.kind == "custom")
        }
        // Nobody listening: a network failure, retried later.
        let redis = try await RedisPool(url: TestEnvironment.redisURL, size: 1)
        let client = WeChatClient(http: HTTPClient.shared, base: "http://127.0.0.1:1", timeout: .seconds(2))
        let broker = AccessTokenBroker(redis: redis, client: client, secrets: { _ in "s" }, logger: Self.logger)
        if case .retry = await PushSender(client: client, broker: broker).sendTemplate(app: TestEnvironment.unique("wx"), Self.message("e")) {} else {
            Issue.record("a dead platform is not a retry")
        }
        await redis.close()
    }

    // MARK: Alipay

    /// An Alipay app's key pair, as a brand generates it for the Alipay console.
    static func appKeys() throws -> (privateKey: String, publicKey: String) {
        let key = try _RSA.Signing.PrivateKey(keySize: .bits2048)
        return (key.derRepresentation.base64EncodedString(), key.publicKey.derRepresentation.base64EncodedString())
    }

    /// A fake Alipay gateway on a port of its own, `app` registered there with its public key, and a
    /// sender whose keyring holds the app's private key and the fake's public key (`alipayPublicKey`).
    static func withAlipay(_ body: @Sendable (FakeAlipay, PushSender, String, _ base: String) async throws -> Void) async throws {
        let fake = try FakeAlipay()
        let app = "2021" + String(UInt64.random(in: 100_000_000_000...999_999_999_999))
        let keys = try appKeys()
        try fake.register(app: app, publicKey: keys.publicKey)
        let router = Router()
        fake.addRoutes(to: router)
        try await serving(router) { base, redis in
            let wechat = WeChatClient(http: HTTPClient.shared, base: base)
            let broker = AccessTokenBroker(redis: redis, client: wechat, secrets: { _ in nil }, logger: logger)
            let keyring = AlipayKeyring { candidate in
                candidate == app ? try AlipayCrypto(alipayPublicKey: fake.alipayPublicKey, appPrivateKey: keys.privateKey) : nil
            }
            let sender = PushSender(client: wechat, broker: broker, alipay: AlipayClient(http: HTTPClient.shared, base: base), alipayKeys: keyring)
            try await body(fake, sender, app, base)
        }
    }

    static func alipayMessage(_ user: String) -> AlipayClient.TemplateMessage {
        AlipayClient.TemplateMessage(toUser: user, templateID: "TM-points", url: "https://brand.example/points",
                                     fields: ["first": "积分到账 +20", "keyword1": "20", "remark": "谢谢 & see you"])
    }

    @Test("Alipay: a signed single-send arrives with its context; unfollowed users are refused, limits deferred, 20000 and 5xx retried, unknown apps and bad signatures refused")
    func alipayOutcomes() async throws {
        try await Self.withAlipay { fake, sender, app, base in
            #expect(await sender.sendAlipayTemplate(app: app, Self.alipayMessage("2088000000000001")) == .sent(messageID: nil))
            let sent = try #require(fake.sent.last)
            #expect(sent.app == app && sent.toUser == "2088000000000001" && sent.templateID == "TM-points")
            #expect(sent.context["first"] == "积分到账 +20" && sent.context["remark"] == "谢谢 & see you")
            #expect(sent.context["url"] == "https://brand.example/points" && sent.context["action_name"] == "查看详情")

            fake.refuse(user: "2088000000000002", subCode: "USER_NOT_FOLLOW", subMessage: "用户未关注生活号")
            if case .refused(.unsubscribed, let detail) = await sender.sendAlipayTemplate(app: app, Self.alipayMessage("2088000000000002")),
               detail.contains("USER_NOT_FOLLOW") {} else { Issue.record("an unfollowed user not refused as unsubscribed") }
            fake.refuse(user: "2088000000000003", subCode: "MSG_SEND_LIMIT_EXCEEDED", subMessage: "超过发送上限")
            if case .deferred = await sender.sendAlipayTemplate(app: app, Self.alipayMessage("2088000000000003")) {} else {
                Issue.record("a sending limit not deferred")
            }
            fake.inject(code: "20000")
            if case .retry = await sender.sendAlipayTemplate(app: app, Self.alipayMessage("2088000000000004")) {} else { Issue.record("20000 not retried") }
            fake.inject(status: 502)
            if case .retry = await sender.sendAlipayTemplate(app: app, Self.alipayMessage("2088000000000004")) {} else { Issue.record("502 not retried") }
            #expect(fake.sent.count == 1)

            // An app the gateway does not know, and one whose registered key is not the one it signs with.
            if case .refused(.refused, let detail) = await sender.sendAlipayTemplate(app: "2021000000000000", Self.alipayMessage("2088000000000001")),
               detail.contains("not registered") {} else { Issue.record("an app without keys not refused") }
            try fake.register(app: app, publicKey: try Self.appKeys().publicKey)
            if case .refused(.refused, let detail) = await sender.sendAlipayTemplate(app: app, Self.alipayMessage("2088000000000001")),
               detail.contains("isv.invalid-signature") {} else { Issue.record("a bad request signature not refused") }
            #expect(fake.sent.count == 1)
            _ = base
        }
    }

    @Test("Alipay: an answer signed with another key is not believed, and a success without a signature neither")
    func alipayForgedAnswer() async throws {
        try await Self.withAlipay { fake, _, app, base in
            let keys = try Self.appKeys()
            try fake.register(app: app, publicKey: keys.publicKey)
            let client = AlipayClient(http: HTTPClient.shared, base: base)
            // FanFlow holds the wrong Alipay public key: the fake's genuine answer does not verify.
            let wrong = try AlipayCrypto(alipayPublicKey: try Self.appKeys().publicKey, appPrivateKey: keys.privateKey)
            await #expect(throws: AlipayClient.Failure.self) { try await client.sendTemplate(app: app, keys: wrong, Self.alipayMessage("2088000000000009")) }
            let right = try AlipayCrypto(alipayPublicKey: fake.alipayPublicKey, appPrivateKey: keys.privateKey)
            try await client.sendTemplate(app: app, keys: right, Self.alipayMessage("2088000000000009"))
            #expect(fake.sent.count == 2, "the fake took both; only the second answer was believed")
            // What the client reads, byte for byte: a signed object found past nested braces and quoted braces.
            let body = Array(#"{"alipay_open_public_message_single_send_response":{"code":"10000","msg":"a } \" {","x":{"y":1}},"sign":"abc"}"#.utf8)
            #expect(AlipayClient.signedText(in: body, key: "alipay_open_public_message_single_send_response")
                == Array(#"{"code":"10000","msg":"a } \" {","x":{"y":1}}"#.utf8))
            #expect(throws: AlipayClient.Failure.unverified("a success without a signature")) {
                try AlipayClient.check(answer: Array(#"{"alipay_open_public_message_single_send_response":{"code":"10000","msg":"Success"}}"#.utf8),
                                       keys: right)
            }
        }
    }
}
