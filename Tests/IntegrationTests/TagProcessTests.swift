import Contracts
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Testing

/// Tag rules with the product's processes: a signed WeChat webhook into a `fanflow gateway`,
/// through RabbitMQ into a `fanflow worker --pool pipeline`, and the tag read back through the
/// admin API, with the rule created and backfilled over HTTP.
@Suite("Tag rules across processes")
struct TagProcessTests {
    static func admin(_ port: Int, _ method: HTTPRequest.Method, _ path: String, _ body: String = "") async throws
        -> (HTTPResponse.Status, [String: Any]) {
        try await FlashSaleProcessTests.request(port: port, method, path, body: body, headers: GatewayHarness.adminHeaders)
    }

    static func text(_ openid: String, _ content: String, id: Int) -> String {
        "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[\(openid)]]></FromUserName><CreateTime>\(Int(Date().timeIntervalSince1970))</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[\(content)]]></Content><MsgId>\(id)</MsgId></xml>"
    }

    @Test("a fan who asks about new products in a text message is tagged within seconds, through gateway and pipeline worker processes")
    func webhookToTag() async throws {
        guard FileManager.default.isExecutableFile(atPath: SchedulerProcessTests.binary.path) else {
            Issue.record("no fanflow binary at \(SchedulerProcessTests.binary.path): build it first"); return
        }
        // A database of its own: a pipeline worker relays every outbox row and runs every due job
        // of its kinds in the database it is given, which on the shared one are other tests'.
        try await ScratchDatabase.with { _, databaseURL in
            try await Self.run(databaseURL: databaseURL)
        }
    }

    static func run(databaseURL: String) async throws {
        let vhost = "fanflow-tags-" + UUID().uuidString.prefix(8).lowercased()
        let amqpURL = try await SchedulerProcessTests.vhost(vhost)
        let worker = try FlashSaleProcessTests.start(["worker", "--pool", "pipeline=1"], environment: ["FANFLOW_AMQP_URL": amqpURL, "FANFLOW_DATABASE_URL": databaseURL],
                                                    log: "tags-worker")
        var gateway: Process?
        do {
            var port = 0
            for _ in 0..<5 where gateway == nil {
                let candidate = Int.random(in: 30_000...39_999)
                let process = try FlashSaleProcessTests.start(["gateway"], environment: [
                    "FANFLOW_AMQP_URL": amqpURL, "FANFLOW_DATABASE_URL": databaseURL, "FANFLOW_HTTP_PORT": String(candidate),
                    "FANFLOW_HTTP_HOST": "127.0.0.1"], log: "tags-gateway")
                for _ in 0..<100 where process.isRunning {
                    if (try? await FlashSaleProcessTests.request(port: candidate, .get, "/ready").0) == .ok { gateway = process; port = candidate; break }
                    try await Task.sleep(for: .milliseconds(100))
                }
                if gateway == nil { FlashSaleProcessTests.stop(process) }
            }
            #expect(gateway != nil, "the gateway did not become ready")
            let app = TestEnvironment.unique("wx"), tag = TestEnvironment.unique("newbie"), rule = TestEnvironment.unique("asks")
            var (status, json) = try await Self.admin(port, .put, "/admin/v1/apps/wechat/\(app)", #"{"token":"tok123"}"#)
            #expect(status == .created)
            (status, _) = try await Self.admin(port, .put, "/admin/v1/tags/\(tag)", #"{"name":"asks about new products","group":"interest"}"#)
            #expect(status == .created)
            (status, json) = try await Self.admin(port, .put, "/admin/v1/tag-rules/\(rule)",
                                                  #"{"tag":"\#(tag)","kinds":["message.text"],"conditions":{"content":{"contains":"新品"}},"atLeast":1,"within":"7d"}"#)
            #expect(status == .created)
            // The worker's job runner backfills the new rule (no history of this app) and it goes live.
            let deadline = ContinuousClock.now + .seconds(30)
            while json["state"] as? String != "live", ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(100))
                (status, json) = try await Self.admin(port, .get, "/admin/v1/tag-rules/\(rule)")
            }
            #expect(json["state"] as? String == "live", "\(json)")

            let sent = ContinuousClock.now
            for (n, (openid, content)) in [("fan-a", "请问有新品吗"), ("fan-b", "hello")].enumerated() {
                let query = GatewayWebhookTests.wechatQuery(token: "tok123")
                let (answer, _) = try await FlashSaleProcessTests.request(port: port, .post, "/wechat/\(app)?\(query)",
                                                                         body: Self.text(openid, content, id: 7_000 + n))
                #expect(answer == .ok)
            }
            func tags(_ openid: String) async throws -> [String]? {
                let (found, member) = try await Self.admin(port, .get, "/admin/v1/members/lookup?platform=wechat&app=\(app)&openid=\(openid)")
                guard found == .ok, let id = member["id"] as? Int else { return nil }
                let (_, held) = try await Self.admin(port, .get, "/admin/v1/members/\(id)/tags")
                return (held["tags"] as? [[String: Any]])?.compactMap { $0["code"] as? String }
            }
            var seen: [String]?
            while ContinuousClock.now < sent + .seconds(15) {
                seen = try await tags("fan-a")
                if seen == [tag] { break }
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(seen == [tag], "fan-a was not tagged: \(String(describing: seen))")
            #expect(ContinuousClock.now - sent < .seconds(5), "tagged only after \(ContinuousClock.now - sent)")
            #expect(try await tags("fan-b") == [], "a text without the keyword earned the tag")

            _ = try await Self.admin(port, .delete, "/admin/v1/tag-rules/\(rule)")
            _ = try await Self.admin(port, .delete, "/admin/v1/tags/\(tag)")
            _ = try await Self.admin(port, .delete, "/admin/v1/apps/wechat/\(app)")
        } catch {
            Issue.record("\(error)")
        }
        if let gateway { FlashSaleProcessTests.stop(gateway) }
        FlashSaleProcessTests.stop(worker)
        _ = try? await SchedulerProcessTests.vhost(vhost, delete: true)
    }
}
