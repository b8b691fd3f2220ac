import Contracts
import Foundation
import Testing

@Suite("Contracts")
struct ContractsTests {
    @Test("the envelope's wire form is stable: field names, routing key, RFC 3339 times")
    func envelopeWireForm() throws {
        let envelope = Envelope(
            id: "wx:gh_1:msg:1234567890", platform: .wechat, app: "wx5823bf96d3bd56c7", kind: .subscribe,
            subject: .init(openid: "oUser", unionid: "uUnion"),
            occurredAt: Date(timeIntervalSince1970: 1_700_000_000),
            receivedAt: Date(timeIntervalSince1970: 1_700_000_000.25),
            attributes: ["scene": .string("expo-2026"), "qr": .integer(7)])
        let json = String(decoding: try envelope.encoded(), as: UTF8.self)
        #expect(json == #"{"app":"wx5823bf96d3bd56c7","attributes":{"qr":7,"scene":"expo-2026"},"id":"wx:gh_1:msg:1234567890","kind":"subscribe","occurredAt":"2023-11-14T22:13:20.000Z","platform":"wechat","receivedAt":"2023-11-14T22:13:20.250Z","schema":"fanflow.event/1","subject":{"openid":"oUser","unionid":"uUnion","verified":true}}"#)
        #expect(envelope.routingKey == "wechat.subscribe")
        #expect(try Envelope.decode(Array(json.utf8)) == envelope)
    }

    @Test("a message of another schema version is refused, not misread")
    func schemaChecked() {
        let json = #"{"schema":"fanflow.event/2","id":"x","platform":"qq","app":"a","kind":"k","subject":{},"occurredAt":"2024-01-01T00:00:00Z","receivedAt":"2024-01-01T00:00:00Z","attributes":{}}"#
        #expect(throws: Envelope.DecodingProblem.unsupportedSchema("fanflow.event/2")) { try Envelope.decode(Array(json.utf8)) }
    }

    @Test("unknown platform fields survive a round trip in attributes")
    func unknownFieldsKept() throws {
        let json = #"{"schema":"fanflow.event/1","id":"x","platform":"weibo","app":"a","kind":"new_kind","subject":{"openid":"o"},"occurredAt":"2024-01-01T08:00:00+08:00","receivedAt":"2024-01-01T00:00:00.5Z","attributes":{"nested":{"list":[1,"two",true,null,2.5]}}}"#
        let envelope = try Envelope.decode(Array(json.utf8))
        #expect(envelope.kind == EventKind("new_kind"))
        #expect(envelope.occurredAt == Date(timeIntervalSince1970: 1_704_067_200))
        #expect(envelope.attributes["nested"] == .object(["list": .array([.integer(1), .string("two"), .bool(true), .null, .number(2.5)])]))
        #expect(try Envelope.decode(envelope.encoded()) == envelope)
    }

    @Test("RFC 3339: offsets, fractions, and refusal of malformed times", arguments: [
        ("2024-02-29T23:59:59Z", 1_709_251_199.0),
        ("2024-03-01T07:59:59.5+08:00", 1_709_251_199.5),
        ("1969-12-31T23:59:59.999Z", -0.001),
        ("2024-01-01 00:00:00-05:30", 1_704_087_000.0),
    ])
    func rfc3339(text: String, seconds: Double) throws {
        let date = try #require(RFC3339.parse(text))
        #expect(abs(date.timeIntervalSince1970 - seconds) < 0.0005)
    }

    @Test("malformed times are refused", arguments: ["", "2024-13-01T00:00:00Z", "2024-01-01T00:00:00", "2024-01-01T00:00:00+8", "yesterday", "2024-01-01T00:00:00.Z"])
    func rfc3339Refused(text: String) {
        #expect(RFC3339.parse(text) == nil)
    }

    @Test("formatting is UTC with milliseconds, before 1970 too")
    func rfc3339Format() {
        #expect(RFC3339.format(Date(timeIntervalSince1970: 0)) == "1970-01-01T00:00:00.000Z")
        #expect(RFC3339.format(Date(timeIntervalSince1970: -0.001)) == "1969-12-31T23:59:59.999Z")
        #expect(RFC3339.format(Date(timeIntervalSince1970: 1_709_251_199.5)) == "2024-02-29T23:59:59.500Z")
    }

