import Audiences
import AMQPClient
import Contracts
import Foundation
import Jobs
import Logging
import Loyalty
import Members
import Pipeline
import PostgresClient
import RedisClient
import Runtime
import Testing
import Workers

@Suite("Points in the pipeline: exactly once, within caps, against real servers")
struct PointsPoolTests {
    @Test("duplicate deliveries of one event, spread over three workers, give one grant")
    func duplicatesGrantOnce() async throws {
        let h = try await PointsHarness.open()
        let kind = h.kind("post")
        let program = RuleBook.Program(rules: [PointsRule(code: "\(h.prefix)-dup", kinds: [kind], points: 5, growth: 1, reason: "dup")],
                                       levels: .standard, calendar: BusinessCalendar(timeZone: h.timeZone))
        let workers = try await h.startWorkers(3, program: program)
        var events = Array(repeating: h.event("same", kind, openid: "o1", at: "2026-12-01T10:00:00+08:00"), count: 10)
        events += (1...20).map { h.event("e\($0)", kind, openid: "o1", at: "2026-12-01T10:00:00+08:00") }
        events += (1...5).map { h.event("x\($0)", kind, openid: "o2", at: "2026-12-01T10:00:00+08:00") }
        try await h.publish(events.shuffled())
        try await h.waitUntil { try await h.ledgerCount() >= 26 }
        try await h.stop(workers)

        #expect(try await h.ledgerCount() == 26)
        let first = try #require(try await h.member("o1"))
        #expect(first.points == 105)
        #expect(first.growth == 21)
        #expect(try await h.member("o2")?.points == 25)
        await h.close()
    }

    @Test("events racing one daily cap never exceed it, and a natural day in Beijing starts its own cap")
    func capAcrossNaturalDays() async throws {
        let h = try await PointsHarness.open()
        let kind = h.kind("post")
        let rule = PointsRule(code: "\(h.prefix)-cap", kinds: [kind], points: 3, growth: 2,
                              caps: .init(daily: .init(points: 15, growth: 7)), reason: "capped post")
        let workers = try await h.startWorkers(3, program: .init(rules: [rule], levels: .standard))
        // 23:40-23:59 on 1 December and 00:00-00:19 on 2 December, Beijing time: in UTC all of it is
        // one day (15:40-16:19), so a worker counting by UTC would grant 15, not 30.
        let late = (0..<20).map { h.event("a\($0)", kind, openid: "o1", at: "2026-12-01T23:\(40 + $0):00+08:00") }
        let early = (0..<20).map { h.event("b\($0)", kind, openid: "o1",
                                           at: "2026-12-02T00:\(String(format: "%02d", $0)):00+08:00") }
        try await h.publish((late + early).shuffled())
        try await h.waitUntil {
            guard let member = try await h.member("o1") else { return false }
            return member.points >= 30 && member.growth >= 14
        }
        try await h.stop(workers)
        let member = try #require(try await h.member("o1"))
        #expect(member.points == 30)
        #expect(member.growth == 14)
        await h.close()
    }

