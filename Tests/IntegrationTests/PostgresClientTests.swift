import Foundation
import PostgresClient
import Testing

@Suite("PostgreSQL client against postgres")
struct PostgresClientTests {
    /// A connection working in a schema of its own, dropped afterwards.
    private func withSchema(_ body: (PostgresConnection) async throws -> Void) async throws {
        let connection = try await PostgresConnection(url: TestEnvironment.databaseURL)
        let schema = TestEnvironment.unique("t").replacingOccurrences(of: "-", with: "_")
        try await connection.execute("CREATE SCHEMA \(schema); SET search_path TO \(schema)")
        do {
            try await body(connection)
        } catch {
            try? await connection.execute("DROP SCHEMA \(schema) CASCADE")
            throw error
        }
        try await connection.execute("DROP SCHEMA \(schema) CASCADE")
        await connection.close()
    }

    @Test("parameterized queries round-trip text, numbers, booleans, NULL, bytes and times")
    func parameters() async throws {
        try await withSchema { db in
            try await db.execute("CREATE TABLE v (s text, n bigint, b boolean, nothing text, raw bytea, at timestamptz)")
            let at = Date(timeIntervalSince1970: 1_700_000_000.123456)
            try await db.query("INSERT INTO v VALUES ($1, $2, $3, $4, $5, $6)",
                               ["it's \"quoted\"; DROP TABLE v", 9_007_199_254_740_993, true, String?.none,
                                [UInt8]([0, 1, 255]), at])
            let text = try await db.query("SELECT s, n, b, nothing, encode(raw, 'hex') AS hex, extract(epoch FROM at)::text AS epoch FROM v")
            #expect(text.count == 1)
            let row = text[0]
            #expect(row.string("s") == "it's \"quoted\"; DROP TABLE v")
            #expect(row.int("n") == 9_007_199_254_740_993)
            #expect(row.bool("b") == true)
            #expect(row.string("nothing") == nil)
            #expect(row.string("hex") == "0001ff")
            #expect(row.string("epoch") == "1700000000.123456")
            let binary = try await db.query("SELECT n, b, raw FROM v", format: .binary)
            #expect(binary[0].int("n") == 9_007_199_254_740_993)
            #expect(binary[0].bool("b") == true)
            #expect(binary[0].bytes("raw") == [0, 1, 255])
        }
    }

    @Test("array parameters round-trip any text, and integers")
    func arrays() async throws {
        let connection = try await PostgresConnection(url: TestEnvironment.databaseURL)
        let texts = ["plain", "with,comma", "with \"quotes\"", "back\\slash", "{braces}", "", "NULL", "空格 and space"]
        let rows = try await connection.query("SELECT t FROM unnest($1::text[]) WITH ORDINALITY AS a(t, n) ORDER BY n",
                                              [PostgresArray(texts)])
        #expect(rows.map { $0.string("t") } == texts)
        let sum = try await connection.query("SELECT sum(x) AS s FROM unnest($1::bigint[]) AS a(x)", [PostgresArray([1, -2, 9_007_199_254_740_993])])
        #expect(sum[0].string("s") == "9007199254740992")
        await connection.close()
    }

    @Test("a unique violation surfaces as a typed error with its SQLSTATE and constraint")
    func uniqueViolation() async throws {
        try await withSchema { db in
            try await db.execute("CREATE TABLE ledger (event_id text CONSTRAINT ledger_event_unique UNIQUE)")
            try await db.query("INSERT INTO ledger VALUES ($1)", ["evt-1"])
            do throws(PostgresError) {
                try await db.query("INSERT INTO ledger VALUES ($1)", ["evt-1"])
                Issue.record("expected a unique violation")
            } catch {
                #expect(error.code == .server)
                #expect(error.sqlState == "23505")
                #expect(error.isUniqueViolation)
                #expect(error.constraint == "ledger_event_unique")
                #expect(error.message.contains("duplicate key"))
            }
            // The connection is still usable after a server error.
            #expect(try await db.query("SELECT count(*) AS c FROM ledger")[0].int("c") == 1)
        }
    }

    @Test("a failing transaction rolls back everything it did")
    func transactionRollback() async throws {
        try await withSchema { db in
            try await db.execute("CREATE TABLE t (id int PRIMARY KEY)")
            await #expect(throws: PostgresError.self) {
                try await db.transaction { tx in
                    try tx.query("INSERT INTO t VALUES (1)")
                    try tx.query("INSERT INTO t VALUES (1)")
                }
            }
            #expect(try await db.query("SELECT count(*) AS c FROM t")[0].int("c") == 0)
            let inserted = try await db.transaction { tx in
                try tx.query("INSERT INTO t VALUES (1), (2)").affectedRows
            }
            #expect(inserted == 2)
        }
    }

    @Test("COPY FROM STDIN stores 100k rows, escaping included")
    func copyHundredThousand() async throws {
        try await withSchema { db in
            try await db.execute("CREATE TABLE events (id bigint, member text, note text)")
            let rows = (0..<100_000).lazy.map { i -> [String?] in
                [String(i), "m\(i % 977)", i % 1000 == 0 ? "tab\there\nnewline\\slash" : (i % 7 == 0 ? nil : "n")]
            }
            let stored = try await db.copyIn("COPY events (id, member, note) FROM STDIN", rows: rows)
            #expect(stored == 100_000)
            let check = try await db.query("SELECT count(*) AS c, count(note) AS notes, sum(id) AS s FROM events")
            #expect(check[0].int("c") == 100_000)
            #expect(check[0].int("s") == 4_999_950_000)
            let tricky = try await db.query("SELECT note FROM events WHERE id = 1000")
            #expect(tricky[0].string("note") == "tab\there\nnewline\\slash")
            // A row the table cannot take fails the whole COPY with the server's reason.
            await #expect(throws: PostgresError.self) {
                try await db.copyIn("COPY events (id) FROM STDIN", rows: [["1"], ["not a number"]])
            }
        }
    }

    @Test("a prepared statement runs many times with new parameters")
    func preparedStatements() async throws {
        try await withSchema { db in
            try await db.execute("CREATE TABLE p (id int, name text)")
            try await db.prepare("insert_p", "INSERT INTO p VALUES ($1, $2), ($3, $4)")
            for n in stride(from: 0, to: 10, by: 2) {
                #expect(try await db.query(prepared: "insert_p", [n, "n\(n)", n + 1, "n\(n + 1)"]).affectedRows == 2)
            }
            #expect(try await db.query("SELECT count(*) AS c, sum(id) AS s FROM p")[0].int("s") == 45)
            #expect(await db.prepared.contains("insert_p"))
            await #expect(throws: PostgresError.self) { try await db.query(prepared: "missing", []) }
        }
    }

    @Test("a bad URL or password fails with libpq's message")
    func connectFailure() async throws {
        await #expect(throws: PostgresError.self) {
            try await PostgresConnection(url: "postgresql://fanflow:wrong@127.0.0.1:1/fanflow?connect_timeout=2")
        }
    }

    @Test("the pool lends at most its size and serves every borrower")
    func pool() async throws {
        let pool = PostgresPool(url: TestEnvironment.databaseURL, maximumConnections: 3)
        let pids = try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<30 {
                group.addTask {
                    try await pool.withConnection { c in
                        try await c.query("SELECT pg_backend_pid() AS pid, pg_sleep(0.01)")[0].int("pid") ?? 0
                    }
                }
            }
            return try await group.reduce(into: Set<Int>()) { $0.insert($1) }
        }
        #expect(pids.count <= 3)
        await pool.close()
    }
}
