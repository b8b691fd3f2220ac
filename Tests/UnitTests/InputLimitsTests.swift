import Contracts
import Foundation
@testable import Gateway
@testable import Loyalty
import Testing

/// What the edge accepts, and arithmetic on input that must never trap.
@Suite("Input limits")
struct InputLimitsTests {
    @Test("RFC 3339 formatting never traps, whatever the time", arguments: [
        Double(Int64.max), 1e17, 1e300, -1e300, Double.infinity, -Double.infinity, Double.nan, -9.3e18, 9.3e15,
    ])
    func formatNeverTraps(seconds: Double) {
        let text = RFC3339.format(Date(timeIntervalSince1970: seconds))
        #expect(text.utf8.count == 24)
        #expect(RFC3339.parse(text) != nil)
    }

    @Test("out-of-range times are written as the nearest end of years 1-9999, NaN as 1970")
    func formatClamps() {
        #expect(RFC3339.format(Date(timeIntervalSince1970: Double(Int64.max))) == "9999-12-31T23:59:59.999Z")
        #expect(RFC3339.format(Date(timeIntervalSince1970: -1e300)) == "0001-01-01T00:00:00.000Z")
        #expect(RFC3339.format(Date(timeIntervalSince1970: .nan)) == "1970-01-01T00:00:00.000Z")
        #expect(RFC3339.format(Date(timeIntervalSince1970: 1_709_251_199.5)) == "2024-02-29T23:59:59.500Z")
    }

    @Test("times from input: only 2000-01-01..2100-01-01")
    func timeWindow() {
        #expect(InputLimits.time(unixSeconds: Int64.max) == nil)
        #expect(InputLimits.time(unixSeconds: 100_000_000_000_000_000) == nil)
        #expect(InputLimits.time(unixSeconds: -1) == nil)
        #expect(InputLimits.time(unixSeconds: Int64.min) == nil)
        #expect(InputLimits.time(unixSeconds: 946_684_799) == nil)
        #expect(InputLimits.time(unixSeconds: 946_684_800) != nil)
        #expect(InputLimits.time(unixSeconds: 4_102_444_800) == nil)
        #expect(InputLimits.time(unixSeconds: 1_700_000_000) == Date(timeIntervalSince1970: 1_700_000_000))
        #expect(InputLimits.time(unixMilliseconds: Int64.max) == nil)
        #expect(InputLimits.time(unixMilliseconds: 1_700_000_000_123) == Date(timeIntervalSince1970: 1_700_000_000.123))
        #expect(!InputLimits.isPlausible(Date(timeIntervalSince1970: .nan)))
        #expect(!InputLimits.isPlausible(Date(timeIntervalSince1970: .infinity)))
    }

    @Test("doubles from input become integers only when finite, whole and exact")
    func wholeNumbers() {
        for value in [Double.nan, .infinity, -.infinity, 1e300, -1e300, 1.5, 9.1e15] {
            #expect(InputLimits.wholeNumber(value) == nil)
        }
        #expect(InputLimits.wholeNumber(42) == 42)
        #expect(InputLimits.wholeNumber(-9_007_199_254_740_992) == -9_007_199_254_740_992)
        #expect(JSONValue.number(1e300).intStrict == nil)
        #expect(InputLimits.multiply(Int64.max / 2, 3) == nil)
        #expect(InputLimits.add(Int64.max, 1) == nil)
        #expect(InputLimits.multiply(1_000, 100) == 100_000)
    }

    @Test("WeChat CreateTime outside the window is malformed_message, never a trap when the envelope is written",
          arguments: ["9223372036854775807", "100000000000000000", "-5", "946684799", "4102444800", "-9223372036854775808"])
    func wechatCreateTime(createTime: String) throws {
        let xml = try XMLTree.parse("<xml><ToUserName>gh</ToUserName><FromUserName>o1</FromUserName><CreateTime>\(createTime)</CreateTime>"
            + "<MsgType>event</MsgType><Event>subscribe</Event></xml>")
        do {
            // Before the fix the envelope was built, and formatting its time trapped.
            let envelope = try WeChatEvents.envelope(xml, app: "wx1", receivedAt: Date())
            _ = try envelope.encoded()
            Issue.record("CreateTime \(createTime) was accepted")
        } catch let error as GatewayError {
            #expect(error.code.rawValue == "malformed_message")
            #expect(error.status == .badRequest)
        }
    }

