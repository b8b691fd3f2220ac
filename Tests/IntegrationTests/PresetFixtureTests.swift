import Contracts
import Foundation
import Loyalty
import Members
import Testing
import Workers

/// The reference programs replayed from a recorded sequence of events; every figure below is the
/// hand calculation written next to the event that causes it.
@Suite("Preset programs: a recorded sequence gives the hand-calculated balances and levels")
struct PresetFixtureTests {
    @Test("community + membership presets, replayed event by event")
    func replay() async throws {
        let h = try await PointsHarness.open()
        let program = RuleBook.Program(rules: ProgramPreset.community.rules + ProgramPreset.membership.rules, levels: .standard)
        let pool = h.pool(program)
        var n = 0
        func send(_ kind: EventKind, _ openid: String, _ time: String, _ attributes: [String: JSONValue] = [:]) async throws {
            n += 1
            try await pool.process([h.event("f\(n)", kind, openid: openid, at: time, attributes: attributes)])
        }
        // Check-ins: once per natural day. A: +1p +3g, nothing, +1p +3g  → 2p 6g
        try await send(.memberCheckin, "a", "2026-12-01T09:00:00+08:00")
        try await send(.memberCheckin, "a", "2026-12-01T20:00:00+08:00")
        try await send(.memberCheckin, "a", "2026-12-02T08:00:00+08:00")
        // Six posts on 1 December. community.post-comment: 3p 3g each, points capped at 15 a day
        // → 15p 18g; member.post: 2p 5g each, no cap → 12p 30g.  → 27p 48g
        for hour in 10..<16 { try await send(.communityPost, "a", "2026-12-01T\(hour):00:00+08:00") }
        // Two comments the same day: the shared daily points cap is used up → 0p, 3g each.  → 0p 6g
        try await send(.communityComment, "a", "2026-12-01T17:00:00+08:00")
        try await send(.communityComment, "a", "2026-12-01T17:30:00+08:00")
        // Six shares to moments: 3p 3g, daily points cap 15 → 15p 18g. One to a friend: no rule.
        for minute in 10..<16 { try await send(.communityShare, "a", "2026-12-01T18:\(minute):00+08:00", ["channel": "moments"]) }
        try await send(.communityShare, "a", "2026-12-01T18:30:00+08:00", ["channel": "friend"])
        // Two deliveries: 259.00 and 100.00 yuan → pending 25p 25g and 10p 10g, due in 15 days.
        try await send(.orderDelivered, "a", "2026-12-01T12:00:00+08:00", ["orderId": "A1", "amount": .integer(25_900)])
        try await send(.orderDelivered, "a", "2026-12-01T12:05:00+08:00", ["orderId": "A2", "amount": .integer(10_000)])
        // A2 refunded before it matured: the pending grant is cancelled.
        try await send(.orderRefunded, "a", "2026-12-03T12:00:00+08:00", ["orderId": "A2", "amount": .integer(10_000)])
        // B registers, referred by A: 3p 5g each. Registering again grants neither of them anything.
        try await send(.memberRegistered, "b", "2026-12-04T10:00:00+08:00", ["referredBy": "a"])
        try await send(.memberRegistered, "b", "2026-12-04T10:01:00+08:00", ["referredBy": "a"])
        // B verifies a product code: 5p 50g.
        try await send(.codeVerified, "b", "2026-12-04T11:00:00+08:00", ["code": "X-1"])

        // A: 2 + 27 + 0 + 15 + 3 = 47 points; 6 + 48 + 6 + 18 + 5 = 83 growth; 25p 25g pending.
        var a = try #require(try await h.member("a"))
        #expect((a.points, a.growth, a.pendingPoints, a.pendingGrowth, a.level) == (47, 83, 25, 25, "registered"))
        let b = try #require(try await h.member("b"))
        #expect((b.points, b.growth, b.level) == (8, 55, "registered"))

        // 15 days after delivery A1 matures: 72p 108g, and 108 growth is bronze. Each pending entry
        // got its maturation job in the transaction that wrote it, due exactly then.
        let ledger = Ledger(database: h.database)
        let due = try #require(RFC3339.parse("2026-12-16T12:00:00+08:00"))
        let jobs = try await h.database.query("""
            SELECT (j.payload->>'ledgerId')::bigint AS entry, extract(epoch FROM j.due_at)::float8 AS due, l.ref FROM jobs j
            JOIN ledger l ON l.id = (j.payload->>'ledgerId')::bigint
            WHERE j.kind = 'loyalty.mature' AND j.status = 'scheduled' AND l.member_id = $1 ORDER BY l.ref
            """, [a.id])
        #expect(jobs.map { $0.string("ref") ?? "" } == ["A1", "A2"])
        #expect(jobs.first?.string("due").flatMap(Double.init) == due.timeIntervalSince1970)
        let entries = jobs.compactMap { $0.int("entry").map(Int64.init) }
        // A2's job finds its entry cancelled by the refund and changes nothing; running both twice is harmless.
        #expect(try await ledger.mature(ids: entries, levels: .standard) == 1)
        #expect(try await ledger.mature(ids: entries, levels: .standard) == 0)
        a = try #require(try await h.member("a"))
        #expect((a.points, a.growth, a.pendingPoints, a.pendingGrowth, a.level) == (72, 108, 0, 0, "bronze"))

        // A1 refunded after it matured: reversed with negative entries, once, however often the refund comes.
        try await send(.orderRefunded, "a", "2026-12-18T12:00:00+08:00", ["orderId": "A1", "amount": .integer(25_900)])
        try await send(.orderRefunded, "a", "2026-12-18T12:01:00+08:00", ["orderId": "A1", "amount": .integer(25_900)])
        a = try #require(try await h.member("a"))
        #expect((a.points, a.growth, a.level) == (47, 83, "registered"))

        let history = try await MemberQueries(database: h.database).ledger(member: a.id, LedgerFilter(limit: 500))
        let kinds = Dictionary(grouping: history, by: \.kind).mapValues(\.count)
        #expect(kinds == ["grant": 23, "pending": 2, "cancelled": 1, "matured": 1, "reversal": 1])
        #expect(history.first { $0.kind == "reversal" }.map { ($0.points, $0.growth, $0.ref) } ?? (0, 0, nil) == (-25, -25, "A1"))
        #expect(history.allSatisfy { !$0.reason.isEmpty })
        await h.close()
    }
}
