import AMQPClient
import ArgumentParser
import Foundation
import PostgresClient

/// What reached PostgreSQL since a moment: ledger entries (and the distinct events behind them),
/// the last entry's time, and events the behavior store kept.
struct LedgerProgress: Codable, Equatable {
    var ledgerEvents: Int
    var ledgerRows: Int
    /// Seconds since the epoch of the last ledger entry (PostgreSQL's `created_at`, the time its
    /// transaction started), nil while there is none.
    var lastEntry: Double?
    var storedEvents: Int

    static func read(_ db: PostgresConnection, since: Double, rule: String?) async throws -> LedgerProgress {
        let filter = rule == nil ? "" : " AND rule = $2"
        var parameters: [any PostgresEncodable] = [String(since)]
        if let rule { parameters.append(rule) }
        let ledger = try await db.one("""
            SELECT count(DISTINCT event_id) AS events, count(*) AS rows,
                   coalesce(extract(epoch FROM max(created_at)), 0)::float8 AS last
            FROM ledger WHERE created_at >= to_timestamp($1::float8)\(filter)
            """, parameters)
        let stored = try await db.one("SELECT count(*) AS n FROM events WHERE stored_at >= to_timestamp($1::float8)", [String(since)])
        let rows = try ledger.number("rows")
        return LedgerProgress(ledgerEvents: try ledger.number("events"), ledgerRows: rows,
                              lastEntry: rows > 0 ? try ledger.real("last") : nil, storedEvents: try stored.number("n"))
    }
}

/// CPU per process group over a phase, per event that reached the ledger.
struct CPUReport: Codable {
    var readings: [CPUMeter.Reading]
    var wall: Double
    var events: Int

    /// The product and its servers; the load generator is shown apart.
    var productSeconds: Double { readings.dropLast().reduce(0) { $0 + $1.seconds } }

    func table() -> Table {
        var table = Table(["process", "CPU s", "% of a core", "µs per event"])
        func row(_ name: String, _ seconds: Double) {
            table.add([name, Format.fixed(seconds, 2), "\(Format.int(100 * seconds / max(wall, 1e-9)))%",
                       events > 0 ? Format.int(seconds * 1e6 / Double(events)) : "-"])
        }
        for reading in readings.dropLast() { row(reading.name, reading.seconds) }
        row("**sum (product and servers)**", productSeconds)
        if let generator = readings.last { row(generator.name + ", not in the sum", generator.seconds) }
        return table
    }

    var microsecondsPerEvent: String { events > 0 ? Format.int(productSeconds * 1e6 / Double(events)) : "-" }
}