    @Test("Alipay, QQ and Weibo times outside the window are malformed_message")
    func otherPlatformTimes() throws {
        let alipay = try XMLTree.parse("<XML><FromUserId>2088102000000001</FromUserId><MsgType>event</MsgType><EventType>follow</EventType>"
            + "<CreateTime>9223372036854775807</CreateTime></XML>")
        #expect(throws: GatewayError.self) { _ = try AlipayEvents.envelope(alipay, app: "a1", receivedAt: Date()).encoded() }
        let qq: [String: JSONValue] = ["id": "e1", "t": "FRIEND_ADD",
                                       "d": .object(["openid": "O1", "timestamp": "9999-01-01T00:00:00Z"])]
        #expect(throws: GatewayError.self) { _ = try QQEvents.envelope(qq, app: "q1", receivedAt: Date()) }
        let weibo = Array(#"{"sender_id":"123","type":"event","created_at":"Mon Jul 16 18:09:20 +0800 1970","data":{"subtype":"follow"}}"#.utf8)
        #expect(throws: GatewayError.self) { _ = try WeiboEvents.envelope(weibo, app: "w1", receivedAt: Date()) }
    }

    @Test("yuan to fen: two decimals at most, no sign or exponent, no overflow", arguments: [
        ("99", Int64?(9900)), ("99.5", 9950), ("99.05", 9905), ("0.01", 1), ("99999999999.99", 9_999_999_999_999),
        ("92233720368547758.07", nil), ("922337203685477580", nil), ("-1", nil), ("+5", nil), ("1e3", nil), ("99.999", nil),
        ("", nil), (".5", nil), ("5.", nil), ("١٢", nil), ("1.2.3", nil),
    ])
    func fen(text: String, expected: Int64?) {
        #expect(Gateway.fen(text) == expected)
    }

    @Test("points mall: points × quantity reports overflow instead of trapping")
    func mallCost() {
        #expect(PointsMall.cost(points: Int64.max / 2, quantity: 100) == nil)
        #expect(PointsMall.cost(points: 4_611_686_018_427_387_904, quantity: 2) == nil)
        #expect(PointsMall.cost(points: 300, quantity: 3) == 900)
        #expect(PointsMall.cost(points: 300, quantity: 0) == nil)
    }

    @Test("per-amount grants on an absurd amount are clamped, never a trap")
    func perAmount() {
        let rule = PointsRule(code: "buy", kinds: [.orderPaid], points: 100_000_000, growth: 1, perAmount: .init(attribute: "amount", unit: 1),
                              reason: "buy")
        let event = Envelope(id: "x", platform: .wechat, app: "a", kind: .orderPaid, subject: .init(openid: "o"),
                             occurredAt: Date(), receivedAt: Date(), attributes: ["amount": .integer(Int64.max)])
        #expect(rule.baseGrant(for: event).points == PointsRule.maximumAmount)
    }

    @Test("identities: visible ASCII of 1-128 bytes")
    func identities() {
        #expect(InputLimits.identityProblem("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o") == nil)  // a WeChat openid: 28 characters
        #expect(InputLimits.identityProblem("2088102146225135") == nil)
        #expect(InputLimits.identityProblem(String(repeating: "a", count: 128)) == nil)
        #expect(InputLimits.identityProblem(String(repeating: "a", count: 129)) != nil)
        #expect(InputLimits.identityProblem(String(repeating: "o", count: 5000)) != nil)
        #expect(InputLimits.identityProblem("victim\u{0}evil") != nil)
        #expect(InputLimits.identityProblem(String(repeating: "🎉", count: 900)) != nil)
        #expect(InputLimits.identityProblem("o 1") != nil)
        #expect(InputLimits.identityProblem("o\n1") != nil)
        #expect(InputLimits.identityProblem("") != nil)
    }

    @Test("event kinds: [a-z0-9._-] words that fit a routing key; business kinds outside platform namespaces")
    func kinds() {
        #expect(InputLimits.isKind("community.post"))
        #expect(InputLimits.isKind("shop-2.order_paid"))
        #expect(InputLimits.isKind(String(repeating: "a", count: 128)))
        #expect(!InputLimits.isKind(String(repeating: "a", count: 129)))
        #expect(!InputLimits.isKind("Community.Post"))
        #expect(!InputLimits.isKind("a..b"))
        #expect(!InputLimits.isKind(".a"))
        #expect(!InputLimits.isKind("a b"))
        #expect(InputLimits.isBusinessKind("member.checkin"))
        #expect(InputLimits.isBusinessKind("wechatpay.done"))
        for platform in Platform.allCases {
            #expect(!InputLimits.isBusinessKind("\(platform.rawValue).event.member_checkin"))
        }
        #expect(!ServerEvents.isKind("wechat.event.subscribe"))
    }

    @Test("a platform event named like a business kind stays in the platform's namespace")
    func passthroughNamespaced() throws {
        let xml = try XMLTree.parse("<xml><ToUserName>gh</ToUserName><FromUserName>o1</FromUserName><CreateTime>1700000000</CreateTime>"
            + "<MsgType>event</MsgType><Event>member.checkin</Event></xml>")
        let envelope = try WeChatEvents.envelope(xml, app: "wx1", receivedAt: Date())
        #expect(envelope.kind != .memberCheckin)
        #expect(envelope.kind.rawValue == "wechat.event.member_checkin")
        #expect(envelope.routingKey == "wechat.wechat.event.member_checkin")
        #expect(!InputLimits.isBusinessKind(envelope.kind.rawValue))
        #expect(EventKind.passthrough("mall.order_paid", platform: .alipay, message: true).rawValue == "alipay.message.mall_order_paid")
        #expect(EventKind.passthrough("", platform: .qq).rawValue == "qq.event.unknown")
        let long = EventKind.passthrough(String(repeating: "X", count: 500), platform: .weibo, message: true)
        #expect(InputLimits.isKind(long.rawValue))
    }

    @Test("attributes: no NUL at any depth, bounded names, strings and nesting")
    func attributes() {
        #expect(InputLimits.attributesProblem(["a": "b", "n": .object(["x": .array([.integer(1), "two"])])]) == nil)
        #expect(InputLimits.attributesProblem(["a": .string("x\u{0}y")]) != nil)
        #expect(InputLimits.attributesProblem(["a": .object(["b": .array([.string("\u{0}")])])]) != nil)
        #expect(InputLimits.attributesProblem(["a": .object(["b\u{0}": .integer(1)])]) != nil)
        #expect(InputLimits.attributesProblem([String(repeating: "k", count: 65): .integer(1)]) != nil)
        #expect(InputLimits.attributesProblem(["a": .string(String(repeating: "x", count: 8193))]) != nil)
        var deep: JSONValue = .integer(1)
        for _ in 0..<9 { deep = .array([deep]) }
        #expect(InputLimits.attributesProblem(["a": deep]) != nil)
        #expect(InputLimits.attributesProblem(["a": deep], .webhook) == nil)
        #expect(InputLimits.attributesProblem(["a": .number(.nan)]) != nil)
    }

    @Test("an identity a platform signed is still checked: 5,000 characters, NUL and emoji are invalid_subject")
    func webhookIdentities() throws {
        for from in [String(repeating: "o", count: 5000), "<![CDATA[victim\u{0}evil]]>", String(repeating: "🎉", count: 900)] {
            let xml = try XMLTree.parse("<xml><ToUserName>gh</ToUserName><FromUserName>\(from)</FromUserName>"
                + "<CreateTime>1700000000</CreateTime><MsgType>text</MsgType><Content>hi</Content><MsgId>1</MsgId></xml>")
            #expect(throws: GatewayError.self) { _ = try WeChatEvents.envelope(xml, app: "wx1", receivedAt: Date()) }
        }
    }
}

@Suite("Envelope subject verification")
struct EnvelopeVerificationTests {
    static func envelope(_ platform: Platform, _ subject: Envelope.Subject) -> Envelope {
        Envelope(id: "x:1", platform: platform, app: "a", kind: "page_view", subject: subject,
                 occurredAt: Date(timeIntervalSince1970: 1_700_000_000), receivedAt: Date(timeIntervalSince1970: 1_700_000_000.5))
    }

