import Contracts
import Foundation
@testable import Gateway
@testable import Loyalty
import RedisClient
import Testing

@Suite("Loyalty: rules, levels and natural periods")
struct LoyaltyTests {
    static func event(_ kind: EventKind, at time: String = "2026-12-01T10:00:00+08:00", platform: Platform = .wechat,
                      attributes: [String: JSONValue] = [:]) -> Envelope {
        let date = RFC3339.parse(time) ?? Date(timeIntervalSince1970: 0)
        return Envelope(id: "e1", platform: platform, app: "wx1", kind: kind, subject: .init(openid: "o1"),
                        occurredAt: date, receivedAt: date, attributes: attributes)
    }

    @Test("a rule parses from the admin API's JSON, with the path's code")
    func parsesRule() throws {
        let json = #"{"kinds":["community.post"],"points":3,"growth":3,"caps":{"daily":{"points":15}},"reason":"post"}"#
        let rule = try PointsRule.parse(code: "post", json: Array(json.utf8))
        #expect(rule.code == "post")
        #expect(rule.frequency == .unlimited)
        #expect(rule.enabled)
        #expect(rule.caps?.daily?.points == 15)
        #expect(rule.caps?.daily?.growth == nil)
        // What is stored is what is read back.
        let again = try JSONDecoder().decode(PointsRule.self, from: try JSONEncoder().encode(rule))
        #expect(again == rule)
    }

