import Foundation
import PostgresClient
import Storage
import Testing

@Suite("Migrations")
struct MigratorTests {
    /// A database of the test's own, dropped afterwards.
    private func withDatabase(_ body: (String) async throws -> Void) async throws {
        let admin = try await PostgresConnection(url: TestEnvironment.databaseURL)
        let name = TestEnvironment.unique("mig").replacingOccurrences(of: "-", with: "_")
        try await admin.execute("CREATE DATABASE \(name)")
        let base = TestEnvironment.databaseURL
        let url = String(base[...(base.lastIndex(of: "/") ?? base.endIndex)]) + name
        do { try await body(url) } catch {
            try? await admin.execute("DROP DATABASE \(name) WITH (FORCE)")
            throw error
        }
        try await admin.execute("DROP DATABASE \(name) WITH (FORCE)")
    }

    @Test("the bundled migrations apply, and a second run applies nothing")
    func bundled() async throws {
        try await withDatabase { url in
            let connection = try await PostgresConnection(url: url)
            let migrator = Migrator(migrations: try Migration.bundled())
            #expect(try await migrator.run(on: connection) == migrator.migrations.map(\.version))
            #expect(try await migrator.run(on: connection).isEmpty)
            #expect(try await connection.query("SELECT count(*) AS c FROM events")[0].int("c") == 0)
            await connection.close()
        }
    }

    @Test("two migrators started at once apply each migration once")
    func concurrentRuns() async throws {
        try await withDatabase { url in
            // A slow first migration makes the two runs overlap for real.
            let migrations = [
                Migration(version: 1, name: "slow", sql: "SELECT pg_sleep(0.5); CREATE TABLE counter (n int)"),
                Migration(version: 2, name: "insert", sql: "INSERT INTO counter VALUES (1)"),
            ]
            let a = try await PostgresConnection(url: url)
            let b = try await PostgresConnection(url: url)
            async let first = Migrator(migrations: migrations).run(on: a)
            async let second = Migrator(migrations: migrations).run(on: b)
            let results = try await [first, second]
            #expect(results.sorted { $0.count < $1.count } == [[], [1, 2]])
            #expect(try await a.query("SELECT count(*) AS c FROM counter")[0].int("c") == 1)
            #expect(try await a.query("SELECT count(*) AS c FROM fanflow_migrations")[0].int("c") == 2)
            await a.close()
            await b.close()
        }
    }

    @Test("a failing migration rolls back alone and is not recorded; an edited one is refused")
    func failureAndEdits() async throws {
        try await withDatabase { url in
            let connection = try await PostgresConnection(url: url)
            let good = Migration(version: 1, name: "good", sql: "CREATE TABLE a (n int)")
            let bad = Migration(version: 2, name: "bad", sql: "CREATE TABLE b (n int); SELECT 1/0")
            await #expect(throws: PostgresError.self) { try await Migrator(migrations: [good, bad]).run(on: connection) }
            #expect(try await connection.query("SELECT to_regclass('b') IS NULL AS missing")[0].bool("missing") == true)
            #expect(try await connection.query("SELECT count(*) AS c FROM fanflow_migrations")[0].int("c") == 1)
            let edited = Migration(version: 1, name: "good", sql: "CREATE TABLE a (n bigint)")
            await #expect(throws: MigrationError.self) { try await Migrator(migrations: [edited]).run(on: connection) }
            await connection.close()
        }
    }
}