    @Test("verified, claimed and member ids: the hand-written writer and reader agree with Foundation")
    func writerAndReaderAgree() throws {
        for subject in [Envelope.Subject(openid: "o", verified: false), Envelope.Subject(memberId: 42, verified: true),
                        Envelope.Subject(openid: "o", unionid: "u", memberId: 7, verified: false), Envelope.Subject()] {
            let envelope = Self.envelope(.h5, subject)
            #expect(String(decoding: try envelope.encoded(), as: UTF8.self)
                == String(decoding: try envelope.encodedWithFoundation(), as: UTF8.self))
            #expect(try Envelope.decode(envelope.encoded()) == envelope)
            #expect(try Envelope.decodedWithFoundation(envelope.encoded()) == envelope)
        }
        let claimed = String(decoding: try Self.envelope(.h5, .init(openid: "o", verified: false)).encoded(), as: UTF8.self)
        #expect(claimed.contains(#""subject":{"openid":"o","verified":false}"#))
        let member = String(decoding: try Self.envelope(.h5, .init(memberId: 42)).encoded(), as: UTF8.self)
        #expect(member.contains(#""subject":{"memberId":42,"verified":true}"#))
    }

    @Test("an envelope queued before the field existed: h5 reads as claimed, every other platform as verified")
    func legacyEnvelopes() throws {
        for platform in Platform.allCases {
            let json = #"{"schema":"fanflow.event/1","id":"x","platform":"\#(platform.rawValue)","app":"a","kind":"k","subject":{"openid":"o"},"occurredAt":"2024-01-01T00:00:00Z","receivedAt":"2024-01-01T00:00:00Z","attributes":{}}"#
            let ours = try Envelope.decode(Array(json.utf8))
            let foundation = try Envelope.decodedWithFoundation(Array(json.utf8))
            #expect(ours.subject.verified == (platform != .h5))
            #expect(foundation == ours)
        }
        let bad = #"{"schema":"fanflow.event/1","id":"x","platform":"h5","app":"a","kind":"k","subject":{"verified":"yes"},"occurredAt":"2024-01-01T00:00:00Z","receivedAt":"2024-01-01T00:00:00Z","attributes":{}}"#
        #expect(throws: Envelope.DecodingProblem.self) { try Envelope.decode(Array(bad.utf8)) }
    }

    @Test("points rules grant on claimed subjects only with allowClaimed, which the parser accepts")
    func rulesAndClaims() throws {
        let rule = try PointsRule.parse(code: "view", json: Array(#"{"kinds":["page_view"],"points":1,"growth":0,"reason":"r"}"#.utf8))
        let open = try PointsRule.parse(code: "view-open",
                                        json: Array(#"{"kinds":["page_view"],"points":1,"growth":0,"reason":"r","allowClaimed":true}"#.utf8))
        #expect(open.allowClaimed == true)
        let claimed = Self.envelope(.wechat, .init(openid: "o", verified: false))
        let verified = Self.envelope(.wechat, .init(openid: "o", verified: true))
        #expect(!rule.matches(claimed))
        #expect(rule.matches(verified))
        #expect(open.matches(claimed))
        #expect(throws: RuleProblem.self) {
            try PointsRule.parse(code: "x", json: Array(#"{"kinds":["page_view"],"points":1,"growth":0,"reason":"r","allowClaims":true}"#.utf8))
        }
        // Stored and read back with the field.
        let stored = try JSONDecoder().decode(PointsRule.self, from: JSONEncoder().encode(open))
        #expect(stored.allowClaimed == true)
    }
}