    @Test("a worker killed between the Redis decision and the commit: the redelivery grants once, counts the cap once")
    func killedBetweenDecisionAndCommit() async throws {
        let h = try await PointsHarness.open()
        let kind = h.kind("post")
        let rule = PointsRule(code: "\(h.prefix)-crash", kinds: [kind], points: 4, growth: 4,
                              caps: .init(daily: .init(points: 6)), reason: "crash test")
        let pool = h.pool(.init(rules: [rule], levels: .standard))
        let first = h.event("first", kind, openid: "o1", at: "2026-12-01T10:00:00+08:00")
        let member = try await MemberDirectory(database: h.database).resolve(Identity(platform: .wechat, app: h.app, openid: "o1"))
        // What the dead worker did: the decision, and no commit.
        let decider = PointsDecider(redis: h.redis, calendar: PeriodCalendar(timeZone: h.timeZone))
        let decided = try await decider.decide([DecisionRequest(member: member, eventID: first.id, occurredAt: first.occurredAt,
                                                                rules: [(rule, 4, 4)])])
        #expect(decided == [[Decision(status: .granted, points: 4, growth: 4)]])
        // The broker redelivers it (twice, to be sure), then a second event meets the cap.
        try await pool.process([first])
        try await pool.process([first])
        try await pool.process([h.event("second", kind, openid: "o1", at: "2026-12-01T11:00:00+08:00")])
        var view = try #require(try await h.member("o1"))
        #expect(view.points == 6) // 4, then 2 left under the cap of 6
        #expect(view.growth == 8)
        let counter = PointsDecider.counterKey(member: member, rule: rule.code, measure: "p", period: "d20261201")
        #expect(try await h.redis.connection.command(["GET", counter]).int == 6)

        // Redis forgets the decision (a flushed or failed-over Redis): the ledger's unique index is the last guard.
        let decisionKey = PointsDecider.decisionKey(member: member, eventID: first.id, rule: rule.code)
        _ = try await h.redis.connection.command(["DEL", decisionKey, counter])
        try await pool.process([first])
        view = try #require(try await h.member("o1"))
        #expect(view.points == 6)
        #expect(try await h.ledgerCount() == 2)
        await h.close()
    }