    @Test("wire names of platforms, queues and exchanges never change")
    func wireNames() {
        #expect(Platform.allCases.map(\.rawValue) == ["wechat", "alipay", "weibo", "qq", "h5", "server", "fanflow"])
        #expect(ExchangeName.events.rawValue == "fanflow.events")
        #expect(QueueName.pipeline.rawValue == "fanflow.pipeline")
        #expect(QueueName.pipeline.deadLetter.rawValue == "fanflow.pipeline.dead")
        #expect(QueueName.points.rawValue == "fanflow.points")
        #expect(QueueName.points.deadLetter.rawValue == "fanflow.points.dead")
        #expect(QueueName.behavior.rawValue == "fanflow.behavior")
        #expect(EventKind.communityPost.rawValue == "community.post")
    }

    @Test("every external event reaches one work queue of the pipeline; the retired queues are bound by nothing and drain into it")
    func pipelineTopology() {
        let standard = Topology.standard
        #expect(standard.queues.map(\.name) == [.pipeline, .orders, .push])
        #expect(standard.queue(.pipeline)?.bindings == ["wechat.#", "alipay.#", "weibo.#", "qq.#", "server.#", "h5.#"])
        #expect(standard.queue(.points) == nil && standard.queue(.behavior) == nil)
        #expect(standard.retired.map(\.name) == [.behavior, .points])
        #expect(standard.retired.allSatisfy { $0.successor == .pipeline })
        #expect(standard.current(.points) == .pipeline && standard.current(.behavior) == .pipeline && standard.current(.orders) == .orders)
        // No FanFlow follow-up is bound to the pipeline, and no external kind to orders.
        let pipeline = EventSelector(standard.queue(.pipeline)?.bindings ?? [])
        for key in ["fanflow.points.granted", "fanflow.member.level_changed", "fanflow.flashsale.reserved", "fanflow.push.retry",
                    "fanflow.orders.reconcile"] {
            #expect(!pipeline.matches(routingKey: key), "\(key)")
        }
        for key in ["wechat.subscribe", "alipay.message.text", "weibo.follow", "qq.click", "server.mall.order_paid", "h5.page_view", "h5.share"] {
            #expect(pipeline.matches(routingKey: key), "\(key)")
        }
    }

    @Test("selectors match routing keys as RabbitMQ's topic bindings do")
    func selectorMatching() {
        let selector = EventSelector(["wechat.#", "h5.share", "server.*.paid", "a.#.z"])
        #expect(selector.matches(routingKey: "wechat"))
        #expect(selector.matches(routingKey: "wechat.message.text"))
        #expect(!selector.matches(routingKey: "wechatx.subscribe"))
        #expect(selector.matches(routingKey: "h5.share"))
        #expect(!selector.matches(routingKey: "h5.share.more"))
        #expect(!selector.matches(routingKey: "h5.page_view"))
        #expect(selector.matches(routingKey: "server.mall.paid"))
        #expect(!selector.matches(routingKey: "server.paid"))
        #expect(!selector.matches(routingKey: "server.a.b.paid"))
        #expect(selector.matches(routingKey: "a.z") && selector.matches(routingKey: "a.b.c.z"))
        #expect(!selector.matches(routingKey: "a.b.c"))
        #expect(EventSelector.all.matches(routingKey: "") && EventSelector.all.matches(routingKey: "x.y"))
        #expect(!EventSelector([]).matches(routingKey: "wechat.subscribe"))
    }
}

@Suite("Configuration")
struct ConfigurationTests {
    let valid = [
        "FANFLOW_AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/%2F",
        "FANFLOW_REDIS_URL": "redis://127.0.0.1:6379/0",
        "FANFLOW_DATABASE_URL": "postgresql://fanflow:secret@127.0.0.1:5432/fanflow",
        "FANFLOW_ADMIN_TOKEN": "0123456789abcdef0123",
        "FANFLOW_SECRET_KEY": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    ]

    @Test("defaults: 127.0.0.1:8080, Asia/Shanghai, info")
    func defaults() throws {
        let configuration = try FanFlowConfiguration.load(valid, role: .gateway)
        #expect(configuration.httpHost == "127.0.0.1")
        #expect(configuration.httpPort == 8080)
        #expect(configuration.timeZone.identifier == "Asia/Shanghai")
        #expect(configuration.logLevel == "info")
    }

