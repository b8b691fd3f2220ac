import AMQPClient
import ArgumentParser
import Contracts
import Foundation
import PostgresClient
import RedisClient

/// One sale of `scripts/bench flash-sale`: reservation attempts at a running gateway with the
/// orders pool draining, CPU per process during the load, then the books checked.
struct FlashSaleRound: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "flash-sale-round", abstract: "One sale of the flash-sale figure: attempts, CPU, oversold check.")

    enum Scenario: String, ExpressibleByArgument, Codable, CaseIterable {
        /// 10,000,000 units, 1,000 a member: every attempt reserves and is published (confirmed).
        case large
        /// 1,000 units, one a member, 20,000 members: most attempts are refused.
        case crowd
        /// The crowd's sale with its stock over 8 stripes.
        case striped

        var stock: Int { self == .large ? 10_000_000 : 1_000 }
        var limit: Int { self == .large ? 1_000 : 1 }
        var slots: Int { self == .striped ? 8 : 1 }
    }

    @Option(help: "The gateway's base URL.") var gateway: String
    @Option(help: "The admin token.") var adminToken: String
    @OptionGroup var load: LoadOptions
    @Option(help: "large, crowd or striped.") var scenario: Scenario
    @Option(help: "The first of the members the wrapper created.") var firstMember: Int64
    @Option(help: "How many members (consecutive ids).") var members: Int = 20_000
    @Option(help: "The bench's processes, name=pid[,pid…] (repeat).") var pids: [String] = []
    @Option(help: "The queue the orders pool consumes.") var ordersQueue: String = "fanflow.orders"
    @Option(help: "Append the result here.") var results: String

    struct Line: Codable {
        var scenario: Scenario
        var stock: Int
        var load: LoadResult
        var created: Int
        var refused: Int
        var other: Int
        var ordered: Int
        var remaining: Int
        var oversold: Int
        var cpu: CPUReport
    }

    func run() async throws {
        let plan = try load.plan(for: gateway)
        let sale = "bench-\(scenario.rawValue)"
        let start = RFC3339.format(Date().addingTimeInterval(-5)), end = RFC3339.format(Date().addingTimeInterval(3600))
        try await Web.must(.PUT, "\(gateway)/admin/v1/flash-sales/\(sale)", headers: [("Authorization", "Bearer \(adminToken)")],
                           body: #"{"sku":"BENCH","title":"bench","price":100,"stock":\#(scenario.stock),"perMemberLimit":\#(scenario.limit),"startAt":"\#(start)","endAt":"\#(end)","paymentTimeoutSeconds":3600,"stockSlots":\#(scenario.slots)}"#)
        let requests = try Requests.reservations(sale: sale, secretKey: try environment("FANFLOW_SECRET_KEY"), firstMember: firstMember,
                                                 members: members, count: Int(load.seconds * 40_000), host: "\(plan.host):\(plan.port)")
        var meter = CPUMeter(groups: try CPUGroups.make(processes: pids, servers: true))
        FileHandle.standardError.write(Data("[bench] \(scenario.rawValue): \(load.shape), \(load.seconds)s\n".utf8))
        meter.start()
        let result = try await LoadGenerator.run(plan, requests: requests)
        let (readings, wall) = meter.stop()

        let amqp = try await AMQPConnection(url: try environment("FANFLOW_AMQP_URL"))
        let started = now()
        while try await amqp.messageCount(queue: ordersQueue) > 0 {
            if now() - started > 600 { throw BenchError("\(ordersQueue) did not drain in 600 s") }
            try await Task.sleep(for: .milliseconds(20))
        }
        await amqp.close()
        // What the orders pool still holds unacknowledged (at most its prefetch) is written within a second.
        try await Task.sleep(for: .seconds(1))

        let db = try await PostgresConnection(url: try environment("FANFLOW_DATABASE_URL"))
        let ordered = try await db.one("SELECT coalesce(sum(quantity), 0) AS n FROM flash_orders WHERE sale_id = $1", [sale]).number("n")
        await db.close()
        let redis = try await RedisConnection(url: try environment("FANFLOW_REDIS_URL"))
        var remaining = 0
        for slot in 0..<scenario.slots {
            let key = scenario.slots == 1 ? "fanflow:{fs:\(sale)}:sale" : "fanflow:{fs:\(sale)#\(slot)}:sale"
            guard let value = try await redis.command(["HGET", key, "remaining"]).int else { throw BenchError("no remaining stock in \(key)") }
            remaining += Int(value)
        }
        await redis.close()

        let created = result.count(201)
        let refused = result.count(409) + result.count(403)
        let stock = scenario.stock
        // Units beyond the stock: in orders, as a negative remaining in Redis, or answered 201.
        let oversold = max(0, ordered - stock) + max(0, -remaining) + max(0, created - stock)
        try ResultLines.append(Line(scenario: scenario, stock: stock, load: result, created: created, refused: refused,
                                    other: result.answered + result.unanswered - created - refused, ordered: ordered,
                                    remaining: remaining, oversold: oversold,
                                    cpu: CPUReport(readings: readings, wall: wall, events: result.answeredInTime)), to: results)
    }
}

