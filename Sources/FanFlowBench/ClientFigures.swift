import ArgumentParser
import Foundation

/// `name value` lines, as `clients --output` and `amqp_ceiling` write them.
enum ClientFigures {
    static func read(_ path: String) throws -> [String: Double] {
        var out: [String: Double] = [:]
        for line in try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n") {
            let parts = line.split(separator: " ")
            guard parts.count == 2, let value = Double(parts[1]) else { throw BenchError("\(path): not a `name value` line: \(line)") }
            out[String(parts[0])] = value
        }
        return out
    }

    /// The best of several rounds' files for one figure.
    static func best(_ name: String, _ paths: [String]) throws -> Double? {
        try paths.compactMap { try read($0)[name] }.max()
    }

    /// redis-benchmark -q prints `EVALSHA …: 123456.78 requests per second` (after carriage-return progress lines).
    static func redisBenchmark(_ path: String) throws -> Double {
        let text = try String(contentsOfFile: path, encoding: .utf8).replacingOccurrences(of: "\r", with: "\n")
        var found: Double?
        for line in text.split(separator: "\n") where line.contains("requests per second") {
            let words = line.split(separator: " ")
            for (i, word) in words.enumerated() where i + 1 < words.count && words[i + 1] == "requests" {
                if let value = Double(word) { found = value }
            }
        }
        guard let found else { throw BenchError("\(path): no `requests per second` in redis-benchmark's output") }
        return found
    }

    /// pgbench prints `tps = 195.3 (without initial connection time)`.
    static func pgbenchTPS(_ path: String) throws -> Double {
        for line in try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n") where line.hasPrefix("tps = ") {
            if let value = Double(line.dropFirst(6).split(separator: " ").first ?? "") { return value }
        }
        throw BenchError("\(path): no `tps = ` line in pgbench's output")
    }
}

/// The reference inputs of `scripts/bench clients` that were awk programs: pgbench's 1000-row
/// INSERT and the 1M rows psql \copy reads.
struct ClientsFixtures: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "clients-fixtures", abstract: "Write pgbench's INSERT and psql's COPY rows.")

    @Option(help: "The pgbench script to write.") var insertSQL: String
    @Option(help: "The tab-separated rows to write.") var rowsTSV: String
    @Option(help: "Rows per INSERT (as `clients --batch-rows`).") var batchRows: Int = 1_000
    @Option(help: "Rows to copy (as `clients --copy-rows`).") var copyRows: Int = 1_000_000

    func run() async throws {
        let values = (0..<batchRows).map { "(\($0),'member-\($0 % 977)','note')" }.joined(separator: ",")
        try ("INSERT INTO bench_pgbench (id, member, note) VALUES " + values + ";\n").write(toFile: insertSQL, atomically: true, encoding: .utf8)
        var rows = ""
        rows.reserveCapacity(copyRows * 24)
        for i in 0..<copyRows { rows += "\(i)\tmember-\(i % 977)\tnote\n" }
        try Data(rows.utf8).write(to: URL(fileURLWithPath: rowsTSV))
    }
}

/// The clients table from the rounds' files and the reference tools' outputs.
struct ClientsReport: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "clients-report", abstract: "Print the clients figure.")

    @Option(help: "`clients --output` files, one per round.") var ours: [String]
    @Option(help: "`amqp_ceiling` outputs, one per round.") var raw: [String]
    @Option(help: "redis-benchmark -c 2 -P 100 output.") var redisSame: String
    @Option(help: "redis-benchmark -c 50 -P 100 output.") var redisMany: String
    @Option(help: "pgbench output.") var pgbench: String
    @Option(help: "Rows pgbench inserts per transaction.") var batchRows: Double = 1_000
    @Option(help: "Nanoseconds psql \\copy took.") var copyNanoseconds: Double
    @Option(help: "Rows psql \\copy read.") var copyRows: Double = 1_000_000
    @Option(help: "Seconds per figure, for the title.") var seconds: Double

    func run() async throws {
        func cell(_ value: Double?) -> String { value.map(Format.int) ?? "" }
        var table = Table(["figure (per second)", "FanFlow", "reference", "ratio", "reference is"])
        func row(_ name: String, _ ours: Double?, _ reference: Double?, _ what: String) {
            let ratio = ours.flatMap { o in reference.map { Format.percent(o, of: $0) } } ?? "-"
            table.add([name, cell(ours), cell(reference), ratio, what])
        }
        row("AMQP confirmed publishes, quorum, 300 B", try ClientFigures.best("amqp_confirmed_publish_per_s", ours),
            try ClientFigures.best("raw_confirmed_publish_per_s", raw), "direct rabbitmq-c, 2000 in flight, this run")
        row("AMQP consumed + acked (prefetch 500, multiple)", try ClientFigures.best("amqp_consume_ack_per_s", ours),
            try ClientFigures.best("raw_consume_ack_per_s", raw), "direct rabbitmq-c, this run")
        row("Redis EVALSHA pipelined, reserve.lua (2 conns x 100)", try ClientFigures.best("redis_evalsha_pipelined_per_s", ours),
            try ClientFigures.redisBenchmark(redisSame), "redis-benchmark -c 2 -P 100, same script and keys, this run")
        row("Redis EVALSHA reserve.lua, server ceiling", nil, try ClientFigures.redisBenchmark(redisMany), "redis-benchmark -c 50 -P 100, this run")
        row("PostgreSQL rows, 1000-row INSERT per txn", try ClientFigures.best("pg_batched_insert_rows_per_s", ours),
            try ClientFigures.pgbenchTPS(pgbench) * batchRows, "pgbench same rows as literal SQL, this run")
        row("PostgreSQL rows, COPY FROM STDIN", try ClientFigures.best("pg_copy_rows_per_s", ours), copyRows / max(copyNanoseconds / 1e9, 1e-9),
            "psql \\copy same rows, this run")
        print("")
        print("\(banner("clients")), \(Format.int(seconds))s per figure, load average \(loadAverage())")
        print("")
        print(table.text)
    }
}
