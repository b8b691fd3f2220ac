import Foundation
import Logging
import PostgresClient

/// One schema change: a SQL file `NNNN_name.sql`, applied once, in order of `version`.
public struct Migration: Sendable, Equatable {
    public let version: Int
    public let name: String
    public let sql: String

    public init(version: Int, name: String, sql: String) {
        self.version = version
        self.name = name
        self.sql = sql
    }

    /// The migrations shipped with FanFlow (`Sources/Storage/Migrations`).
    public static func bundled() throws -> [Migration] {
        guard let directory = Bundle.module.url(forResource: "Migrations", withExtension: nil) else {
            throw MigrationError("the Migrations resource folder is missing beside the executable")
        }
        return try load(from: directory)
    }

    /// Reads `NNNN_name.sql` files from a folder, ordered by number; two files with one number is an error.
    public static func load(from directory: URL) throws -> [Migration] {
        let files = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasSuffix(".sql") }
        var migrations: [Migration] = []
        for file in files {
            let stem = file.dropLast(4)
            guard let underscore = stem.firstIndex(of: "_"), let version = Int(stem[..<underscore]) else {
                throw MigrationError("\(file): expected NNNN_name.sql")
            }
            let sql = try String(contentsOf: directory.appendingPathComponent(file), encoding: .utf8)
            migrations.append(Migration(version: version, name: String(stem[stem.index(after: underscore)...]), sql: sql))
        }
        migrations.sort { $0.version < $1.version }
        for (a, b) in zip(migrations, migrations.dropFirst()) where a.version == b.version {
            throw MigrationError("two migrations are numbered \(a.version): \(a.name) and \(b.name)")
        }
        return migrations
    }
}

public struct MigrationError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// Applies pending migrations, each in its own transaction, recorded in `fanflow_migrations`.
///
/// A session-level advisory lock serializes migrators: two processes started at once (two
/// gateways in a rolling deploy) apply each migration once; the second waits, then finds nothing
/// to do. A migration edited after it was applied is refused (its checksum no longer matches).
public struct Migrator: Sendable {
    /// "FanFlow" in ASCII: the advisory lock key no other application is likely to use.
    static let lockKey: Int64 = 0x46_61_6E_46_6C_6F_77
    public let migrations: [Migration]
    let logger: Logger

    public init(migrations: [Migration], logger: Logger = Logger(label: "fanflow.migrate")) {
        self.migrations = migrations
        self.logger = logger
    }

    /// Returns the versions this call applied (empty when the schema was already current).
    @discardableResult
    public func run(on connection: PostgresConnection) async throws -> [Int] {
        try await connection.query("SELECT pg_advisory_lock($1)", [Self.lockKey])
        do {
            let applied = try await applyPending(on: connection)
            try await connection.query("SELECT pg_advisory_unlock($1)", [Self.lockKey])
            return applied
        } catch {
            _ = try? await connection.query("SELECT pg_advisory_unlock($1)", [Self.lockKey])
            throw error
        }
    }

    private func applyPending(on connection: PostgresConnection) async throws -> [Int] {
        try await connection.execute("""
            SET client_min_messages = warning;
            CREATE TABLE IF NOT EXISTS fanflow_migrations (
                version    integer     PRIMARY KEY,
                name       text        NOT NULL,
                checksum   text        NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """)
        var recorded: [Int: String] = [:]
        for row in try await connection.query("SELECT version, checksum FROM fanflow_migrations") {
            if let version = row.int("version") { recorded[version] = row.string("checksum") }
        }
        var applied: [Int] = []
        for migration in migrations {
            let checksum = try await connection.query("SELECT md5($1) AS sum", [migration.sql])[0].requiredString("sum")
            if let existing = recorded[migration.version] {
                guard existing == checksum else {
                    throw MigrationError("migration \(migration.version)_\(migration.name) was changed after it was applied; add a new migration instead")
                }
                continue
            }
            logger.info("applying migration", metadata: ["version": "\(migration.version)", "name": "\(migration.name)"])
            try await connection.transaction { tx in
                try tx.execute(migration.sql)
                try tx.query("INSERT INTO fanflow_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                             [migration.version, migration.name, checksum])
            }
            applied.append(migration.version)
        }
        return applied
    }
}
