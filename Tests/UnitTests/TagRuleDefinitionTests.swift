import Audiences
import Contracts
import Foundation
import Testing

/// Tag rule definitions without servers: windows, the hour arithmetic of sliding, and refusals
/// naming the path of the bad field.
@Suite("tag rule definitions")
struct TagRuleDefinitionTests {
    @Test("windows are whole hours or days from 1h to 365d; anything else is refused")
    func windows() {
        #expect(TimeWindow(parsing: "1h")?.hours == 1)
        #expect(TimeWindow(parsing: "7d")?.hours == 168)
        #expect(TimeWindow(parsing: "365d")?.hours == 8_760)
        #expect(TimeWindow(parsing: "8760h")?.description == "365d")
        #expect(TimeWindow(parsing: "36h")?.description == "36h")
        for bad in ["0h", "366d", "8761h", "1.5d", "24H", "-1d", "d", "", "7", "99999999999999999999d", "7 d", "٧d"] {
            #expect(TimeWindow(parsing: bad) == nil, "\(bad) was accepted")
        }
    }

    @Test("an hour's events count until that hour's end is a whole window ago")
    func sliding() throws {
        let window = try #require(TimeWindow(parsing: "7d"))
        let now = try #require(RFC3339.parse("2026-12-06T10:20:00Z"))
        let hour = { (text: String) -> Int in Int((RFC3339.parse(text)?.timeIntervalSince1970 ?? 0) / 3600) }
        // 7 days and 20 minutes ago: the hour 10:00-11:00 of Nov 29 ended 6 days 23 h 20 min ago.
        #expect(hour("2026-11-29T10:00:00Z") >= window.firstHour(at: now))
        #expect(hour("2026-11-29T09:59:59Z") < window.firstHour(at: now))
        #expect(hour("2026-11-28T10:20:00Z") < window.firstHour(at: now), "8 days old counts in 7d")
        #expect(window.end(ofHour: hour("2026-11-29T10:30:00Z")) == RFC3339.parse("2026-12-06T11:00:00Z"))
        // Before 1970: floor division, not truncation.
        #expect(window.firstHour(at: Date(timeIntervalSince1970: -1)) == -169)
    }

    @Test("bad rules are refused with the path of the field at fault")
    func refusals() {
        func problem(_ json: JSONValue) -> DefinitionProblem? {
            do { _ = try TagRule.parse(code: "r1", json: json); return nil } catch { return error }
        }
        let base: [String: JSONValue] = ["tag": "t", "kinds": .array(["message.text"]), "atLeast": .integer(1), "within": "7d"]
        func with(_ key: String, _ value: JSONValue?) -> JSONValue {
            var object = base
            object[key] = value
            return .object(object)
        }
        #expect(problem(.object(base)) == nil)
        #expect(problem(with("tag", nil))?.path == "tag")
        #expect(problem(with("tag", "Bad Tag"))?.path == "tag")
        #expect(problem(with("kinds", .array([])))?.path == "kinds")
        #expect(problem(with("kinds", .array((0..<33).map { .string("k\($0)") })))?.path == "kinds")
        #expect(problem(with("kinds", .array(["ok", "NOT OK"])))?.path == "kinds[1]")
        #expect(problem(with("atLeast", .integer(1_000_001)))?.path == "atLeast")
        #expect(problem(with("atLeast", .number(1.5)))?.path == "atLeast")
        #expect(problem(with("atLeast", "3"))?.path == "atLeast")
        #expect(problem(with("within", "8d12h"))?.path == "within")
        #expect(problem(with("sticky", "yes"))?.path == "sticky")
        #expect(problem(with("window", "7d"))?.path == "window")
        #expect(problem(with("conditions", .array([])))?.path == "conditions")
        #expect(problem(with("conditions", .object(["amount": .object(["gte": .number(1e16)])])))?.path == "conditions.amount.gte")
        #expect(problem(with("conditions", .object(["amount": .object([:])])))?.path == "conditions.amount")
        #expect(problem(with("conditions", .object(["a": .object(["in": .array((0..<101).map { .integer(Int64($0)) })])])))?.path == "conditions.a.in")
        #expect(problem(with("conditions", .object(["a": .object(["in": .array([.integer(1), .array([])])])])))?.path == "conditions.a.in[1]")
        #expect(problem(with("conditions", .object(["a": .object(["contains": .string("x\u{0}y")])])))?.path == "conditions.a.contains")
        #expect(problem(with("conditions", .object(["a": .string(String(repeating: "x", count: 257))])))?.path == "conditions.a")
        #expect(problem(with("conditions", .object(["a b": "x"])))?.path == "conditions.a b")
        let many = Dictionary(uniqueKeysWithValues: (0..<17).map { ("a\($0)", JSONValue.integer(1)) })
        #expect(problem(with("conditions", .object(many)))?.path == "conditions")
        #expect(problem(.array([]))?.path == "")
    }

    @Test("a rule reads back as it was written")
    func roundTrip() throws {
        let json: JSONValue = .object(["tag": "t", "kinds": .array(["page_view", "share"]), "atLeast": .integer(3), "within": "48h",
                                       "sticky": .bool(true),
                                       "conditions": .object(["url": .object(["contains": "/a/", "startsWith": "https://"]),
                                                              "amount": .object(["gte": .integer(100), "lt": .number(1e6 + 0.5)]),
                                                              "scene": "spring", "paid": .bool(true)])])
        let rule = try TagRule.parse(code: "r1", json: json)
        #expect(try TagRule.parse(code: "r1", json: rule.json) == rule)
        #expect(rule.source == "rule:r1")
        #expect(rule.criteria.within.hours == 48)
    }
}