/// `scripts/bench pipeline`: the whole product as `scripts/run` starts it (gateway, workers with
/// every pool, scheduler; points news `auto`), driven with signed WeChat webhooks while the
/// workers consume. A points rule of the bench's grants on every text message, so each accepted
/// webhook should become one ledger entry (and one stored event).
struct PipelineFigure: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pipeline", abstract: "Webhooks into the whole running product: accepted/s, events to the ledger/s, CPU and broker deliveries per event.")

    @Option(help: "The gateway's base URL.") var gateway: String
    @Option(help: "The admin token.") var adminToken: String
    @OptionGroup var load: LoadOptions
    @Option(help: "The bench's processes, name=pid[,pid…] (repeat): their CPU is read from /proc.") var pids: [String] = []
    @Option(help: "The RabbitMQ vhost the product runs in (delivery counts come from the management API).") var vhost: String
    @Option(help: "The WeChat app to register.") var app: String = "bench-pipeline"
    @Option(help: "Its token.") var token: String = "bench-token"
    @Option(help: "Seconds to wait for the ledger after the load.") var settleTimeout: Double = 300

    static let rule = "bench.wechat-text"

    func run() async throws {
        let plan = try load.plan(for: gateway)
        let auth = [("Authorization", "Bearer \(adminToken)")]
        try await Web.must(.PUT, "\(gateway)/admin/v1/apps/wechat/\(app)", headers: auth, body: #"{"token":"\#(token)"}"#)
        try await Web.must(.PUT, "\(gateway)/admin/v1/points-rules/\(Self.rule)", headers: auth,
                           body: #"{"kinds":["message.text"],"platforms":["wechat"],"points":1,"growth":1,"reason":"bench: every WeChat text message"}"#)
        let count = Int(load.seconds * 12_000)
        FileHandle.standardError.write(Data("[bench] pre-signing \(count) webhooks\n".utf8))
        let requests = try Requests.wechat(app: app, token: token, aesKey: nil, count: count, host: "\(plan.host):\(plan.port)", content: "hello")
        let db = try await PostgresConnection(url: try environment("FANFLOW_DATABASE_URL"))
        let broker = try Broker(vhost: vhost)
        if let last = requests.last { _ = try await LoadGenerator.warmUp(plan, last) }
        let brokerBefore = try await broker.settledTotals(since: 0)
        let acceptedBefore = try await Web.acceptedEvents(gateway: gateway)
        var meter = CPUMeter(groups: try CPUGroups.make(processes: pids, servers: true))

        FileHandle.standardError.write(Data("[bench] webhooks: \(load.shape), \(load.seconds)s, workers consuming\n".utf8))
        let t0 = Date().timeIntervalSince1970
        meter.start()
        let result = try await LoadGenerator.run(plan, requests: requests)
        let accepted = try await Web.acceptedEvents(gateway: gateway) - acceptedBefore
        let loadEnded = now()
        FileHandle.standardError.write(Data("[bench] \(accepted) events accepted; waiting for the ledger\n".utf8))
        var progress = try await LedgerProgress.read(db, since: t0, rule: Self.rule)
        var lastChange = now()
        while progress.ledgerRows < accepted || progress.storedEvents < accepted {
            try await Task.sleep(for: .milliseconds(100))
            let next = try await LedgerProgress.read(db, since: t0, rule: Self.rule)
            if next != progress { lastChange = now() }
            progress = next
            if now() - lastChange > 20 || now() - loadEnded > settleTimeout {
                FileHandle.standardError.write(Data("[bench] the ledger stopped at \(progress.ledgerRows) of \(accepted) entries, \(progress.storedEvents) events stored\n".utf8))
                break
            }
        }
        let (readings, wall) = meter.stop()
        let duplicates = try await db.one("""
            SELECT count(*) AS n FROM (SELECT 1 FROM ledger WHERE event_id IS NOT NULL
            GROUP BY event_id, rule, member_id, kind HAVING count(*) > 1) d
            """).number("n")
        FileHandle.standardError.write(Data("[bench] waiting for the broker's statistics to settle\n".utf8))
        let brokerAfter = try await broker.settledTotals(since: now())
        await db.close()

        let events = progress.ledgerEvents
        let endToEnd = progress.lastEntry.map { Double(events) / max($0 - t0, 1e-9) } ?? 0
        let cpu = CPUReport(readings: readings, wall: wall, events: events)
        let deliveries = Double(brokerAfter.deliverGet - brokerBefore.deliverGet)
        let routed = Double(brokerAfter.published - brokerBefore.published)
        let redelivered = brokerAfter.redelivered - brokerBefore.redelivered

        var figures = Table(["figure", "value"])
        figures.add(["signed WeChat webhooks accepted/s (\(load.shape), workers consuming)", Format.int(result.requestsPerSecond)])
        figures.add(["webhook p50 \\| p90 \\| p99 \\| max ms", "\(result.latency.milliseconds(0.5)) \\| \(result.latency.milliseconds(0.9)) \\| \(result.latency.milliseconds(0.99)) \\| \(result.latency.maxMilliseconds)"])
        figures.add(["non-2xx \\| no answer", "\(result.non2xx - result.unanswered) \\| \(result.unanswered)"])
        figures.add(["events accepted (broker-confirmed)", "\(accepted)"])
        figures.add(["events → ledger end to end/s (first request to last ledger entry)", Format.int(endToEnd)])
        figures.add(["events in the ledger \\| stored in the events history", "\(events) \\| \(progress.storedEvents)"])
        figures.add(["duplicate ledger entries (event, rule, member, kind)", "\(duplicates)"])
        figures.add(["broker deliveries per event (deliver_get, all queues)", events > 0 ? Format.fixed(deliveries / Double(events), 2) : "-"])
        figures.add(["messages routed into queues per event \\| redeliveries", (events > 0 ? Format.fixed(routed / Double(events), 2) : "-") + " \\| \(redelivered)"])
        figures.add(["CPU per event, product and servers summed", "\(cpu.microsecondsPerEvent) µs"])

        print("")
        print("\(banner("pipeline")): release gateway, worker (pipeline=2 orders=1 push=2), scheduler, FANFLOW_POINTS_NEWS=auto; \(Format.int(load.seconds))s of signed WeChat webhooks (plaintext), \(load.shape); load average \(loadAverage())")
        print("")
        print(figures.text)
        if let pacing = result.pacing { print(""); print(pacing) }
        print("")
        print("CPU from the first request to the last ledger entry (\(Format.fixed(wall, 1)) s), per event in the ledger; RabbitMQ, Redis and PostgreSQL's server processes are shared with whatever else runs on this machine:")
        print("")
        print(cpu.table().text)
        print("")
        print("Load generator: \(Format.fixed(result.generatorMicrosecondsPerRequest, 1)) µs of CPU per request, \(result.sent) sent, \(result.distinctRequests) distinct")
    }
}

/// One round of `scripts/bench points`: pre-signed `/v1/events` batches for --seconds while the
/// worker processes the wrapper started consume; then the drain, the outbox, and what reached the
/// ledger. One result line per round.
struct PointsRound: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "points-round", abstract: "One round of the points figure against running gateway and workers.")

    @Option(help: "The gateway's base URL.") var gateway: String
    @OptionGroup var load: LoadOptions
    @Option(help: "The server app.") var app: String = "bench-shop"
    @Option(help: "Its secret.") var secret: String
    @Option(help: "Distinct events this round (more than a round can send).") var events: Int = 200_000
    @Option(help: "Events per request.") var batch: Int = 100
    @Option(help: "Worker processes running (a label for the table).") var workers: Int
    @Option(help: "The bench's processes, name=pid[,pid…] (repeat).") var pids: [String] = []
    @Option(help: "The queue the points pool consumes.") var queue: String = "fanflow.pipeline"
    @Option(help: "Queues nothing consumes here, emptied after the round (comma-separated).") var purge: String = "fanflow.push"
    @Option(help: "The RabbitMQ vhost.") var vhost: String
    @Option(help: "A tag that makes this round's event ids its own.") var run: String
    @Option(help: "Append the round's result here.") var results: String

    struct Line: Codable {
        var workers: Int
        var accepted: Int
        var sendSeconds: Double
        var drainSeconds: Double
        var totalSeconds: Double
        var depthWhenSendingEnded: Int
        var outboxWhenDrained: Int
        var newsLagSeconds: Double
        var load: LoadResult
        var progress: LedgerProgress
        var roundStart: Double
        var cpu: CPUReport
        var deliveries: Int
        var duplicates: Int
    }

    func validate() throws {
        guard (1...1000).contains(batch), events >= batch else { throw ValidationError("--batch must be 1-1000 and --events at least one batch") }
    }

    func run() async throws {
        let plan = try load.plan(for: gateway)
        FileHandle.standardError.write(Data("[bench] \(workers) worker process(es): pre-signing \(events) events\n".utf8))
        let requests = Requests.events(app: app, secret: secret, memberApp: "wx-bench", members: 20_000, count: events / batch,
                                       batch: batch, run: self.run, host: "\(plan.host):\(plan.port)")
        let amqp = try await AMQPConnection(url: try environment("FANFLOW_AMQP_URL"))
        let db = try await PostgresConnection(url: try environment("FANFLOW_DATABASE_URL"))
        let broker = try Broker(vhost: vhost)
        if let last = requests.last { _ = try await LoadGenerator.warmUp(plan, last) }
        let brokerBefore = try await broker.settledTotals(since: 0)
        let before = try await Web.acceptedEvents(gateway: gateway)
        var meter = CPUMeter(groups: try CPUGroups.make(processes: pids, servers: true))

        let wallStart = Date().timeIntervalSince1970
        let t0 = now()
        meter.start()
        let result = try await LoadGenerator.run(plan, requests: requests)
        // The timed phase ends --seconds after it began (as wrk's did), not when the last answer in
        // flight came back: rate and drain lag read as before.
        let t1 = t0 + load.seconds
        // The points queue's ready depth, polled every 20 ms by passive declare (rabbitmqctl takes
        // about a second a call on this machine).
        let depth = try await amqp.messageCount(queue: queue)
        while try await amqp.messageCount(queue: queue) > 0 {
            if now() - t1 > 600 { throw BenchError("\(queue) did not drain in 600 s") }
            try await Task.sleep(for: .milliseconds(20))
        }
        let t2 = now()
        // Points news (points.granted) leave through the outbox relays after the commit: what is
        // still there when the points queue is empty, and how long until it is gone.
        let outbox = try await db.one("SELECT count(*) AS n FROM outbox").number("n")
        while try await db.one("SELECT count(*) AS n FROM outbox").number("n") > 0 {
            if now() - t2 > 60 { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        let t3 = now()
        // What the consumers still held unacknowledged (at most their prefetch): the ledger stops growing.
        var progress = try await LedgerProgress.read(db, since: wallStart, rule: nil)
        var quietSince = now()
        while now() - quietSince < 1 {
            try await Task.sleep(for: .milliseconds(200))
            let next = try await LedgerProgress.read(db, since: wallStart, rule: nil)
            if next != progress { quietSince = now() }
            progress = next
            if now() - t3 > 120 { break }
        }
        let (readings, wall) = meter.stop()
        let accepted = try await Web.acceptedEvents(gateway: gateway) - before
        let duplicates = try await db.one("""
            SELECT count(*) AS n FROM (SELECT 1 FROM ledger WHERE event_id IS NOT NULL
            GROUP BY event_id, rule, member_id, kind HAVING count(*) > 1) d
            """).number("n")
        let brokerAfter = try await broker.settledTotals(since: now())
        // Nothing consumes these here: emptied between rounds.
        for name in purge.split(separator: ",") { try await broker.purge(String(name)) }
        await amqp.close()
        await db.close()
        let line = Line(workers: workers, accepted: accepted, sendSeconds: t1 - t0, drainSeconds: t2 - t1, totalSeconds: t2 - t0,
                        depthWhenSendingEnded: depth, outboxWhenDrained: outbox, newsLagSeconds: t3 - t2, load: result,
                        progress: progress, roundStart: wallStart,
                        cpu: CPUReport(readings: readings, wall: wall, events: progress.ledgerEvents),
                        deliveries: brokerAfter.deliverGet - brokerBefore.deliverGet, duplicates: duplicates)
        try ResultLines.append(line, to: results)
    }
}

/// The points table from the rounds' result lines.
struct PointsTable: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "points-table", abstract: "Print the points figure from its rounds.")

    @Option(help: "The rounds' result lines.") var results: String
    @Option(help: "`FanFlowBench clients --only amqp --output` of this run.") var raw: String
    @Option(help: "Seconds of load per round, connections and consumers per process, for the title.") var title: String

    func run() async throws {
        let rounds = try ResultLines.read(PointsRound.Line.self, from: results)
        let rawRate = try ClientFigures.read(raw)["amqp_confirmed_publish_per_s"] ?? 0
        var table = Table(["worker processes", "events accepted", "accepted/s while sending", "end to end events/s",
                           "queue depth when sending ended", "lag (drain)", "request p99", "end to end vs raw publish",
                           "outbox rows when drained", "news lag after drain", "events → ledger/s", "CPU µs per ledger event",
                           "broker deliveries per event"])
        for r in rounds {
            let endToEnd = Double(r.accepted) / r.totalSeconds
            let ledgerRate = r.progress.lastEntry.map { Double(r.progress.ledgerEvents) / max($0 - r.roundStart, 1e-9) } ?? 0
            table.add(["\(r.workers)", "\(r.accepted)", Format.int(Double(r.accepted) / r.sendSeconds), Format.int(endToEnd),
                       "\(r.depthWhenSendingEnded)", "\(Format.fixed(r.drainSeconds, 1)) s", "\(r.load.latency.milliseconds(0.99)) ms",
                       Format.percent(endToEnd, of: rawRate), "\(r.outboxWhenDrained)", "\(Format.fixed(r.newsLagSeconds, 1)) s",
                       Format.int(ledgerRate), r.cpu.microsecondsPerEvent,
                       r.progress.ledgerEvents > 0 ? Format.fixed(Double(r.deliveries) / Double(r.progress.ledgerEvents), 2) : "-"])
        }
        print("")
        print("\(banner("points")), \(title), load average \(loadAverage())")
        print("")
        print(table.text)
        print("")
        print("raw client, confirmed publishes (2000 in flight, one queue, this run): \(Format.int(rawRate))/s")
        let rows = rounds.reduce(0) { $0 + $1.progress.ledgerRows }
        print("ledger entries written: \(rows) (by \(rounds.reduce(0) { $0 + $1.progress.ledgerEvents }) events), duplicate entries: \(rounds.map(\.duplicates).max() ?? 0)")
        for r in rounds {
            print("")
            print("CPU with \(r.workers) worker process(es), first request to the last ledger entry (\(Format.fixed(r.cpu.wall, 1)) s), per event that reached the ledger (\(r.progress.ledgerEvents)):")
            print("")
            print(r.cpu.table().text)
            print("")
            print("Load generator: \(Format.fixed(100 * r.load.generatorCPUSeconds / r.load.seconds, 1))% of a core while sending, \(Format.fixed(r.load.generatorMicrosecondsPerRequest, 1)) µs per request (one batch of events each); p50 \(r.load.latency.milliseconds(0.5)) ms, p90 \(r.load.latency.milliseconds(0.9)) ms, max \(r.load.latency.maxMilliseconds) ms, answers by status \(r.load.byStatus), no answer \(r.load.unanswered)\(r.load.pacing.map { "; " + $0 } ?? "")")
        }
    }
}
