import Contracts
import Foundation
import Logging
import Loyalty
import PostgresClient
import Scheduler
import ServiceLifecycle
import Storage
import Testing

/// The scheduler leader's sweeps, in a database of the test's own: they act on every due row, so
/// on the shared database they would touch other tests' entries.
@Suite("Scheduler leader: maturation and expiry sweeps")
struct LeaderTasksTests {
    @Test("only while leading, the sweeps grant matured purchase points and expire old points")
    func sweepsWhileLeading() async throws {
        let name = "fanflow_test_" + UUID().uuidString.prefix(8).lowercased()
        let shared = TestEnvironment.databaseURL
        let base = try #require(shared.range(of: "/", options: .backwards)).lowerBound
        let admin = PostgresPool(url: shared, maximumConnections: 1)
        try await admin.query("CREATE DATABASE \(name)")
        let database = PostgresPool(url: String(shared[..<base]) + "/" + name, maximumConnections: 2)
        do {
            try await sweeps(database)
        } catch {
            await database.close()
            _ = try? await admin.query("DROP DATABASE \(name)")
            await admin.close()
            throw error
        }
        await database.close()
        try await admin.query("DROP DATABASE \(name)")
        await admin.close()
    }

    private func sweeps(_ database: PostgresPool) async throws {
        _ = try await database.withConnection { try await Migrator(migrations: try Migration.bundled()).run(on: $0) }

        let member = try await MemberDirectory(database: database).resolve(Identity(platform: .wechat, app: "wx", openid: "o"))
        let past = Date().addingTimeInterval(-40 * 86_400)
        let subject = Identity(platform: .wechat, app: "wx", openid: "o")
        try await Ledger(database: database).apply(grants: [
            LedgerGrant(member: member, kind: .pending, rule: "mall.purchase", points: 12, growth: 12, reason: "purchase",
                        eventID: "order-1", ref: "1", occurredAt: past, dueAt: past.addingTimeInterval(15 * 86_400), subject: subject),
            LedgerGrant(member: member, kind: .grant, rule: "old", points: 5, growth: 0, reason: "old", eventID: "old-1", ref: nil,
                        occurredAt: past, dueAt: nil, expiresAt: past.addingTimeInterval(30 * 86_400), subject: subject),
        ], reversals: [], levels: .standard)

        let tasks = LeaderTasks(ledger: Ledger(database: database), rules: RuleStore(database: database),
                                interval: .milliseconds(50), logger: Logger(label: "test.leader"))
        let running = Task { try await tasks.run() }
        let queries = MemberQueries(database: database)
        try await Task.sleep(for: .milliseconds(300))
        var view = try #require(try await queries.member(member))
        #expect((view.points, view.pendingPoints) == (5, 12)) // not leading: nothing swept

        tasks.setLeading(true)
        for _ in 0..<100 {
            view = try #require(try await queries.member(member))
            if view.pendingPoints == 0, view.points == 12 { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect((view.points, view.growth, view.pendingPoints) == (12, 12, 0)) // 5 expired, 12 matured
        let kinds = try await queries.ledger(member: member, LedgerFilter()).map(\.kind).sorted()
        #expect(kinds == ["expiry", "grant", "matured", "pending"])

        running.cancel()
        _ = await running.result
    }
}
