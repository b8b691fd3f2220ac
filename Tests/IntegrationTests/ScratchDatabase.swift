import Foundation
import PostgresClient
import Storage

/// A migrated database of the test's own, dropped afterwards: for code that acts on every due row
/// (schedulers, sweeps), which on the shared database would touch other tests' rows.
enum ScratchDatabase {
    static func with<T: Sendable>(_ body: (_ database: PostgresPool, _ url: String) async throws -> T) async throws -> T {
        let name = "fanflow_test_" + UUID().uuidString.prefix(8).lowercased()
        let shared = TestEnvironment.databaseURL
        guard let slash = shared.range(of: "/", options: .backwards) else { throw PostgresError(.usage, "unexpected database URL") }
        let url = String(shared[..<slash.lowerBound]) + "/" + name
        let admin = PostgresPool(url: shared, maximumConnections: 1)
        try await admin.query("CREATE DATABASE \(name)")
        let database = PostgresPool(url: url, maximumConnections: 4)
        let result: Result<T, any Error>
        do {
            _ = try await database.withConnection { try await Migrator(migrations: try Migration.bundled()).run(on: $0) }
            result = .success(try await body(database, url))
        } catch {
            result = .failure(error)
        }
        await database.close()
        _ = try? await admin.query("DROP DATABASE \(name) WITH (FORCE)")
        await admin.close()
        return try result.get()
    }
}
