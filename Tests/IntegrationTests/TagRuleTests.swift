@testable import Audiences
import Contracts
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Loyalty
import Members
import Pipeline
import PostgresClient
import Testing

/// Tag rules end to end on real PostgreSQL: windows sliding by the hour, a backfill and live
/// batches overlapping without counting an event twice, redeliveries counting nothing, merges
/// keeping the union of tags, and the admin API over real HTTP.
@Suite("tag rules")
struct TagRuleTests {
    static let hour: TimeInterval = 3600

    /// Creates the tag and the rule in the stores (as the admin API does) and returns the rule.
    static func rule(_ h: PointsHarness, tag: String, kinds: [EventKind], conditions: JSONValue? = nil, atLeast: Int,
                     within: String, sticky: Bool = false, database: PostgresPool? = nil) async throws -> StoredTagRule {
        let database = database ?? h.database
        _ = try await TagStore(database: database).put(Tag(code: tag, name: tag))
        var body: [String: JSONValue] = ["tag": .string(tag), "kinds": .array(kinds.map { .string($0.rawValue) }),
                                         "atLeast": .integer(Int64(atLeast)), "within": .string(within), "sticky": .bool(sticky)]
        if let conditions { body["conditions"] = conditions }
        let code = TestEnvironment.unique("r")
        let rule = try TagRule.parse(code: code, json: .object(body))
        #expect(try await TagRuleStore(database: database).save(rule) == .saved(created: true))
        return try #require(try await TagRuleStore(database: database).get(code))
    }

    /// Runs a rule's backfill to the end, step by step, as the pipeline worker's job runner would
    /// (another process's runner may take steps too: a step is keyed by its cursor).
    static func backfill(_ h: PointsHarness, _ stored: StoredTagRule, database: PostgresPool? = nil) async throws {
        let database = database ?? h.database
        let backfill = TagRuleBackfill(database: database)
        for _ in 0..<400 {
            let row = try await database.query("""
                SELECT state, extract(epoch FROM cursor)::float8 AS cursor FROM tag_rules WHERE code = $1 AND id = $2
                """, [stored.rule.code, Int64(stored.id)])
            let state = try #require(row.first).requiredString("state")
            if state == "live" { return }
            guard let cursor = try row.first?.optionalDouble("cursor") else {
                try await backfill.goLive(rule: stored.rule.code, id: stored.id)
                continue
            }
            let step = try await backfill.step(rule: stored.rule.code, id: stored.id, from: Date(timeIntervalSince1970: cursor), span: 86_400 * 3)
            if case .finished = step { try await backfill.goLive(rule: stored.rule.code, id: stored.id) }
        }
        Issue.record("the backfill did not finish in 400 steps")
    }

    static func tags(_ h: PointsHarness, _ openid: String, database: PostgresPool? = nil) async throws -> [MemberTag] {
        let database = database ?? h.database
        guard let member = try await MemberDirectory(database: database).lookup(Identity(platform: .wechat, app: h.app, openid: openid)) else {
            return []
        }
        return try await TagStore(database: database).tags(of: member) ?? []
    }

    static func counted(_ h: PointsHarness, _ stored: StoredTagRule, _ openid: String, database: PostgresPool? = nil) async throws -> Int64 {
        let database = database ?? h.database
        guard let member = try await MemberDirectory(database: database).lookup(Identity(platform: .wechat, app: h.app, openid: openid)) else {
            return 0
        }
        return try await database.query("""
            SELECT coalesce(sum(events), 0)::bigint AS n FROM tag_rule_counts WHERE rule_id = $1 AND member_id = $2
            """, [Int64(stored.id), member]).first?.requiredInt64("n") ?? 0
    }

    static func at(_ date: Date) -> String { RFC3339.format(date) }

