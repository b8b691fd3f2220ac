import ArgumentParser
import Foundation
import PostgresClient

/// Numbers as the tables print them.
enum Format {
    static func fixed(_ value: Double, _ decimals: Int) -> String {
        guard value.isFinite else { return "-" }
        return String(format: "%.\(decimals)f", value)
    }

    /// Whole numbers, truncated as the earlier awk `%d` did, so old and new tables read alike.
    static func int(_ value: Double) -> String {
        guard value.isFinite, abs(value) < 9e18 else { return "-" }
        return String(Int64(value))
    }

    /// `part` as a whole percentage of `whole`, "-" when there is no whole.
    static func percent(_ part: Double, of whole: Double) -> String {
        guard whole > 0, part.isFinite else { return "-" }
        return "\(Int64(100 * part / whole))%"
    }
}

/// A Markdown table, printed as the earlier bench printed it: header, separator, rows.
struct Table {
    let header: [String]
    var rows: [[String]] = []

    init(_ header: [String]) { self.header = header }

    mutating func add(_ row: [String]) { rows.append(row) }

    var text: String {
        var lines = ["| " + header.joined(separator: " | ") + " |",
                     "|" + Array(repeating: "---", count: header.count).joined(separator: "|") + "|"]
        for row in rows { lines.append("| " + row.joined(separator: " | ") + " |") }
        return lines.joined(separator: "\n")
    }
}

/// The first line of every figure: what ran, where and when.
func banner(_ what: String) -> String {
    let cores = ProcessInfo.processInfo.activeProcessorCount
    let formatter = DateFormatter()
    formatter.locale = Locale(identifier: "en_US_POSIX")
    formatter.timeZone = TimeZone(identifier: "UTC")
    formatter.dateFormat = "yyyy-MM-dd"
    return "scripts/bench \(what) on \(cores) cores, \(formatter.string(from: Date()))"
}

/// The load average as `uptime` shows it: the machine is shared, so every figure says how busy it was.
func loadAverage() -> String {
    guard let text = try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8) else { return "unknown" }
    return text.split(separator: " ").prefix(3).joined(separator: ", ")
}

/// Failures the bench reports as they are and stops on.
struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// One JSON object per line: rounds append their results, a table subcommand reads them all.
enum ResultLines {
    static func append<T: Encodable>(_ value: T, to path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        var line = try encoder.encode(value)
        line.append(UInt8(ascii: "\n"))
        if !FileManager.default.fileExists(atPath: path) {
            guard FileManager.default.createFile(atPath: path, contents: nil) else { throw BenchError("cannot create \(path)") }
        }
        guard let handle = FileHandle(forWritingAtPath: path) else { throw BenchError("cannot write \(path)") }
        defer { try? handle.close() }
        try handle.seekToEnd()
        try handle.write(contentsOf: line)
    }

    static func read<T: Decodable>(_ type: T.Type, from path: String) throws -> [T] {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        let decoder = JSONDecoder()
        return try text.split(separator: "\n").map { try decoder.decode(T.self, from: Data($0.utf8)) }
    }
}

/// Reads `FANFLOW_*` variables the wrapper exported.
func environment(_ name: String) throws -> String {
    guard let value = ProcessInfo.processInfo.environment[name], !value.isEmpty else {
        throw ValidationError("set \(name) (eval \"$(scripts/services env)\")")
    }
    return value
}

/// Row reads that fail loudly: a missing column or a NULL where a number belongs is a broken
/// query, never a zero in a table.
extension PostgresRow {
    func number(_ column: String) throws -> Int {
        guard let value = int(column) else { throw BenchError("column \(column) is missing or not an integer in \(columns)") }
        return value
    }

    func real(_ column: String) throws -> Double {
        guard let text = string(column), let value = Double(text) else { throw BenchError("column \(column) is missing or not a number in \(columns)") }
        return value
    }
}

extension PostgresConnection {
    /// The first row of a query that returns one.
    func one(_ sql: String, _ parameters: [any PostgresEncodable] = []) throws -> PostgresRow {
        let rows = try query(sql, parameters)
        guard let row = rows.first else { throw BenchError("no row from: \(sql.prefix(120))") }
        return row
    }
}
