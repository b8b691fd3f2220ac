@testable import Audiences
import Contracts
import Foundation
import Testing

/// The segment expression parser: the typed tree, the JSON it gives back, and every refusal with
/// the path of the node at fault, before any SQL is built.
@Suite("Segment expressions")
struct SegmentExpressionTests {
    static func parse(_ text: String) throws -> SegmentMatch {
        try SegmentMatch.parse(try JSONValue.parse(Array(text.utf8)))
    }

    /// The problem a refused expression gets (nil when it parsed).
    static func problem(_ text: String) -> DefinitionProblem? {
        guard let json = try? JSONValue.parse(Array(text.utf8)) else { return DefinitionProblem("", "not JSON") }
        do {
            _ = try SegmentMatch.parse(json)
            return nil
        } catch {
            return error
        }
    }

    static func nested(_ depth: Int, _ leaf: String = #"{"tag":"vip"}"#) -> String {
        (0..<depth).reduce(leaf) { inner, _ in #"{"not":\#(inner)}"# }
    }

    @Test("every clause parses into the typed tree, and its JSON reads back to the same tree")
    func roundTrip() throws {
        let text = """
            {"all":[{"tag":"vip"},{"level":{"gte":3}},{"points":{"gte":100,"lt":5000}},{"app":"wx0123456789abcdef"},
                    {"any":[{"not":{"tag":"churned"}},{"events":{"kinds":["mall.order_paid"],"conditions":{"amount":{"gte":100}},"atLeast":2,"within":"30d"}}]}]}
            """
        let match = try Self.parse(text)
        guard case .all(let items) = match else { Issue.record("not an all: \(match)"); return }
        #expect(items.count == 5)
        #expect(items[0] == .tag("vip"))
        #expect(items[1] == .level(SegmentBounds([(.gte, 3)])))
        #expect(items[2] == .points(SegmentBounds([(.lt, 5000), (.gte, 100)])))
        #expect(items[3] == .app("wx0123456789abcdef"))
        guard case .any(let inner) = items[4], case .events(let criteria) = inner[1] else { Issue.record("\(items[4])"); return }
        #expect(inner[0] == .not(.tag("churned")))
        #expect(criteria.kinds == [EventKind("mall.order_paid")] && criteria.atLeast == 2 && criteria.within.hours == 720)
        #expect(try SegmentMatch.parse(match.json) == match)
        #expect(match.tags().map(\.path) == ["match.all[0].tag", "match.all[4].any[0].not.tag"])
    }

    @Test("refusals name the path of the node at fault", arguments: [
        (#"{"all":[{"tag":"a"},{"tag":"b"},{"tag":"Bad Code"}]}"#, "match.all[2].tag"),
        (#"{"any":[{"events":{"kinds":["buy"],"atLeast":1,"within":"7w"}}]}"#, "match.any[0].events.within"),
        (#"{"any":[{"events":{"kinds":["buy"],"atLeast":0,"within":"7d"}}]}"#, "match.any[0].events.atLeast"),
        (#"{"events":{"kinds":["buy"],"atLeast":1,"within":"7d","sticky":true}}"#, "match.events.sticky"),
        (#"{"events":{"kinds":["Buy Now"],"atLeast":1,"within":"7d"}}"#, "match.events.kinds[0]"),
        (#"{"events":{"kinds":["buy"],"conditions":{"x":{"near":1}},"atLeast":1,"within":"7d"}}"#, "match.events.conditions.x.near"),
        (#"{"tag":"a","app":"b"}"#, "match"),
        (#"{}"#, "match"),
        (#"[{"tag":"a"}]"#, "match"),
        (#"{"all":[{"tag":"a"},{"colour":"red"}]}"#, "match.all[1].colour"),
        (#"{"all":[]}"#, "match.all"),
        (#"{"all":{"tag":"a"}}"#, "match.all"),
        (#"{"tag":7}"#, "match.tag"),
        (#"{"app":"bad app"}"#, "match.app"),
        (#"{"level":{"gte":0}}"#, "match.level.gte"),
        (#"{"level":{"gte":101}}"#, "match.level.gte"),
        (#"{"level":{"gte":2.5}}"#, "match.level.gte"),
        (#"{"level":{"gte":"3"}}"#, "match.level.gte"),
        (#"{"level":{"above":3}}"#, "match.level.above"),
        (#"{"level":3}"#, "match.level"),
        (#"{"points":{"gte":1e16}}"#, "match.points.gte"),
        (#"{"points":{"lt":-1000000000000001}}"#, "match.points.lt"),
        (#"{"points":{}}"#, "match.points"),
        (#"{"not":{"channel":"wechat-oa"}}"#, "match.not.channel"),
    ])
    func refusals(_ text: String, _ path: String) {
        #expect(Self.problem(text)?.path == path, "\(text): \(String(describing: Self.problem(text)))")
    }

    @Test("channel segments are refused for now, saying so")
    func channel() {
        #expect(Self.problem(#"{"channel":"wechat-oa"}"#)?.message.contains("not available yet") == true)
    }

    @Test("limits: 8 levels of all/any/not, 64 nodes, lists of at most 64, bounds at 1e15")
    func limits() throws {
        #expect(Self.problem(Self.nested(8)) == nil)
        let deep = try #require(Self.problem(Self.nested(9)))
        #expect(deep.path == "match" + String(repeating: ".not", count: 9), "\(deep)")
        // Nesting far past the limit stops at the limit (the parser reads no further).
        #expect(Self.problem(Self.nested(400))?.path == "match" + String(repeating: ".not", count: 9))

        let sixtyFour = (0..<63).map { _ in #"{"tag":"a"}"# }.joined(separator: ",")
        #expect(Self.problem(#"{"any":[\#(sixtyFour)]}"#) == nil)
        let sixtyFive = (0..<64).map { _ in #"{"tag":"a"}"# }.joined(separator: ",")
        // 64 items and their list make 65 nodes: the 65th is refused where it is.
        #expect(Self.problem(#"{"any":[\#(sixtyFive)]}"#)?.path == "match.any[63]")
        let huge = (0..<10_000).map { _ in #"{"tag":"a"}"# }.joined(separator: ",")
        #expect(Self.problem(#"{"any":[\#(huge)]}"#)?.path == "match.any")
        // 64 nodes across nested lists: the 65th node is refused where it is.
        let half = (0..<31).map { _ in #"{"tag":"a"}"# }.joined(separator: ",")
        let spread = #"{"all":[{"any":[\#(half)]},{"any":[\#(half),{"tag":"b"}]}]}"#
        #expect(Self.problem(spread)?.path == "match.all[1].any[30]")

        #expect(Self.problem(#"{"points":{"gte":1000000000000000}}"#) == nil)
        #expect(Self.problem(#"{"points":{"gte":-1000000000000000}}"#) == nil)
        let tooLongTag = String(repeating: "a", count: 65)
        #expect(Self.problem(#"{"tag":"\#(tooLongTag)"}"#)?.path == "match.tag")
        let hugeApp = String(repeating: "a", count: 100_000)
        #expect(Self.problem(#"{"app":"\#(hugeApp)"}"#)?.path == "match.app")
        let manyKinds = (0..<33).map { #""k\#($0)""# }.joined(separator: ",")
        #expect(Self.problem(#"{"events":{"kinds":[\#(manyKinds)],"atLeast":1,"within":"7d"}}"#)?.path == "match.events.kinds")
    }

    @Test("a segment body: name and match only, the code checked")
    func segmentBody() throws {
        func problem(_ code: String, _ text: String) -> DefinitionProblem? {
            do { _ = try Segment.parse(code: code, json: try JSONValue.parse(Array(text.utf8))); return nil } catch {
                return error as? DefinitionProblem ?? DefinitionProblem("", "\(error)")
            }
        }
        #expect(problem("vip-fans", #"{"name":"VIP fans","match":{"tag":"vip"}}"#) == nil)
        #expect(problem("vip-fans", #"{"name":"VIP fans","match":{"tag":"vip"},"reach":3}"#)?.path == "reach")
        #expect(problem("vip-fans", #"{"name":"","match":{"tag":"vip"}}"#)?.path == "name")
        #expect(problem("vip-fans", #"{"name":"VIP fans"}"#)?.path == "match")
        #expect(problem("VIP fans", #"{"name":"VIP fans","match":{"tag":"vip"}}"#)?.path == "code")
        #expect(problem("vip-fans", #"{"name":"VIP fans","match":{"any":[{"tag":"vip"},{"tag":7}]}}"#)?.path == "match.any[1].tag")
    }

    @Test("levels rank from the lowest as 1; a level beyond the table selects nobody")
    func levels() {
        let table = ["registered", "bronze", "silver", "gold"]
        #expect(SegmentMatch.levelNames(SegmentBounds([(.gte, 3)]), levels: table) == ["silver", "gold"])
        #expect(SegmentMatch.levelNames(SegmentBounds([(.gt, 3)]), levels: table) == ["gold"])
        #expect(SegmentMatch.levelNames(SegmentBounds([(.lte, 2)]), levels: table) == ["registered", "bronze"])
        #expect(SegmentMatch.levelNames(SegmentBounds([(.lt, 2)]), levels: table) == ["registered"])
        #expect(SegmentMatch.levelNames(SegmentBounds([(.eq, 2)]), levels: table) == ["bronze"])
        #expect(SegmentMatch.levelNames(SegmentBounds([(.gte, 2), (.lt, 4)]), levels: table) == ["bronze", "silver"])
        #expect(SegmentMatch.levelNames(SegmentBounds([(.gte, 5)]), levels: table) == [])
    }

    @Test("SQL: one join per distinct set clause, values only as parameters, pages bound every set")
    func sql() throws {
        let match = try Self.parse(#"{"any":[{"tag":"vip"},{"not":{"tag":"vip"}},{"app":"wx-drop.members"},{"level":{"gte":9}}]}"#)
        var query = SegmentQuery(levels: ["a", "b"])
        let sql = SegmentStore.reachSQL(match, &query)
        #expect(query.joins.count == 2, "\(sql)")
        #expect(!sql.contains("wx-drop") && !sql.contains("vip"), "\(sql)")
        #expect(sql.contains("FALSE"), "a level past the table: \(sql)")
        #expect(sql.contains("m.merged_into IS NULL"))

        var page = SegmentQuery(levels: [], after: 42)
        let members = SegmentStore.membersSQL(try Self.parse(#"{"all":[{"tag":"vip"},{"app":"a"}]}"#), limit: 10, &page)
        #expect(members.contains("t.member_id > $") && members.contains("i.member_id > $") && members.contains("m.id > $"), "\(members)")
        #expect(members.contains("ORDER BY m.id LIMIT"))
    }
}