/// The flash-sale tables from the sales' results, the ceilings and redis-benchmark.
struct FlashSaleTable: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "flash-sale-table", abstract: "Print the flash-sale figure.")

    @Option(help: "The sales' result lines.") var results: String
    @Option(help: "`http-load` result lines named nginx and health.") var ceilings: String
    @Option(help: "redis-benchmark's output for the reservation script.") var redisBenchmark: String
    @Option(help: "The load's shape, for the title.") var title: String

    func run() async throws {
        let sales = try ResultLines.read(FlashSaleRound.Line.self, from: results)
        let ceilings = Dictionary(try ResultLines.read(HTTPLoad.Line.self, from: ceilings).map { ($0.name, $0.result) }) { $1 }
        guard let nginx = ceilings["nginx"], let health = ceilings["health"] else { throw BenchError("the ceilings file needs nginx and health") }
        let ceiling = nginx.requestsPerSecond
        var table = Table(["sale", "stock", "attempts/s", "p50 ms", "p99 ms", "reserved (201)", "refused (409/403)", "other", "units in orders",
                           "oversold", "vs HTTP ceiling"])
        var cpu = Table(["sale", "gateway", "orders pool", "rabbitmq", "redis", "postgresql", "load generator"])
        var generator = GeneratorTable()
        for s in sales {
            table.add([s.scenario.rawValue, "\(s.stock)", Format.int(s.load.requestsPerSecond), s.load.latency.milliseconds(0.5),
                       s.load.latency.milliseconds(0.99), "\(s.created)", "\(s.refused)", "\(s.other)", "\(s.ordered)", "\(s.oversold)",
                       Format.percent(Double(Int(s.load.requestsPerSecond)), of: ceiling)])
            cpu.add([s.scenario.rawValue] + s.cpu.readings.map { "\(Format.int(100 * $0.seconds / max(s.cpu.wall, 1e-9)))%" })
            generator.add(s.scenario.rawValue, s.load)
        }
        print("")
        print("\(banner("flash-sale")), \(title), orders pool of 2 consumers running, load average \(loadAverage())")
        print("")
        print(table.text)
        print("")
        print("HTTP ceiling (nginx, fixed body, same load generator): \(Format.int(ceiling)) req/s, p99 \(nginx.latency.milliseconds(0.99)) ms")
        print("Framework ceiling (the gateway's /health, same load generator): \(Format.int(health.requestsPerSecond)) req/s, p99 \(health.latency.milliseconds(0.99)) ms")
        let reference = (try? ClientFigures.redisBenchmark(redisBenchmark)).map(Format.int) ?? "- (did not finish)"
        print("redis-benchmark, the product's reserve.lua (-c 50 -P 16): \(reference) calls/s")
        print("")
        print("CPU during each load, % of one core (200% is the whole machine):")
        print("")
        print(cpu.text)
        print("")
        print(generator.table.text)
    }
}