    @Test("a 7d window: an event 8 days old does not count, one 6 days old does, and the hold ends when the window passes it")
    func windowSlides() async throws {
        let h = try await PointsHarness.open()
        defer { Task { await h.close() } }
        // A database of its own: the upkeep below runs at a future instant, which on the shared
        // database would end other tests' holds and prune their counts.
        try await ScratchDatabase.with { database, _ in
            let kind = h.kind("read")
            let stored = try await Self.rule(h, tag: TestEnvironment.unique("reader"), kinds: [kind], atLeast: 1, within: "7d", database: database)
            try await Self.backfill(h, stored, database: database)
            let pipeline = h.pool(.init(rules: [], levels: .standard), database: database)
            let now = Date()
            let old = now.addingTimeInterval(-8 * 86_400), recent = now.addingTimeInterval(-6 * 86_400)
            try await pipeline.process([h.event("old", kind, openid: "o1", at: Self.at(old))])
            #expect(try await Self.tags(h, "o1", database: database).isEmpty, "an event 8 days old counts in a 7d window")
            #expect(try await Self.counted(h, stored, "o1", database: database) == 0, "a bucket out of the window was stored")

            try await pipeline.process([h.event("recent", kind, openid: "o2", at: Self.at(recent))])
            let held = try await Self.tags(h, "o2", database: database)
            #expect(held.map(\.code) == [stored.rule.tag])
            #expect(held.first?.source == "rule:\(stored.rule.code)")
            // The hold ends exactly when the event's hour has slid a whole window away.
            let hourStart = (recent.timeIntervalSince1970 / Self.hour).rounded(.down) * Self.hour
            let expected = Date(timeIntervalSince1970: hourStart + Self.hour + 7 * 86_400)
            let expiresAt = try #require(held.first?.expiresAt)
            #expect(abs(expiresAt.timeIntervalSince(expected)) < 0.01, "expires \(expiresAt), expected \(expected)")

            // The minute's upkeep at that instant deletes the hold, and prunes the hour it came from.
            let report = try await AudienceUpkeep(database: database).run(now: expected)
            #expect(report.expiredTags == 1)
            #expect(report.prunedBuckets == 1)
            #expect(try await Self.tags(h, "o2", database: database).isEmpty, "the hold outlived its window")
        }
    }

    @Test("atLeast 2: the hold lasts until the second-newest event's hour leaves the window; conditions filter; claimed subjects never count")
    func atLeastAndConditions() async throws {
        let h = try await PointsHarness.open()
        defer { Task { await h.close() } }
        let kind = h.kind("text")
        let stored = try await Self.rule(h, tag: TestEnvironment.unique("asker"), kinds: [kind],
                                         conditions: .object(["Content": .object(["contains": "新品"]), "amount": .object(["gte": .integer(100)])]),
                                         atLeast: 2, within: "3d")
        try await Self.backfill(h, stored)
        let pipeline = h.pool(.init(rules: [], levels: .standard))
        let now = Date()
        let older = now.addingTimeInterval(-50 * Self.hour), newer = now.addingTimeInterval(-2 * Self.hour)
        func text(_ id: String, _ content: String, _ amount: JSONValue, at date: Date) -> Envelope {
            h.event(id, kind, openid: "a1", at: Self.at(date), attributes: ["Content": .string(content), "amount": amount])
        }
        try await pipeline.process([text("1", "有新品吗", .integer(100), at: older), text("2", "hello", .integer(500), at: newer),
                                    text("3", "新品到了", .string("500"), at: newer)])
        #expect(try await Self.tags(h, "a1").isEmpty, "events failing a condition counted")
        try await pipeline.process([text("4", "想看新品", .number(100.5), at: newer)])
        let held = try await Self.tags(h, "a1")
        #expect(held.map(\.code) == [stored.rule.tag])
        let hourStart = (older.timeIntervalSince1970 / Self.hour).rounded(.down) * Self.hour
        #expect(abs((held.first?.expiresAt?.timeIntervalSince1970 ?? 0) - (hourStart + Self.hour + 3 * 86_400)) < 0.01)

        // A beacon that only claims an openid, of the same kind and attributes: never counted.
        var claimed = text("5", "新品", .integer(1000), at: newer)
        claimed.subject.verified = false
        try await pipeline.process([claimed])
        #expect(try await Self.counted(h, stored, "a1") == 2)
        _ = try await TagRuleStore(database: h.database).delete(stored.rule.code)
    }

