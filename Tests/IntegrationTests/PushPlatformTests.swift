import AsyncHTTPClient
import FakePlatform
import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import Pushes
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
        let redis = try await RedisPool(url: TestEnvironment.redisURL, size: 2)
        do {
            try await Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0))).test(.live) { client in
                let port = try #require(client.port)
                let client = WeChatClient(http: HTTPClient.shared, base: "http://127.0.0.1:\(port)")
                let broker = AccessTokenBroker(redis: redis, client: client, secrets: { $0 == app ? secret : nil }, logger: logger)
                try await body(fake, PushSender(client: client, broker: broker), broker, app)
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
            if case .refused(43004, _) = await sender.sendTemplate(app: app, Self.message("gone")) {} else { Issue.record("43004 not refused") }
            if case .refused(43101, _) = await sender.sendTemplate(app: app, Self.message("blocking")) {} else { Issue.record("43101 not refused") }
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
            if case .refused(40037, _) = await sender.sendTemplate(app: app, bad) {} else { Issue.record("bad template id not refused") }
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
}