    @Test("bad rules are refused with the field named", arguments: [
        (#"{"kinds":["community.post"],"points":3,"reason":"x","dailyCap":15}"#, "unknown field dailyCap"),
        (#"{"kinds":[],"points":3,"reason":"x"}"#, "kinds must list"),
        (#"{"kinds":["a"],"points":-1,"reason":"x"}"#, "points must be"),
        (#"{"kinds":["a"],"points":1}"#, "reason is required"),
        (#"{"kinds":["a"],"points":1,"reason":"x","frequency":"hourly"}"#, "frequency"),
        (#"{"kinds":["a"],"points":1,"reason":"x","perAmount":{"attribute":"amount","unit":0}}"#, "perAmount.unit"),
        (#"{"kinds":["a"],"points":1,"reason":"x","validFrom":"2026-12-02T00:00:00Z","validUntil":"2026-12-01T00:00:00Z"}"#, "validFrom must be before"),
        (#"{"kinds":["a"],"points":1,"reason":"x","validFrom":"tomorrow"}"#, "RFC 3339"),
        (#"{"kinds":["a"],"points":1,"reason":"x","referral":true}"#, "frequency must be once"),
        (#"{"code":"other","kinds":["a"],"points":1,"reason":"x"}"#, "differs from the path"),
        (#"[1,2]"#, "JSON object"),
    ])
    func refusesBadRules(json: String, problem: String) {
        #expect {
            _ = try PointsRule.parse(code: "rule", json: Array(json.utf8))
        } throws: { error in
            "\(error)".contains(problem)
        }
    }

    @Test("matching: kind, platform, attribute conditions, enabled flag and validity window")
    func matching() {
        var rule = PointsRule(code: "share", kinds: [.communityShare], conditions: ["channel": "moments"], points: 3, growth: 3,
                              reason: "share")
        #expect(rule.matches(Self.event(.communityShare, attributes: ["channel": "moments"])))
        #expect(!rule.matches(Self.event(.communityShare, attributes: ["channel": "friend"])))
        #expect(!rule.matches(Self.event(.communityShare)))
        #expect(!rule.matches(Self.event(.communityPost, attributes: ["channel": "moments"])))
        rule.platforms = [.alipay]
        #expect(!rule.matches(Self.event(.communityShare, attributes: ["channel": "moments"])))
        rule.platforms = nil
        rule.validFrom = RFC3339.parse("2026-12-01T12:00:00+08:00")
        #expect(!rule.matches(Self.event(.communityShare, attributes: ["channel": "moments"])))
        #expect(rule.matches(Self.event(.communityShare, at: "2026-12-01T12:00:00+08:00", attributes: ["channel": "moments"])))
        rule.enabled = false
        #expect(!rule.matches(Self.event(.communityShare, at: "2026-12-01T12:00:00+08:00", attributes: ["channel": "moments"])))
    }

    @Test("per amount: 10 yuan = 1 point, whole units only")
    func perAmount() throws {
        let purchase = try #require(ProgramPreset.membership.rules.first { $0.code == "mall.purchase" })
        #expect(purchase.baseGrant(for: Self.event(.orderDelivered, attributes: ["amount": .integer(12_999)])) == (12, 12))
        #expect(purchase.baseGrant(for: Self.event(.orderDelivered, attributes: ["amount": .integer(999)])) == (0, 0))
        #expect(purchase.baseGrant(for: Self.event(.orderDelivered)) == (0, 0))
    }

    @Test("levels by growth, and the table's validation")
    func levels() throws {
        let table = LevelTable.standard
        #expect(table.level(forGrowth: 0) == "registered")
        #expect(table.level(forGrowth: 99) == "registered")
        #expect(table.level(forGrowth: 100) == "bronze")
        #expect(table.level(forGrowth: 3999) == "bronze")
        #expect(table.level(forGrowth: 4000) == "silver")
        #expect(table.level(forGrowth: 10000) == "gold")
        #expect(throws: RuleProblem.self) { try LevelTable.parse(json: Array(#"{"levels":[{"name":"a","minGrowth":5}]}"#.utf8)) }
        #expect(throws: RuleProblem.self) {
            try LevelTable.parse(json: Array(#"{"levels":[{"name":"a","minGrowth":0},{"name":"b","minGrowth":0}]}"#.utf8))
        }
    }

    @Test("natural day, week and month in the configured zone, not UTC")
    func periods() throws {
        let shanghai = PeriodCalendar(timeZone: try #require(TimeZone(identifier: "Asia/Shanghai")))
        let utc = PeriodCalendar(timeZone: try #require(TimeZone(identifier: "UTC")))
        // 2026-11-30 16:30 UTC is already Tuesday 1 December in Beijing.
        let instant = try #require(RFC3339.parse("2026-11-30T16:30:00Z"))
        #expect(shanghai.periods(of: instant) == NaturalPeriods(day: "20261201", week: "2026W49", month: "202612"))
        #expect(utc.periods(of: instant) == NaturalPeriods(day: "20261130", week: "2026W49", month: "202611"))
        // ISO weeks start on Monday: Sunday 2026-12-06 and Monday 2026-12-07 (Beijing) are two weeks.
        let sunday = try #require(RFC3339.parse("2026-12-06T23:59:00+08:00"))
        let monday = try #require(RFC3339.parse("2026-12-07T00:01:00+08:00"))
        #expect(shanghai.periods(of: sunday).week == "2026W49")
        #expect(shanghai.periods(of: monday).week == "2026W50")
        // The ISO year of a week can differ from the calendar year.
        #expect(shanghai.periods(of: try #require(RFC3339.parse("2027-01-01T12:00:00+08:00"))).week == "2026W53")
    }

    @Test("a decision reply decodes into its fields; any other shape fails with the reply in a typed error")
    func decisionReply() throws {
        #expect(try Decision(reply: .array([.bulk(Array("capped".utf8)), .integer(3), .integer(0)]))
                == Decision(status: .capped, points: 3, growth: 0))
        let refused: [RedisReply] = [
            .array([.bulk(Array("unreadable".utf8)), .bulk(Array("granted:-1".utf8))]),  // a stored value no version wrote
            .array([.bulk(Array("maybe".utf8)), .integer(1), .integer(1)]),
            .array([.bulk(Array("granted".utf8)), .integer(-1), .integer(0)]),
            .array([.bulk(Array("granted".utf8)), .bulk(Array("1".utf8)), .integer(0)]),
            .bulk(Array("granted:1:1".utf8)),  // the former reply shape
            .null,
        ]
        for reply in refused {
            #expect(throws: UnexpectedScriptReply.self) { try Decision(reply: reply) }
        }
        #expect(throws: Never.self) { try LoyaltyScripts.check() }
    }

    @Test("presets are valid rules")
    func presetsValidate() throws {
        for preset in ProgramPreset.allCases {
            for rule in preset.rules { try rule.validate() }
            try preset.levels?.validate()
        }
    }
}

@Suite("Member tokens and code imports")
struct MemberTokenTests {
    @Test("a token names its member until it expires; a changed byte or another key refuses it")
    func tokens() throws {
        let tokens = try MemberTokens(secretKey: Data(repeating: 1, count: 32).base64EncodedString())
        let now = Date()
        let token = tokens.mint(member: 42, expiresAt: now.addingTimeInterval(60))
        #expect(try tokens.verify(token, now: now) == 42)
        #expect(throws: MemberTokens.Refusal.expired) { try tokens.verify(token, now: now.addingTimeInterval(61)) }
        #expect(throws: MemberTokens.Refusal.badSignature) { try tokens.verify(token.replacingOccurrences(of: "m1.42.", with: "m1.43."), now: now) }
        #expect(throws: MemberTokens.Refusal.badSignature) {
            try MemberTokens(secretKey: Data(repeating: 2, count: 32).base64EncodedString()).verify(token, now: now)
        }
        #expect(throws: MemberTokens.Refusal.malformed) { try tokens.verify("m1.42", now: now) }
    }

    @Test("CSV imports: header skipped, CRLF and empty batch accepted, a bad line named")
    func csv() throws {
        let codes = try Gateway.codesFromCSV(Array("code,sku,batch\r\nA1,S1,B\r\nA2,S2,\r\n\nA3,S3\n".utf8))
        #expect(codes == [.init(code: "A1", sku: "S1", batch: "B"), .init(code: "A2", sku: "S2"), .init(code: "A3", sku: "S3")])
        #expect { try Gateway.codesFromCSV(Array("A1,S1\nA2\n".utf8)) } throws: { "\($0)".contains("line 2") }
    }
}