    @Test("every problem is reported at once, each naming its variable")
    func problemsNamed() {
        var environment = valid
        environment["FANFLOW_AMQP_URL"] = nil
        environment["FANFLOW_REDIS_URL"] = "localhost:6379"
        environment["FANFLOW_HTTP_PORT"] = "80000"
        environment["FANFLOW_TIMEZONE"] = "Mars/Olympus"
        environment["FANFLOW_ADMIN_TOKEN"] = "short"
        environment["FANFLOW_SECRET_KEY"] = "bm90IDMyIGJ5dGVz"
        do {
            _ = try FanFlowConfiguration.load(environment, role: .gateway)
            Issue.record("expected problems")
        } catch {
            #expect(error.problems.map(\.variable) == ["FANFLOW_AMQP_URL", "FANFLOW_REDIS_URL", "FANFLOW_HTTP_PORT",
                                                       "FANFLOW_ADMIN_TOKEN", "FANFLOW_TIMEZONE", "FANFLOW_SECRET_KEY"])
            #expect(error.description.contains("FANFLOW_HTTP_PORT: expected a port 1-65535, got 80000"))
        }
    }

    @Test("the push pool's platform addresses and points news: defaults, settings and refusals")
    func pushSettings() throws {
        var configuration = try FanFlowConfiguration.load(valid, role: .worker)
        #expect(configuration.alipayAPIBase == "https://openapi.alipay.com" && configuration.pointsNews == .auto)
        var environment = valid
        environment["FANFLOW_ALIPAY_API_BASE"] = "http://127.0.0.1:8099"
        environment["FANFLOW_POINTS_NEWS"] = "OFF"
        configuration = try FanFlowConfiguration.load(environment, role: .worker)
        #expect(configuration.alipayAPIBase == "http://127.0.0.1:8099" && configuration.pointsNews == .off)
        environment["FANFLOW_ALIPAY_API_BASE"] = "openapi.alipay.com"
        environment["FANFLOW_POINTS_NEWS"] = "sometimes"
        do {
            _ = try FanFlowConfiguration.load(environment, role: .worker)
            Issue.record("expected problems")
        } catch {
            #expect(Set(error.problems.map(\.variable)) == ["FANFLOW_ALIPAY_API_BASE", "FANFLOW_POINTS_NEWS"])
        }
    }

    @Test("the admin token is required by the gateway only")
    func tokenPerRole() throws {
        var environment = valid
        environment["FANFLOW_ADMIN_TOKEN"] = nil
        #expect(throws: ConfigurationErrors.self) { try FanFlowConfiguration.load(environment, role: .gateway) }
        _ = try FanFlowConfiguration.load(environment, role: .worker)
    }

    @Test("passwords are redacted in messages")
    func redaction() {
        #expect(FanFlowConfiguration.redacted("postgresql://fanflow:secret@db:5432/x") == "postgresql://fanflow:***@db:5432/x")
        #expect(FanFlowConfiguration.redacted("redis://db:6379") == "redis://db:6379")
    }
}

@Suite("Envelope writer")
struct EnvelopeWriterTests {
    @Test("the hand-written JSON is byte for byte what JSONEncoder (sorted keys) makes")
    func sameBytesAsFoundation() throws {
        let tricky: [String: JSONValue] = [
            "quote\"and\\slash/": .string("line\nbreak\ttab\r\u{8}\u{c}\u{1}\u{1f} 中文 emoji 🎉 </script>"),
            "numbers": .array([.integer(-7), .integer(Int64.max), .number(2.5), .number(23.1), .number(5), .number(-0.001), .number(1e20)]),
            "flags": .array([.bool(true), .bool(false), .null]),
            "nested": .object(["b": .object([:]), "a": .array([]), "Z": .string(""), "é": .string("accent"), "_": .integer(0)]),
        ]
        for subject in [Envelope.Subject(openid: "o\"1", unionid: "u/1"), Envelope.Subject(openid: "o"), Envelope.Subject(unionid: "u"), Envelope.Subject()] {
            let envelope = Envelope(id: "wechat:abc", platform: .wechat, app: "wx\\1", kind: "message.text", subject: subject,
                                    occurredAt: Date(timeIntervalSince1970: 1_700_000_000.123), receivedAt: Date(timeIntervalSince1970: -1.5),
                                    attributes: tricky)
            let ours = String(decoding: try envelope.encoded(), as: UTF8.self)
            let foundation = String(decoding: try envelope.encodedWithFoundation(), as: UTF8.self)
            #expect(ours == foundation)
            // (Decoding turns 5.0 into the integer 5, so no round trip is asserted on these values.)
            #expect(try Envelope.decode(envelope.encoded()).subject == subject)
        }
    }
}
