import ArgumentParser
import Foundation
import PostgresClient
import RedisClient

/// Waits until the product's work queues (every queue of the vhost but the `.dead` ones) hold no
/// message, ready or unacknowledged, and the outbox is empty: `scripts/bench faults` checks a phase
/// only then. The management API refreshes depths every 5 s, so two empty reads 5.5 s apart count.
struct WaitSettled: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "wait-settled", abstract: "Wait until the work queues and the outbox are empty.")

    @Option(help: "The RabbitMQ vhost.") var vhost: String
    @Option(help: "Give up after this many seconds (the phase is checked anyway).") var timeout: Double = 300

    func run() async throws {
        let broker = try Broker(vhost: vhost)
        let url = try environment("FANFLOW_DATABASE_URL")
        let started = now()
        var emptySince: Double?
        while now() - started < timeout {
            var empty = false
            do {
                let queues = try await broker.queues().filter { !$0.name.hasSuffix(".dead") }
                let db = try await PostgresConnection(url: url)
                let outbox = try await db.one("SELECT count(*) AS n FROM outbox").number("n")
                await db.close()
                empty = !queues.isEmpty && queues.allSatisfy { $0.messages == 0 } && outbox == 0
            } catch {
                // The broker or PostgreSQL is restarting: not settled yet.
            }
            if empty {
                if let since = emptySince, now() - since >= 5.5 { return }
                if emptySince == nil { emptySince = now() }
            } else {
                emptySince = nil
            }
            try await Task.sleep(for: .seconds(1))
        }
        FileHandle.standardError.write(Data("[faults] the queues did not drain within \(Int(timeout)) s; checking anyway\n".utf8))
    }
}

