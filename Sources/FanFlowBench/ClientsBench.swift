import AMQPClient
import ArgumentParser
import Foundation
import PostgresClient
import RedisClient

@main
struct FanFlowBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fanflow-bench", abstract: "Throughput of FanFlow's pieces on this machine.",
        subcommands: [GatewayFigure.self, PipelineFigure.self, PointsRound.self, PointsTable.self, FlashSaleRound.self,
                      FlashSaleTable.self, HTTPLoad.self, SchedulerRound.self, SchedulerTable.self, PushPass.self, PushTable.self,
                      ClientsBench.self, ClientsFixtures.self, ClientsReport.self, FlashSaleRequests.self, WaitDrained.self,
                      FaultLoad.self, QueueWatch.self, WaitSettled.self, FaultsPhase.self, SelfCheck.self, DMPFigure.self])
}

/// Seconds on a monotonic clock.
func now() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
}

struct ClientsBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "clients",
        abstract: "Confirmed publishes, consume+ack, pipelined EVALSHA, batched INSERT and COPY through the safe clients.")

    @Option(help: "Seconds per timed measurement.") var seconds: Double = 5
    @Option(help: "Publishes in flight at once.") var inFlight: Int = 2_000
    @Option(help: "Message body size in bytes.") var bodySize: Int = 300
    @Option(help: "EVALSHA calls per pipeline.") var pipeline: Int = 100
    @Option(help: "Redis connections driving EVALSHA in parallel.") var redisConnections: Int = 2
    @Option(help: "Rows per INSERT statement / transaction.") var batchRows: Int = 1_000
    @Option(help: "Rows for COPY.") var copyRows: Int = 1_000_000
    @Option(help: "Write one `name value` line per figure here, for scripts/bench.") var output: String?
    @Option(help: "Measure only this client: amqp, redis or postgres.") var only: String?
    @Option(help: "The Lua script the Redis figure runs: the product's reservation script, as shipped.") var redisScript: String = "Sources/FlashSales/Resources/reserve.lua"
    @Option(help: "Quorum queues each publish is routed to (through a fanout exchange when more than 1).") var queues: Int = 1

    func run() async throws {
        let env = ProcessInfo.processInfo.environment
        guard let amqpURL = env["FANFLOW_AMQP_URL"], let redisURL = env["FANFLOW_REDIS_URL"],
              let databaseURL = env["FANFLOW_DATABASE_URL"] else {
            throw ValidationError("set FANFLOW_AMQP_URL, FANFLOW_REDIS_URL and FANFLOW_DATABASE_URL (eval \"$(scripts/services env)\")")
        }
        var figures: [(String, Double)] = []
        if only == nil || only == "amqp" {
            let (published, consumed) = try await amqp(url: amqpURL)
            figures.append(("amqp_confirmed_publish_per_s", published))
            figures.append(("amqp_consume_ack_per_s", consumed))
        }
        if only == nil || only == "redis" {
            figures.append(("redis_evalsha_pipelined_per_s", try await redis(url: redisURL)))
        }
        if only == nil || only == "postgres" {
            let (inserted, copied) = try await postgres(url: databaseURL)
            figures.append(("pg_batched_insert_rows_per_s", inserted))
            figures.append(("pg_copy_rows_per_s", copied))
        }
        let lines = figures.map { "\($0.0) \(Int($0.1.rounded()))" }.joined(separator: "\n") + "\n"
        print(lines, terminator: "")
        if let output { try lines.write(toFile: output, atomically: true, encoding: .utf8) }
    }

    /// Confirmed persistent publishes into a quorum queue with `inFlight` outstanding, then the same
    /// messages consumed with prefetch 500 and one `ack(multiple:)` per batch.
    func amqp(url: String) async throws -> (Double, Double) {
        let name = "bench.clients.\(UUID().uuidString.prefix(8))"
        let queue = name
        let publisher = try await AMQPConnection(url: url)
        try await publisher.enableConfirms()
        try await publisher.declareQueue(queue, options: AMQPQueueOptions(kind: .quorum))
        // A message routed into several queues (the gateway's reservations reach more than one).
        let exchange = queues > 1 ? name : ""
        var extraQueues: [String] = []
        if queues > 1 {
            try await publisher.declareExchange(exchange, type: "fanout", durable: false)
            try await publisher.bindQueue(queue, exchange: exchange, routingKey: "")
            for index in 1..<queues {
                let extra = "\(name).\(index)"
                try await publisher.declareQueue(extra, options: AMQPQueueOptions(kind: .quorum))
                try await publisher.bindQueue(extra, exchange: exchange, routingKey: "")
                extraQueues.append(extra)
            }
        }
        let body = [UInt8](repeating: UInt8(ascii: "x"), count: bodySize)
        let deadline = now() + seconds
        let started = now()
        let acked = await withTaskGroup(of: Int.self) { group in
            for _ in 0..<inFlight {
                group.addTask {
                    var ok = 0
                    while now() < deadline {
                        if await publisher.publish(exchange: exchange, routingKey: exchange.isEmpty ? queue : "", body: body,
                                                   properties: AMQPProperties(messageID: "bench")) == .acked { ok += 1 }
                    }
                    return ok
                }
            }
            return await group.reduce(0, +)
        }
        let publishRate = Double(acked) / (now() - started)

        let consumer = try await AMQPConnection(url: url)
        let consumeStart = now()
        let (_, deliveries) = try await consumer.consume(queue: queue, prefetch: 500)
        var received = 0
        for try await batch in deliveries {
            received += batch.count
            try await batch.last?.ack(multiple: true)
            if received >= acked { break }
        }
        let consumeRate = Double(received) / (now() - consumeStart)
        await consumer.close()
        try await publisher.deleteQueue(queue)
        for extra in extraQueues { try await publisher.deleteQueue(extra) }
        if !exchange.isEmpty { try await publisher.deleteExchange(exchange) }
        await publisher.close()
        return (publishRate, consumeRate)
    }

    /// The product's reservation script (`Sources/FlashSales/Resources/reserve.lua`, read from the
    /// file the product ships, never a copy), pipelined: a sale with stock and limits that never run
    /// out, so every call takes the full path (reads, counters, the hold record and its index).
    /// Request keys live 1 ms and hold ids repeat every 100,000 calls, so Redis memory stays bounded
    /// (~30 MB) however long it runs; redis-benchmark runs the same script with the same shape.
    func redis(url: String) async throws -> Double {
        guard let source = try? String(contentsOfFile: redisScript, encoding: .utf8), !source.isEmpty else {
            throw ValidationError("cannot read the reservation script \(redisScript) (run from the repository root)")
        }
        let script = RedisScript(source)
        let setup = try await RedisConnection(url: url)
        _ = try await setup.command(["HSET", "bench:{fs:c}:sale", "remaining", "1000000000000", "limit", "1000000000000", "start", "0",
                                     "end", "99999999999999", "timeout", "600", "audience", "0"])
        await setup.close()
        let nowMs = String(Int64(Date().timeIntervalSince1970 * 1000))
        let deadline = now() + seconds
        let started = now()
        let total = try await withThrowingTaskGroup(of: Int.self) { group in
            for c in 0..<redisConnections {
                group.addTask {
                    let redis = try await RedisConnection(url: url)
                    var done = 0
                    var n = c * 1_000_000_000
                    while now() < deadline {
                        let calls = (0..<pipeline).map { _ -> (script: RedisScript, keys: [String], arguments: [String]) in
                            n += 1
                            let hold = String(n % 100_000)
                            let member = String(n % 1000)
                            return (script, ["bench:{fs:c}:sale", "bench:{fs:c}:held:\(member)", "bench:{fs:c}:req:\(n)", "bench:{fs:c}:rate",
                                             "bench:{fs:c}:audience", "bench:{fs:c}:hold:\(hold)", "bench:{fs:c}:holds"],
                                    [nowMs, "1", "r\(hold)", "0", "1000", "1", member, "q\(n)"])
                        }
                        done += try await redis.evalSHAPipelined(calls).count
                    }
                    await redis.close()
                    return done
                }
            }
            return try await group.reduce(0, +)
        }
        return Double(total) / (now() - started)
    }

    /// Multi-row INSERT of `batchRows` rows per transaction (a prepared statement, parameters bound),
    /// then COPY.
    func postgres(url: String) async throws -> (Double, Double) {
        let db = try await PostgresConnection(url: url)
        try await db.execute("SET client_min_messages = warning; DROP TABLE IF EXISTS bench_insert; CREATE TABLE bench_insert (id bigint, member text, note text)")
        let placeholders = (0..<batchRows).map { "($\($0 * 3 + 1),$\($0 * 3 + 2),$\($0 * 3 + 3))" }.joined(separator: ",")
        try await db.prepare("bench_insert_batch", "INSERT INTO bench_insert (id, member, note) VALUES \(placeholders)")
        let deadline = now() + seconds
        let started = now()
        var rows = 0
        while now() < deadline {
            var parameters: [any PostgresEncodable] = []
            parameters.reserveCapacity(batchRows * 3)
            for i in 0..<batchRows {
                parameters.append(rows + i)
                parameters.append("member-\(i % 977)")
                parameters.append("note")
            }
            let fixed = parameters
            rows += try await db.transaction { tx in try tx.query(prepared: "bench_insert_batch", fixed).affectedRows }
        }
        let insertRate = Double(rows) / (now() - started)

        try await db.execute("DROP TABLE IF EXISTS bench_copy; CREATE TABLE bench_copy (id bigint, member text, note text)")
        let copyStart = now()
        let copied = try await db.copyIn("COPY bench_copy (id, member, note) FROM STDIN",
                                         rows: (0..<copyRows).lazy.map { i in [String(i), "member-\(i % 977)", "note"] })
        let copyRate = Double(copied) / (now() - copyStart)
        try await db.execute("DROP TABLE bench_insert; DROP TABLE bench_copy")
        await db.close()
        return (insertRate, copyRate)
    }
}