    @Test("concurrent first sightings of one openid make one member; a unionid links a second app's openid to it")
    func oneMemberPerOpenid() async throws {
        let h = try await PointsHarness.open()
        let directory = MemberDirectory(database: h.database)
        let identity = Identity(platform: .wechat, app: h.app, openid: "fresh")
        let ids = try await withThrowingTaskGroup(of: Int64.self) { group in
            for _ in 0..<16 { group.addTask { try await directory.resolve(identity, unionid: "u-\(h.app)") } }
            var ids = Set<Int64>()
            for try await id in group { ids.insert(id) }
            return ids
        }
        #expect(ids.count == 1)
        let member = try #require(ids.first)
        let other = try await directory.resolve(Identity(platform: .wechat, app: h.app + "-mini", openid: "other"), unionid: "u-\(h.app)")
        #expect(other == member)
        let view = try #require(try await MemberQueries(database: h.database).member(member))
        #expect(view.identities.map(\.openid).sorted() == ["fresh", "other"])

        // Batches of first sightings racing (the worker's path for openids without a unionid).
        let batch = Dictionary(uniqueKeysWithValues: (0..<50).map { (Identity(platform: .wechat, app: h.app, openid: "b\($0)"), String?.none) })
        let answers = try await withThrowingTaskGroup(of: [Identity: Int64].self) { group in
            for _ in 0..<8 { group.addTask { try await directory.resolve(batch) } }
            var answers: [[Identity: Int64]] = []
            for try await answer in group { answers.append(answer) }
            return answers
        }
        for identity in batch.keys { #expect(Set(answers.map { $0[identity] }).count == 1) }
        let stored = try await h.database.query("""
            SELECT count(DISTINCT member_id) AS members, count(*) AS identities FROM member_identities WHERE app = $1 AND openid LIKE 'b%'
            """, [h.app])
        #expect(stored[0].int("members") == 50)
        #expect(stored[0].int("identities") == 50)
        // The losers of both races left no member behind (a committed member always has an
        // identity, unless it was merged into another).
        let orphans = try await h.database.query("""
            SELECT count(*) AS c FROM members m WHERE m.id >= $1 AND m.merged_into IS NULL
              AND NOT EXISTS (SELECT 1 FROM member_identities i WHERE i.member_id = m.id)
            """, [member])
        #expect(orphans[0].int("c") == 0)
        await h.close()
    }

    @Test("a rule changed in PostgreSQL applies within seconds, without a restart")
    func ruleChangesApply() async throws {
        let h = try await PointsHarness.open()
        let store = RuleStore(database: h.database)
        let kind = h.kind("checkin")
        var rule = PointsRule(code: "\(h.prefix)-live", kinds: [kind], points: 2, growth: 0, reason: "live")
        try await store.put(rule)
        let loyalty = LoyaltyService(rules: RuleBook(store: store, calendar: BusinessCalendarStore(database: h.database), timeZone: h.timeZone,
                                                     refreshInterval: .milliseconds(500)),
                                     members: MemberDirectory(database: h.database),
                                     decider: PointsDecider(redis: h.redis, calendar: PeriodCalendar(timeZone: h.timeZone)),
                                     ledger: Ledger(database: h.database))
        let pool = Pipeline.standard(database: h.database, loyalty: loyalty, audiences: AudienceService(database: h.database))
        try await pool.process([h.event("1", kind, openid: "o1", at: "2026-12-01T10:00:00+08:00")])
        rule.points = 7
        try await store.put(rule)
        try await Task.sleep(for: .milliseconds(600))
        try await pool.process([h.event("2", kind, openid: "o1", at: "2026-12-01T10:01:00+08:00")])
        _ = try await store.setEnabled(rule.code, false)
        try await Task.sleep(for: .milliseconds(600))
        try await pool.process([h.event("3", kind, openid: "o1", at: "2026-12-01T10:02:00+08:00")])
        #expect(try await h.member("o1")?.points == 9)
        _ = try await store.delete(rule.code)
        await h.close()
    }

    @Test("a level change and the grant's news are written to the outbox with the grant and relayed to fanflow.events")
    func levelChangeRelayed() async throws {
        let h = try await PointsHarness.open()
        let kind = h.kind("verify")
        let pool = h.pool(.init(rules: [PointsRule(code: "\(h.prefix)-big", kinds: [kind], points: 1, growth: 150, reason: "big")],
                                levels: .standard))
        let tap = try await EventTap.open()
        try await pool.process([h.event("1", kind, openid: "o1", at: "2026-12-01T10:00:00+08:00")])
        let view = try #require(try await h.member("o1"))
        #expect(view.level == "bronze")

        let broker = ManagedAMQPConnection(configuration: try AMQPConfiguration(url: TestEnvironment.amqpURL),
                                           logger: .init(label: "test.outbox")) { connection in try await connection.enableConfirms() }
        try await broker.start()
        let relay = OutboxRelay(outbox: Outbox(database: h.database), broker: broker, logger: .init(label: "test.outbox"))
        var relayed = 0
        for _ in 0..<20 where relayed == 0 {
            relayed += try await relay.relayOnce()
        }
        // The grant is news of its own (points.granted), beside the level change it caused.
        let published = try await tap.wait(app: h.app, count: 2)
        #expect(published.map(\.routingKey).sorted() == ["fanflow.member.level_changed", "fanflow.points.granted"])
        let news = try #require(published.first { $0.routingKey == "fanflow.points.granted" })
        #expect(news.envelope.attributes["points"] == .integer(1))
        #expect(news.envelope.attributes["balance"] == .integer(1))
        #expect(news.envelope.attributes["memberId"] == .integer(view.id))
        let change = try #require(published.first { $0.routingKey == "fanflow.member.level_changed" })
        #expect(change.routingKey == "fanflow.member.level_changed")
        #expect(change.envelope.kind == .levelChanged)
        #expect(change.envelope.subject.openid == "o1")
        #expect(change.envelope.attributes["memberId"] == .integer(view.id))
        #expect(change.envelope.attributes["from"] == "registered")
        #expect(change.envelope.attributes["to"] == "bronze")
        let left = try await h.database.query("SELECT count(*) AS c FROM outbox WHERE message_id LIKE $1", ["fanflow:level:\(view.id):%"])
        #expect(left[0].int("c") == 0)
        await broker.close()
        await tap.close()
        await h.close()
    }

    @Test("with points news off (FANFLOW_POINTS_NEWS=off) a grant still counts and writes no points.granted")
    func newsOff() async throws {
        let h = try await PointsHarness.open()
        let kind = h.kind("quiet")
        let pool = Pipeline.standard(database: h.database, loyalty: h.loyalty(
            .init(rules: [PointsRule(code: "\(h.prefix)-q", kinds: [kind], points: 5, growth: 0, reason: "q")], levels: .standard),
            news: NeverAnnounce()), audiences: AudienceService(database: h.database))
        try await pool.process([h.event("1", kind, openid: "q1", at: "2026-12-01T10:00:00+08:00")])
        let member = try #require(try await h.member("q1"))
        #expect(member.points == 5)
        // Read at once after the commit: other tests' relays poll every 250 ms, so news written would still be here.
        let news = try await h.database.query("SELECT count(*) AS n FROM outbox WHERE message_id LIKE $1", ["fanflow:granted:\(member.id):%"])
        #expect(news.first?.int("n") == 0)
        await h.close()
    }

    @Test("a nickname the brand's event carries is stored for push templates; the latest wins, blank and over-long ones are ignored")
    func nicknames() async throws {
        let h = try await PointsHarness.open()
        let kind = h.kind("signup")
        let pool = h.pool(.init(rules: [], levels: .standard))
        try await pool.process([h.event("1", kind, openid: "n1", at: "2026-12-01T10:00:00+08:00", attributes: ["nickname": " 小明 "]),
                                h.event("2", kind, openid: "n2", at: "2026-12-01T10:00:00+08:00", attributes: ["nickname": "   "])])
        func nickname(_ openid: String) async throws -> String? {
            let id = try #require(try await h.member(openid)?.id)
            return try await h.database.query("SELECT nickname FROM members WHERE id = $1", [id]).first?.string("nickname")
        }
        #expect(try await nickname("n1") == "小明")
        #expect(try await nickname("n2") == "")
        try await pool.process([h.event("3", kind, openid: "n1", at: "2026-12-01T11:00:00+08:00", attributes: ["nickname": "Ming"]),
                                h.event("4", kind, openid: "n1", at: "2026-12-01T11:00:00+08:00",
                                        attributes: ["nickname": .string(String(repeating: "x", count: 65))])])
        #expect(try await nickname("n1") == "Ming")
        await h.close()
    }

    @Test("after Redis lost a member's counters, rebuild-counters restores them from the ledger and the caps hold")
    func rebuildCounters() async throws {
        let h = try await PointsHarness.open()
        let post = h.kind("post"), welcome = h.kind("welcome")
        let capped = PointsRule(code: "\(h.prefix)-capped", kinds: [post], points: 3, growth: 0,
                                caps: .init(daily: .init(points: 15)), reason: "post")
        let once = PointsRule(code: "\(h.prefix)-once", kinds: [welcome], frequency: .once, points: 10, growth: 0, reason: "welcome")
        let pool = h.pool(.init(rules: [capped, once], levels: .standard))
        for n in 0..<5 { try await pool.process([h.event("p\(n)", post, openid: "o1", at: "2026-12-01T10:0\(n):00+08:00")]) }
        try await pool.process([h.event("w1", welcome, openid: "o1", at: "2026-12-01T10:10:00+08:00")])
        let member = try #require(try await h.member("o1")).id
        let dayKey = PointsDecider.counterKey(member: member, rule: capped.code, measure: "p", period: "d20261201")
        #expect(try await h.redis.connection.command(["GET", dayKey]).int == 15)

        // Redis loses everything it knew about the member.
        var cursor = "0"
        repeat {
            let reply = try await h.redis.connection.command(["SCAN", cursor, "MATCH", "fanflow:{m:\(member)}:*", "COUNT", "1000"])
            cursor = reply.array?.first?.string ?? "0"
            let keys = reply.array?.last?.array?.compactMap(\.string) ?? []
            if !keys.isEmpty { _ = try await h.redis.connection.command(["DEL"] + keys) }
        } while cursor != "0"
        #expect(try await h.redis.connection.command(["GET", dayKey]).isNull)

        let rebuild = CounterRebuild(database: h.database, redis: h.redis, calendar: PeriodCalendar(timeZone: h.timeZone))
        let now = try #require(RFC3339.parse("2026-12-01T12:00:00+08:00"))
        #expect(try await rebuild.run(now: now, rules: [capped, once], members: [member]) > 0)
        #expect(try await h.redis.connection.command(["GET", dayKey]).int == 15)
        let monthKey = PointsDecider.counterKey(member: member, rule: capped.code, measure: "p", period: "m202612")
        #expect(try await h.redis.connection.command(["GET", monthKey]).int == 15)
        // Run again: nothing to raise, nothing lowered.
        #expect(try await rebuild.run(now: now, rules: [capped, once], members: [member]) == 0)

        // New events after the rebuild: the day's cap and the once-only rule still hold.
        try await pool.process([h.event("p9", post, openid: "o1", at: "2026-12-01T13:00:00+08:00")])
        try await pool.process([h.event("w2", welcome, openid: "o1", at: "2026-12-01T13:01:00+08:00")])
        #expect(try await h.member("o1")?.points == 25)
        await h.close()
    }

    @Test("binding one phone number to two members merges them into the older: identities, ledger, tags and balances follow, once")
    func phoneMerge() async throws {
        let h = try await PointsHarness.open()
        let earn = h.kind("earn")
        let pool = h.pool(.init(rules: [PointsRule(code: "\(h.prefix)-earn", kinds: [earn], points: 10, growth: 50, reason: "earn")],
                                levels: .standard))
        let phone = "+86139" + String(UInt32.random(in: 10_000_000...99_999_999))
        try await pool.process([h.event("x1", earn, openid: "x", at: "2026-12-01T10:00:00+08:00")])
        try await pool.process([h.event("y1", earn, openid: "y", at: "2026-12-01T10:01:00+08:00"),
                                h.event("y2", earn, openid: "y", at: "2026-12-01T10:02:00+08:00")])
        let x = try #require(try await h.member("x")), y = try #require(try await h.member("y"))
        #expect(y.level == "bronze")
        try await h.database.query("INSERT INTO member_tags (member_id, tag) VALUES ($1, 'lottery-lover')", [y.id])

        try await pool.process([h.event("bind-x", .memberPhoneBound, openid: "x", at: "2026-12-01T11:00:00+08:00", attributes: ["phone": .string(phone)])])
        let bindY = h.event("bind-y", .memberPhoneBound, openid: "y", at: "2026-12-01T11:05:00+08:00", attributes: ["phone": .string(phone)])
        try await pool.process([bindY])
        try await pool.process([bindY]) // redelivered: the merge is not done twice

        let merged = try #require(try await h.member("y"))
        #expect(merged.id == x.id)
        #expect((merged.points, merged.growth, merged.level) == (30, 150, "bronze"))
        #expect(merged.identities.map(\.openid).sorted() == ["x", "y"])
        #expect(merged.tags == ["lottery-lover"])
        let gone = try #require(try await MemberQueries(database: h.database).member(y.id))
        #expect((gone.points, gone.growth, gone.mergedInto) == (0, 0, x.id))
        #expect(try await MemberQueries(database: h.database).ledger(member: x.id, LedgerFilter()).count == 3)
        // What y earns from now on is the survivor's.
        try await pool.process([h.event("y3", earn, openid: "y", at: "2026-12-01T12:00:00+08:00")])
        #expect(try await h.member("x")?.points == 40)
        let merges = try await h.database.query("SELECT count(*) AS c FROM member_merges WHERE phone = $1", [phone])
        #expect(merges[0].int("c") == 1)
        await h.close()
    }
}
