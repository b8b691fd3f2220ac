import Foundation
import PostgresClient
import Testing

@Suite("PostgreSQL client: a NUL in a text parameter is refused, never cut")
struct PostgresNULParameterTests {
    @Test("`victim\\0evil` is refused before anything is sent; the row is not written as `victim`")
    func nulIsRefused() async throws {
        let connection = try await PostgresConnection(url: TestEnvironment.databaseURL)
        let table = TestEnvironment.unique("nul").replacingOccurrences(of: "-", with: "_")
        try await connection.execute("CREATE TABLE \(table) (s text)")
        let refused = await #expect(throws: PostgresError.self) {
            try await connection.query("INSERT INTO \(table) VALUES ($1)", ["victim\u{0}evil"])
        }
        #expect(refused?.code == .invalidParameter)
        #expect(refused?.description.contains("$1") == true)
        // Prepared statements take the same path, and a NUL anywhere (first, last) is caught.
        try await connection.prepare("\(table)_insert", "INSERT INTO \(table) VALUES ($1)")
        for text in ["\u{0}", "a\u{0}", "\u{0}b"] {
            await #expect(throws: PostgresError.self) {
                try await connection.query(prepared: "\(table)_insert", [text])
            }
        }
        // Nothing reached the table, and the connection still works for good text.
        try await connection.query("INSERT INTO \(table) VALUES ($1)", ["victim"])
        let rows = try await connection.query("SELECT s FROM \(table)")
        #expect(rows.map { $0.string("s") } == ["victim"])
        try await connection.execute("DROP TABLE \(table)")
        await connection.close()
    }
}