/// One row of the fault matrix from what the phase left: the database checks (`psql` output,
/// `key value` lines), the accepted ids still missing, the dead-letter queues, the sale's books
/// (`fanflow reconcile flash-sale` JSON), Redis's per-member `held` counters, and the load's and
/// the depth watcher's logs for the recovery times.
struct FaultsPhase: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "faults-phase", abstract: "Compute one row of the fault matrix.")

    @Option(help: "The fault's name.") var name: String
    @Option(help: "The phase's sale.") var sale: String
    @Option(help: "Its stock.") var stock: Int
    @Option(help: "When the fault was injected (ms since the epoch).") var faultMs: Int64
    @Option(help: "When the queues were found settled (ms since the epoch).") var drainedMs: Int64
    @Option(help: "The checks' output (key value lines).") var checks: String
    @Option(help: "Accepted ids not found in PostgreSQL, one a line.") var missing: String
    @Option(help: "`fanflow reconcile flash-sale` output.") var reconcile: String
    @Option(help: "`fault-load`'s <output>.requests.") var requests: String
    @Option(help: "`queue-watch` output.") var depth: String
    @Option(help: "The RabbitMQ vhost (its .dead queues are searched for missing ids).") var vhost: String
    @Option(help: "Totals of the phases before (dup grants, grants over a cap), read and rewritten.") var state: String
    @Option(help: "Append the row here.") var rows: String

    func run() async throws {
        var checked: [String: Int] = [:]
        for line in try String(contentsOfFile: checks, encoding: .utf8).split(separator: "\n") {
            let parts = line.split(separator: " ")
            guard parts.count == 2, let value = Int(parts[1]) else { throw BenchError("\(checks): not a `key value` line: \(line)") }
            checked[String(parts[0])] = value
        }
        func value(_ key: String) throws -> Int {
            guard let v = checked[key] else { throw BenchError("\(checks) has no \(key)") }
            return v
        }
        let missingIDs = Set((try? String(contentsOfFile: missing, encoding: .utf8))?.split(separator: "\n").map(String.init).filter { !$0.isEmpty } ?? [])

        // Missing ones still waiting in a dead-letter queue (the reason in x-death or headers) are not lost.
        var deadFound = 0
        if !missingIDs.isEmpty {
            let broker = try Broker(vhost: vhost)
            var found: Set<String> = []
            for queue in try await broker.queues() where queue.name.hasSuffix(".dead") {
                let answer = try await Web.call(.POST, "\(broker.management)/api/queues/\(broker.vhostPath)/\(queue.name)/get",
                                                body: #"{"count":100000,"ackmode":"ack_requeue_true","encoding":"auto"}"#, timeout: 120)
                guard (200..<300).contains(answer.status), let messages = try? answer.json() as? [[String: Any]] else { continue }
                for message in messages {
                    let properties = message["properties"] as? [String: Any] ?? [:]
                    let text = ((properties["message_id"] as? String) ?? "") + " " + String(describing: message["payload"] ?? "")
                    for id in missingIDs where text.contains(id) { found.insert(id) }
                }
            }
            deadFound = found.count
        }

        // The books of both sides.
        struct Books { var remaining: Int?; var reserved: Int?; var paid: Int? }
        func books(_ object: Any?) -> Books {
            let o = object as? [String: Any] ?? [:]
            return Books(remaining: (o["remaining"] as? NSNumber)?.intValue, reserved: (o["reserved"] as? NSNumber)?.intValue,
                         paid: (o["paid"] as? NSNumber)?.intValue)
        }
        let recon = (try? JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: reconcile)))) as? [String: Any]
        let pg = books(recon?["postgres"]), rd = books(recon?["redis"])
        func held(_ b: Books) -> String { b.reserved.flatMap { r in b.paid.map { String(r + $0) } } ?? "?" }

        let redis = try await RedisConnection(url: try environment("FANFLOW_REDIS_URL"))
        var heldMin = 0
        for key in try await redis.command(["KEYS", "fanflow:{fs:\(sale)}:held:*"]).array ?? [] {
            guard let name = key.string, let v = try await redis.command(["GET", name]).int else { continue }
            heldMin = min(heldMin, Int(v))
        }
        await redis.close()
        for v in [pg.reserved, rd.reserved].compactMap({ $0 }) { heldMin = min(heldMin, v) }

        let ordered = try value("ordered"), reserved = try value("reserved")
        let oversold = ([0, ordered - stock, reserved - stock] + [pg.remaining, rd.remaining].compactMap { $0.map { -$0 } }).max() ?? 0
        let dead = deadFound + (try value("deadrows"))
        let lost = try value("missing") - dead

        let timing = try recovery()
        var totals = (try? String(contentsOfFile: state, encoding: .utf8))?.split(separator: " ").compactMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? []
        if totals.count != 2 { totals = [0, 0] }
        let dups = try value("dups"), overcap = try value("overcap")
        try "\(dups) \(overcap)\n".write(toFile: state, atomically: true, encoding: .utf8)

        let events = try value("events"), grants = try value("grants")
        let row = "| \(name) | \(timing.total) | \(timing.failed) | \(timing.back) | \(timing.cleared) | \(events) | \(reserved) / \(stock) | \(ordered - reserved) | \(grants) | \(overcap - totals[1]) | \(dead) | **\(lost)** | **\(dups - totals[0])** | **\(oversold)** | \(heldMin) | \(held(pg))/\(held(rd)) |"
        try ResultLines.appendText(row, to: rows)
        FileHandle.standardError.write(Data("[faults] \(name): \(row)\n".utf8))
    }

    /// Requests and failures, when service came back (the first 2xx sent after the last failed
    /// request sent after the fault) and when the backlog cleared (the work queues' ready depth back
    /// to its level in the 5 s before the fault, or 50).
    func recovery() throws -> (total: Int, failed: Int, back: String, cleared: String) {
        struct Request { var sent: Int64; var done: Int64; var status: Int }
        let log = try String(contentsOfFile: requests, encoding: .utf8).split(separator: "\n").compactMap { line -> Request? in
            let f = line.split(separator: " ")
            guard f.count == 4, let sent = Int64(f[0]), let done = Int64(f[1]), let status = Int(f[3]) else { return nil }
            return Request(sent: sent, done: done, status: status)
        }
        let fault = faultMs
        var failed = 0, lastFailed: Int64 = 0, lastFailedDone: Int64 = 0
        for r in log where r.status == 0 || r.status >= 500 {
            failed += 1
            if r.sent >= fault && r.sent > lastFailed { lastFailed = r.sent; lastFailedDone = r.done }
        }
        var backAt: Int64 = 0
        if lastFailed > 0 {
            for r in log where r.sent > lastFailed && (200..<300).contains(r.status) && (backAt == 0 || r.done < backAt) { backAt = r.done }
        }
        var base: Int64 = 0
        var samples: [(Int64, Int64)] = []
        for line in try String(contentsOfFile: depth, encoding: .utf8).split(separator: "\n") {
            let f = line.split(separator: " ")
            guard f.count == 2, let t = Int64(f[0]), let d = Int64(f[1]) else { continue }
            if t < fault && t >= fault - 5000 && d > base { base = d }
            if t >= fault { samples.append((t, d)) }
        }
        let limit = max(base, 50)
        let from = backAt > 0 ? backAt : fault
        let cleared = samples.first { $0.0 >= from && $0.1 >= 0 && $0.1 <= limit }?.0
        let seconds = { (ms: Int64) in Format.fixed(Double(ms - fault) / 1000, 1) }
        let back = lastFailed == 0 ? "0 (no failures)" : backAt > 0 ? seconds(backAt) : "> \(seconds(lastFailedDone)) (failing when the load ended)"
        return (log.count, failed, back, cleared.map(seconds) ?? "\(seconds(drainedMs)) (after the load)")
    }
}

extension ResultLines {
    static func appendText(_ line: String, to path: String) throws {
        if !FileManager.default.fileExists(atPath: path) {
            guard FileManager.default.createFile(atPath: path, contents: nil) else { throw BenchError("cannot create \(path)") }
        }
        guard let handle = FileHandle(forWritingAtPath: path) else { throw BenchError("cannot write \(path)") }
        defer { try? handle.close() }
        try handle.seekToEnd()
        try handle.write(contentsOf: Data((line + "\n").utf8))
    }
}