    @Test("backfill and live overlap: history, live events during the backfill and redeliveries each count once")
    func backfillAndLiveCountOnce() async throws {
        let h = try await PointsHarness.open()
        defer { Task { await h.close() } }
        let kind = h.kind("visit")
        let pipeline = h.pool(.init(rules: [], levels: .standard))
        let now = Date()
        // History: five events over three days, stored before the rule exists.
        let history = (0..<5).map { n in
            h.event("h\(n)", kind, openid: "b1", at: Self.at(now.addingTimeInterval(-Double(n) * 14 * Self.hour)))
        }
        try await pipeline.process(history)
        let stored = try await Self.rule(h, tag: TestEnvironment.unique("regular"), kinds: [kind], atLeast: 8, within: "7d")
        #expect(stored.state == .backfilling)
        // While it backfills: two new events live, one old one redelivered, and a batch retried.
        let live = [h.event("l1", kind, openid: "b1", at: Self.at(now.addingTimeInterval(-30 * Self.hour))),
                    h.event("l2", kind, openid: "b1", at: Self.at(now))]
        try await pipeline.process(live + [history[2]])
        try await pipeline.process(live)
        let liveCounted = try await Self.counted(h, stored, "b1")
        #expect(liveCounted == 2, "live counted \(liveCounted), not the 2 new events")
        try await Self.backfill(h, stored)
        #expect(try await Self.counted(h, stored, "b1") == 7, "backfill plus live did not count the 7 events once each")
        #expect(try await Self.tags(h, "b1").isEmpty, "tagged at 7 of 8 events")
        let after = try #require(try await TagRuleStore(database: h.database).get(stored.rule.code))
        #expect(after.state == .live)
        #expect(after.progress == 1)
        // The eighth event, live after the backfill: tagged at once.
        try await pipeline.process([h.event("l3", kind, openid: "b1", at: Self.at(now))])
        #expect(try await Self.tags(h, "b1").map(\.code) == [stored.rule.tag])
        #expect(try await h.database.query("SELECT 1 FROM tag_rule_seen WHERE rule_id = $1", [Int64(stored.id)]).isEmpty,
                "marks of the backfill were left")
        _ = try await TagRuleStore(database: h.database).delete(stored.rule.code)
    }

    @Test("a changed rule starts over: its former holds go at once and history is counted again under the new definition")
    func changedRuleStartsOver() async throws {
        let h = try await PointsHarness.open()
        defer { Task { await h.close() } }
        let kind = h.kind("like")
        let pipeline = h.pool(.init(rules: [], levels: .standard))
        try await pipeline.process((0..<3).map { h.event("k\($0)", kind, openid: "c1", at: Self.at(Date())) })
        let first = try await Self.rule(h, tag: TestEnvironment.unique("fan"), kinds: [kind], atLeast: 2, within: "1d")
        try await Self.backfill(h, first)
        #expect(try await Self.tags(h, "c1").count == 1)
        let changed = try TagRule.parse(code: first.rule.code, json: .object([
            "tag": .string(first.rule.tag), "kinds": .array([.string(kind.rawValue)]), "atLeast": .integer(5), "within": .string("1d")]))
        let rules = TagRuleStore(database: h.database)
        #expect(try await rules.save(changed) == .saved(created: false))
        #expect(try await rules.save(changed) == .unchanged)
        #expect(try await Self.tags(h, "c1").isEmpty, "the former generation's hold outlived the change")
        let second = try #require(try await rules.get(first.rule.code))
        #expect(second.id != first.id)
        try await Self.backfill(h, second)
        #expect(try await Self.counted(h, second, "c1") == 3)
        #expect(try await Self.tags(h, "c1").isEmpty)
        _ = try await AudienceUpkeep(database: h.database).run(now: Date())
        #expect(try await h.database.query("SELECT 1 FROM tag_rule_counts WHERE rule_id = $1", [Int64(first.id)]).isEmpty,
                "the retired generation's counts were left")
        _ = try await rules.delete(first.rule.code)
    }

    @Test("merged members keep the union of their tags, and their summed events earn what neither had alone")
    func mergeKeepsUnion() async throws {
        let h = try await PointsHarness.open()
        defer { Task { await h.close() } }
        let kind = h.kind("post")
        let stored = try await Self.rule(h, tag: TestEnvironment.unique("poster"), kinds: [kind], atLeast: 2, within: "7d")
        try await Self.backfill(h, stored)
        let pipeline = h.pool(.init(rules: [], levels: .standard))
        try await pipeline.process([h.event("p1", kind, openid: "m1", at: Self.at(Date())),
                                    h.event("p2", kind, openid: "m2", at: Self.at(Date()))])
        let first = try #require(try await h.member("m1")).id, second = try #require(try await h.member("m2")).id
        let tags = TagStore(database: h.database)
        let vip = TestEnvironment.unique("vip"), new = TestEnvironment.unique("new")
        _ = try await tags.put(Tag(code: vip, name: "VIP"))
        _ = try await tags.put(Tag(code: new, name: "new"))
        #expect(try await tags.change(member: first, add: [vip], remove: []) != .unknownMember)
        #expect(try await tags.change(member: second, add: [new], remove: []) != .unknownMember)
        let phone = "1" + String(UInt64.random(in: 3_000_000_000...3_999_999_999))
        let directory = MemberDirectory(database: h.database)
        _ = try await directory.bindPhone(phone, member: first, eventID: TestEnvironment.unique("bind"), participants: [AudienceMerge()])
        let merge = try await directory.bindPhone(phone, member: second, eventID: TestEnvironment.unique("bind"), participants: [AudienceMerge()])
        #expect(merge == .merged(from: max(first, second), into: min(first, second)))
        let survivor = min(first, second)
        let held = try #require(try await tags.tags(of: survivor))
        #expect(Set(held.map(\.code)) == [vip, new, stored.rule.tag], "\(held)")
        // The absorbed id reads as the member it became.
        #expect(try await tags.tags(of: max(first, second)) == held)
        _ = try await TagRuleStore(database: h.database).delete(stored.rule.code)
    }

    @Test("conditions mean the same live (Swift) and stored (SQL): one matrix of attributes through both")
    func conditionsAgree() async throws {
        let h = try await PointsHarness.open()
        defer { Task { await h.close() } }
        let values: [JSONValue] = [.string("新品到了"), .string("新"), .string("100"), .integer(100), .number(100.0), .number(99.5),
                                   .integer(-3), .bool(true), .bool(false), .string(""), .string("/pages/article/42?x=1"), .null,
                                   .array([.integer(100)]), .object(["a": .integer(1)])]
        let tests: [JSONValue] = [.string("新品到了"), .integer(100), .number(100.0), .bool(true), .string("100"),
                                  .object(["contains": "新品"]), .object(["startsWith": "/pages/article"]), .object(["gte": .integer(100)]),
                                  .object(["gt": .number(99.5)]), .object(["lt": .integer(0)]), .object(["lte": .integer(100), "gte": .number(99.5)]),
                                  .object(["in": .array([.integer(100), .string("新")])]), .object(["eq": .bool(false)])]
        for test in tests {
            let conditions = try EventConditions.parse(.object(["v": test]), path: "conditions")
            for value in values {
                let attributes: [String: JSONValue] = value == .null ? [:] : ["v": value]
                let expected = conditions.matches(attributes)
                let stored = try await AudienceSQLProbe.matches(conditions, attributes, on: h.database)
                #expect(stored == expected, "\(test) on \(value): Swift \(expected), SQL \(stored)")
            }
        }
    }
}

/// Runs conditions' SQL on one attributes document, as a backfill's scan would.
enum AudienceSQLProbe {
    static func matches(_ conditions: EventConditions, _ attributes: [String: JSONValue], on database: PostgresPool) async throws -> Bool {
        var parameters = SQLParameters()
        let document = parameters.add(String(decoding: JSONValue.object(attributes).jsonBytes, as: UTF8.self))
        let condition = conditions.sql("e.attributes", &parameters)
        let rows = try await database.query("SELECT (\(condition)) IS TRUE AS hit FROM (SELECT \(document)::jsonb AS attributes) e",
                                            parameters.values)
        return try #require(rows.first).requiredBool("hit")
    }
}
