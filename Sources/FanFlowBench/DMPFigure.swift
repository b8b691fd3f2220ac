import ArgumentParser
import Foundation
import PostgresClient

/// `scripts/bench dmp`: the audience figures against the whole running product (gateway, worker
/// with every pool, scheduler), in the bench's own database:
/// 1. event → tag latency under webhook load with 20 live tag rules, and events → ledger/s with
///    and without them;
/// 2. segment reach over `--members` generated members, timed through the admin API and checked
///    against an independent count;
/// 3. a tag rule's backfill over `--events` generated stored events, with live webhooks flowing
///    before and during it;
/// 4. what the hour buckets (`tag_rule_counts`) take per member and rule.
struct DMPFigure: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dmp", abstract: "Audience figures: tag latency and the cost of rules, segment reach, backfill, bucket memory.")

    @Option(help: "The gateway's base URL.") var gateway: String
    @Option(help: "The admin token.") var adminToken: String
    @OptionGroup var load: LoadOptions
    @Option(help: "The bench's processes, name=pid[,pid…] (repeat): their CPU is read from /proc.") var pids: [String] = []
    @Option(help: "The RabbitMQ vhost the product runs in (queue depths come from the management API).") var vhost: String
    @Option(help: "Members generated for the reach figure (and the backfill's subjects).") var members: Int = 1_000_000
    @Option(help: "Stored events generated for the backfill figure.") var events: Int = 10_000_000
    @Option(help: "Run only these parts (comma-separated): latency, reach, backfill.") var only: String?
    @Option(help: "The WeChat app the webhooks come to.") var app: String = "bench-dmp"
    @Option(help: "Its token.") var token: String = "bench-token"
    @Option(help: "Distinct subjects of the load's webhooks.") var subjects: Int = 20_000
    @Option(help: "Latency probes (members tagged one by one while the load runs); default max(200, 8 per second of load).") var probes: Int?
    @Option(help: "Webhooks/s during the backfill figure; default a third of --rate, else 500.") var liveRate: Double?
    @Option(help: "Seconds per measured window of live traffic during the backfill figure.") var window: Double = 5
    @Option(help: "Seconds to wait for the ledger after a load.") var settleTimeout: Double = 600

    static let pointsRule = "bench.dmp"
    static let probeTag = "dmp-probe"

    func validate() throws {
        let parts = try Self.parts(only)
        guard !parts.isEmpty else { throw ValidationError("--only takes latency, reach and/or backfill") }
        guard members >= 1000, events >= 1000, subjects >= 100 else { throw ValidationError("--members and --events at least 1000, --subjects at least 100") }
    }

    static func parts(_ only: String?) throws -> [String] {
        guard let only else { return ["latency", "reach", "backfill"] }
        let list = only.split(separator: ",").map(String.init)
        for part in list where !["latency", "reach", "backfill"].contains(part) { throw ValidationError("--only: unknown part \(part) (latency, reach, backfill)") }
        return list
    }

    func run() async throws {
        let parts = try Self.parts(only)
        let auth = [("Authorization", "Bearer \(adminToken)")]
        try await Web.must(.PUT, "\(gateway)/admin/v1/apps/wechat/\(app)", headers: auth, body: #"{"token":"\#(token)"}"#)
        // One ledger entry per webhook of the load, whatever its kind: the ledger is the progress the figures read.
        try await Web.must(.PUT, "\(gateway)/admin/v1/points-rules/\(Self.pointsRule)", headers: auth,
                           body: #"{"kinds":["message.text","click","location"],"platforms":["wechat"],"points":1,"growth":1,"reason":"bench: every webhook of the dmp figure"}"#)
        // Workers reload points rules every 2 s.
        try await Task.sleep(for: .seconds(3))
        let db = try await DMPData.connect()
        var run = DMPRun(figure: self, auth: auth, db: db)

        print("")
        print("\(banner("dmp")): release gateway, worker (pipeline=2 orders=1 push=2), scheduler, in a database, vhost and Redis database of the bench's own; parts: \(parts.joined(separator: ", ")); load average at the start \(loadAverage())")
        if parts.contains("latency") {
            try await run.latency()
            fflush(nil)
            try await run.memory(after: "the latency figure (20 rules, the load's webhooks)")
            fflush(nil)
        }
        if parts.contains("reach") { try await run.reach(); fflush(nil) }
        if parts.contains("backfill") {
            try await run.backfill()
            fflush(nil)
            try await run.memory(after: "the backfill figure")
        }
        await db.close()
    }
}

/// One run of the figure: the webhook numbering continues over every phase, so every webhook of
/// the run is a distinct event.
struct DMPRun {
    let figure: DMPFigure
    let auth: [(String, String)]
    let db: PostgresConnection
    var next = 0
    let base = Int(Date().timeIntervalSince1970) - 5
    let msgBase = Int64(7_000_000_000_000_000_000) + Int64.random(in: 0..<1_000_000_000) * 1_000_000
    let runTag = String(UInt32.random(in: 0..<UInt32.max), radix: 36)

    init(figure: DMPFigure, auth: [(String, String)], db: PostgresConnection) {
        self.figure = figure
        self.auth = auth
        self.db = db
    }

    var gateway: String { figure.gateway }

    func say(_ text: String) { DMPData.log(text) }

    // MARK: The rules

    /// Twenty rules over the load's kinds: keyword `contains` on text, menu keys, a numeric `gte`
    /// on a location's precision and latitude, several kinds at once; `atLeast` 1 to 5, windows 1 h
    /// to 30 d. The last one is the latency probes': its keyword never occurs in the load.
    static let rules: [(code: String, tag: String, body: String)] = [
        ("dmp-r01", "dmp-new-fan", #"{"kinds":["message.text"],"conditions":{"content":{"contains":"新品"}},"atLeast":1,"within":"1h"}"#),
        ("dmp-r02", "dmp-coupon", #"{"kinds":["message.text"],"conditions":{"content":{"contains":"优惠"}},"atLeast":2,"within":"24h"}"#),
        ("dmp-r03", "dmp-points-asker", #"{"kinds":["message.text"],"conditions":{"content":{"contains":"积分"}},"atLeast":3,"within":"7d"}"#),
        ("dmp-r04", "dmp-returner", #"{"kinds":["message.text"],"conditions":{"content":{"contains":"退货"}},"atLeast":1,"within":"30d"}"#),
        ("dmp-r05", "dmp-store-visitor", #"{"kinds":["message.text"],"conditions":{"content":{"contains":"门店"}},"atLeast":2,"within":"3d"}"#),
        ("dmp-r06", "dmp-event-fan", #"{"kinds":["message.text"],"conditions":{"content":{"contains":"活动"}},"atLeast":5,"within":"30d"}"#),
        ("dmp-r07", "dmp-needs-help", #"{"kinds":["message.text"],"conditions":{"content":{"contains":"客服"}},"atLeast":4,"within":"12h"}"#),
        ("dmp-r08", "dmp-english", #"{"kinds":["message.text"],"conditions":{"content":{"startsWith":"hello"}},"atLeast":5,"within":"1h"}"#),
        ("dmp-r09", "dmp-chatty", #"{"kinds":["message.text"],"atLeast":5,"within":"1d"}"#),
        ("dmp-r10", "dmp-talker", #"{"kinds":["message.text"],"atLeast":3,"within":"6h"}"#),
        ("dmp-r11", "dmp-menu-user", #"{"kinds":["click"],"atLeast":1,"within":"7d"}"#),
        ("dmp-r12", "dmp-shopper", #"{"kinds":["click"],"conditions":{"eventKey":"MENU_SHOP"},"atLeast":2,"within":"30d"}"#),
        ("dmp-r13", "dmp-vip-curious", #"{"kinds":["click"],"conditions":{"eventKey":"MENU_VIP"},"atLeast":1,"within":"2d"}"#),
        ("dmp-r14", "dmp-located", #"{"kinds":["location"],"atLeast":3,"within":"1d"}"#),
        ("dmp-r15", "dmp-precise", #"{"kinds":["location"],"conditions":{"precision":{"gte":100}},"atLeast":1,"within":"7d"}"#),
        ("dmp-r16", "dmp-north", #"{"kinds":["location"],"conditions":{"latitude":{"gte":30}},"atLeast":2,"within":"30d"}"#),
        ("dmp-r17", "dmp-engaged", #"{"kinds":["message.text","click"],"atLeast":4,"within":"3d"}"#),
        ("dmp-r18", "dmp-omni", #"{"kinds":["message.text","click","location"],"atLeast":5,"within":"14d"}"#),
        ("dmp-r19", "dmp-new-weekly", #"{"kinds":["message.text"],"conditions":{"content":{"contains":"新品"}},"atLeast":3,"within":"7d"}"#),
        ("dmp-r20", DMPFigure.probeTag, #"{"kinds":["message.text"],"conditions":{"content":{"contains":"探针"}},"atLeast":1,"within":"1h"}"#),
    ]

    func putTag(_ code: String, group: String) async throws {
        try await Web.must(.PUT, "\(gateway)/admin/v1/tags/\(code)", headers: auth, body: #"{"name":"\#(code)","group":"\#(group)"}"#)
    }

    func putRule(_ code: String, tag: String, body: String) async throws {
        var json = body
        json.insert(contentsOf: #""tag":"\#(tag)","#, at: json.index(after: json.startIndex))
        try await Web.must(.PUT, "\(gateway)/admin/v1/tag-rules/\(code)", headers: auth, body: json)
    }

    /// A rule as the API shows it.
    func rule(_ code: String) async throws -> (state: String, scanned: Int, total: Int) {
        let answer = try await Web.must(.GET, "\(gateway)/admin/v1/tag-rules/\(code)", headers: auth)
        guard let object = try answer.json() as? [String: Any], let state = object["state"] as? String else {
            throw BenchError("GET tag-rules/\(code): no state in \(answer.text.prefix(200))")
        }
        return (state, (object["scanned"] as? NSNumber)?.intValue ?? 0, (object["total"] as? NSNumber)?.intValue ?? 0)
    }

    // MARK: Load phases

    struct Phase {
        var label: String
        var plan: LoadPlan
        var load: LoadResult
        var accepted: Int
        var progress: LedgerProgress
        var start: Double
        var cpu: CPUReport
        var lag: Lag
        var drainSeconds: Double

        /// Events into the ledger a second, from the first request to the last entry.
        var ledgerRate: Double { progress.lastEntry.map { Double(progress.ledgerEvents) / max($0 - start, 1e-9) } ?? 0 }
    }

    /// Event → ledger: the ledger entry's time (its transaction's start) less the gateway's receipt
    /// time of the event, for the points rule's entries of events received in [from, to).
    struct Lag {
        var count: Int
        var p50: Double
        var p99: Double
        var max: Double
        var text: String { count == 0 ? "-" : "\(Format.fixed(p50 * 1000, 0)) \\| \(Format.fixed(p99 * 1000, 0)) \\| \(Format.fixed(max * 1000, 0))" }
    }

    func lag(from: Double, to: Double) async throws -> Lag {
        let row = try await db.one("""
            SELECT count(*) AS n,
                   coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM l.created_at - e.received_at)), 0)::float8 AS p50,
                   coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM l.created_at - e.received_at)), 0)::float8 AS p99,
                   coalesce(max(extract(epoch FROM l.created_at - e.received_at)), 0)::float8 AS worst
            FROM ledger l JOIN events e ON e.id = l.event_id
            WHERE l.rule = $1 AND e.received_at >= to_timestamp($2::float8) AND e.received_at < to_timestamp($3::float8)
            """, [DMPFigure.pointsRule, from, to])
        return Lag(count: try row.number("n"), p50: try row.real("p50"), p99: try row.real("p99"), max: try row.real("worst"))
    }

    func requests(_ count: Int, plan: LoadPlan) -> [WireRequest] {
        DMPRequests.webhooks(app: figure.app, token: figure.token, first: next, count: count, members: figure.subjects,
                             base: base, msgBase: msgBase, host: "\(plan.host):\(plan.port)")
    }

    /// The load for --seconds (and, alongside, `during`), then the wait until the ledger has an
    /// entry for every accepted event.
    mutating func phase(_ label: String, rate: Double? = nil, during: (@Sendable () async -> Void)? = nil) async throws -> Phase {
        var plan = try figure.load.plan(for: gateway)
        if let rate { plan.rate = rate }
        let count = plan.rate.map { Int($0 * plan.seconds * 1.02) + 1000 } ?? Int(plan.seconds * 12_000)
        say("\(label): pre-signing \(count) webhooks")
        let requests = requests(count, plan: plan)
        next += count
        let acceptedBefore = try await Web.acceptedEvents(gateway: gateway)
        var meter = CPUMeter(groups: try CPUGroups.make(processes: figure.pids, servers: true))
        say("\(label): webhooks, \(plan.label), \(Format.int(plan.seconds)) s")
        let start = Date().timeIntervalSince1970
        meter.start()
        let side = Task { if let during { await during() } }
        let result = try await LoadGenerator.run(plan, requests: requests)
        await side.value
        let accepted = try await Web.acceptedEvents(gateway: gateway) - acceptedBefore
        let loadEnded = now()
        say("\(label): \(accepted) events accepted; waiting for the ledger")
        var progress = try await LedgerProgress.read(db, since: start, rule: DMPFigure.pointsRule)
        var lastChange = now()
        while progress.ledgerRows < accepted {
            try await Task.sleep(for: .milliseconds(200))
            let next = try await LedgerProgress.read(db, since: start, rule: DMPFigure.pointsRule)
            if next != progress { lastChange = now() }
            progress = next
            if now() - lastChange > 20 || now() - loadEnded > figure.settleTimeout {
                say("\(label): the ledger stopped at \(progress.ledgerRows) of \(accepted) entries")
                break
            }
        }
        let drained = now() - loadEnded
        let (readings, wall) = meter.stop()
        let lag = try await lag(from: start, to: Date().timeIntervalSince1970 + 1)
        return Phase(label: label, plan: plan, load: result, accepted: accepted, progress: progress, start: start,
                     cpu: CPUReport(readings: readings, wall: wall, events: progress.ledgerEvents), lag: lag, drainSeconds: drained)
    }

    // MARK: 1. Latency and the cost of rules

    struct Probe: Sendable {
        var openid: String
        var member: Int64
    }

    struct ProbeOutcome: Sendable {
        var latency: Double?
        var failedSend: Bool
        var polls: Int
    }

    /// Members for the probes, made before the load: one neutral message each, then their ids.
    func makeProbes(_ count: Int) async throws -> [Probe] {
        let gateway = gateway, app = figure.app, token = figure.token, msgBase = msgBase, runTag = runTag, auth = auth
        say("latency: \(count) probe members, one message each")
        let openids = (0..<count).map { "o-dmp-probe-\(runTag)-\($0)" }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (index, openid) in openids.enumerated() {
                if index >= 8 { try await group.next() }
                group.addTask {
                    let status = try await DMPRequests.send(gateway: gateway, app: app, token: token, openid: openid, content: "你好",
                                                            msgID: msgBase + 900_000_000 + Int64(index), nonce: 3_000_000_000 + index)
                    guard status == 200 else { throw BenchError("a probe's first message answered \(status)") }
                }
            }
            try await group.waitForAll()
        }
        var probes: [Probe] = []
        let started = now()
        for openid in openids {
            while true {
                let answer = try await Web.call(.GET, "\(gateway)/admin/v1/members/lookup?platform=wechat&app=\(app)&openid=\(openid)", headers: auth)
                if answer.status == 200, let object = try answer.json() as? [String: Any], let id = (object["id"] as? NSNumber)?.int64Value {
                    probes.append(Probe(openid: openid, member: id))
                    break
                }
                guard answer.status == 404, now() - started < 120 else {
                    throw BenchError("probe member \(openid): lookup answered \(answer.status) \(answer.text.prefix(200))")
                }
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        return probes
    }

    /// Each probe at its time: a message with the probe rule's keyword, then its member's tags
    /// polled (one GET, then every 50 ms after the last answer) until the probe tag shows.
    static func runProbes(_ probes: [Probe], gateway: String, app: String, token: String, auth: [(String, String)], msgBase: Int64,
                          spacing: Double, timeout: Double) async -> [ProbeOutcome] {
        let start = now()
        return await withTaskGroup(of: ProbeOutcome.self) { group in
            for (index, probe) in probes.enumerated() {
                group.addTask {
                    let due = start + Double(index) * spacing
                    if due > now() { try? await Task.sleep(for: .milliseconds(Int((due - now()) * 1000))) }
                    guard let status = try? await DMPRequests.send(gateway: gateway, app: app, token: token, openid: probe.openid,
                                                                   content: "探针 \(index)", msgID: msgBase + 950_000_000 + Int64(index),
                                                                   nonce: 3_500_000_000 + index), status == 200 else {
                        return ProbeOutcome(latency: nil, failedSend: true, polls: 0)
                    }
                    let accepted = now()
                    var polls = 0
                    while now() - accepted < timeout {
                        polls += 1
                        if let answer = try? await Web.call(.GET, "\(gateway)/admin/v1/members/\(probe.member)/tags", headers: auth),
                           answer.status == 200, let object = try? answer.json() as? [String: Any], let tags = object["tags"] as? [[String: Any]],
                           tags.contains(where: { $0["code"] as? String == DMPFigure.probeTag }) {
                            return ProbeOutcome(latency: now() - accepted, failedSend: false, polls: polls)
                        }
                        try? await Task.sleep(for: .milliseconds(50))
                    }
                    return ProbeOutcome(latency: nil, failedSend: false, polls: polls)
                }
            }
            var out: [ProbeOutcome] = []
            for await outcome in group { out.append(outcome) }
            return out
        }
    }

    mutating func latency() async throws {
        let count = figure.probes ?? max(200, Int(figure.load.seconds * 8))
        for rule in Self.rules { try await putTag(rule.tag, group: "dmp") }
        let probes = try await makeProbes(count)

        let plain = try await phase("no tag rules")

        say("20 tag rules: saving, then waiting until every one is live (their backfill reads the events stored so far)")
        let saved = now()
        for rule in Self.rules { try await putRule(rule.code, tag: rule.tag, body: rule.body) }
        var pending = Set(Self.rules.map(\.code))
        while !pending.isEmpty {
            for code in pending { if try await rule(code).state == "live" { pending.remove(code) } }
            if now() - saved > 900 { throw BenchError("tag rules not live after 900 s: \(pending.sorted())") }
            if !pending.isEmpty { try await Task.sleep(for: .milliseconds(250)) }
        }
        let liveAfter = now() - saved
        try await Task.sleep(for: .seconds(2))

        let gateway = gateway, app = figure.app, token = figure.token, auth = auth, msgBase = msgBase
        let spacing = figure.load.seconds * 0.9 / Double(count)
        let timeout = max(120, figure.settleTimeout)
        // The cost of the rules: the same load as without them, nothing else running.
        let ruled = try await phase("20 tag rules")
        // Latency at a rate the pipeline sustains with the rules (above it the broker's queue only
        // grows, and a tag waits behind it): the asked rate, or 90% of what the last phase reached.
        let probeRate = min(figure.load.rate ?? .infinity, (0.9 * ruled.ledgerRate).rounded())
        let outcomes = Mutex_<[ProbeOutcome]>([])
        let probed = try await phase("20 tag rules, latency probes", rate: probeRate) {
            let result = await Self.runProbes(probes, gateway: gateway, app: app, token: token, auth: auth, msgBase: msgBase,
                                              spacing: spacing, timeout: timeout)
            outcomes.set(result)
        }
        let results = outcomes.get()
        var histogram = LatencyHistogram()
        for outcome in results { if let latency = outcome.latency { histogram.record(microseconds: UInt64(latency * 1e6)) } }
        let seen = results.filter { $0.latency != nil }.count
        let failed = results.filter(\.failedSend).count
        let polls = results.reduce(0) { $0 + $1.polls }

        // The probes' events are in the ledger as well: every phase counts what it sent.
        var table = Table(["figure", "no tag rules", "20 live tag rules", "difference", "20 rules and the latency probes"])
        func row(_ name: String, _ a: String, _ b: String, _ d: String = "", _ c: String = "") { table.add([name, a, b, d, c]) }
        func shape(_ p: Phase) -> String { p.plan.rate.map { "open loop at \(Format.int($0))/s" } ?? "closed loop" }
        row("webhooks offered (\(figure.load.connections) connections)", shape(plain), shape(ruled), "", shape(probed))
        row("webhooks accepted/s while sending", Format.int(plain.load.requestsPerSecond), Format.int(ruled.load.requestsPerSecond),
            Self.change(plain.load.requestsPerSecond, ruled.load.requestsPerSecond), Format.int(probed.load.requestsPerSecond))
        func ms(_ p: Phase) -> String { "\(p.load.latency.milliseconds(0.5)) \\| \(p.load.latency.milliseconds(0.99))" }
        row("webhook p50 \\| p99 ms (from the due time)", ms(plain), ms(ruled), "", ms(probed))
        func refused(_ p: Phase) -> String { "\(p.load.non2xx - p.load.unanswered) \\| \(p.load.unanswered)" }
        row("non-2xx \\| no answer", refused(plain), refused(ruled), "", refused(probed))
        row("events accepted (broker-confirmed)", "\(plain.accepted)", "\(ruled.accepted)", "", "\(probed.accepted)")
        row("events in the ledger", "\(plain.progress.ledgerEvents)", "\(ruled.progress.ledgerEvents)", "", "\(probed.progress.ledgerEvents)")
        row("**events → ledger/s** (first request to last entry)", "**\(Format.int(plain.ledgerRate))**", "**\(Format.int(ruled.ledgerRate))**",
            "**\(Self.change(plain.ledgerRate, ruled.ledgerRate))**", Format.int(probed.ledgerRate))
        row("ledger still catching up after the load (s)", Format.fixed(plain.drainSeconds, 1), Format.fixed(ruled.drainSeconds, 1), "",
            Format.fixed(probed.drainSeconds, 1))
        row("event → ledger p50 \\| p99 \\| max ms (gateway receipt to entry)", plain.lag.text, ruled.lag.text, "", probed.lag.text)
        row("CPU per ledger event, product and servers (µs)", plain.cpu.microsecondsPerEvent, ruled.cpu.microsecondsPerEvent,
            Self.change(Double(plain.cpu.microsecondsPerEvent) ?? 0, Double(ruled.cpu.microsecondsPerEvent) ?? 0), probed.cpu.microsecondsPerEvent)
        for ((a, b), c) in zip(zip(plain.cpu.readings.dropLast(), ruled.cpu.readings.dropLast()), probed.cpu.readings.dropLast()) {
            func per(_ r: CPUMeter.Reading, _ p: Phase) -> Double { p.progress.ledgerEvents > 0 ? r.seconds * 1e6 / Double(p.progress.ledgerEvents) : 0 }
            row("· \(a.name) µs per event", Format.int(per(a, plain)), Format.int(per(b, ruled)), Self.change(per(a, plain), per(b, ruled)),
                Format.int(per(c, probed)))
        }
        let counts = try await db.one("SELECT count(*) AS n FROM tag_rule_counts").number("n")
        let holds = try await db.one("SELECT count(*) AS n FROM member_tags WHERE source LIKE 'rule:dmp-r%' AND (expires_at IS NULL OR expires_at > now())").number("n")

        var probeTable = Table(["event → tag visible", "value"])
        probeTable.add(["probes (members tagged one at a time during the load)", "\(results.count): \(seen) tagged, \(failed) sends refused, \(results.count - seen - failed) not tagged within \(Format.int(timeout)) s"])
        probeTable.add(["**p50 \\| p99 \\| max ms**", "**\(histogram.milliseconds(0.5)) \\| \(histogram.milliseconds(0.99)) \\| \(histogram.maxMilliseconds)**"])
        probeTable.add(["min ms", histogram.total > 0 ? Format.fixed(Double(histogram.minimum) / 1000, 1) : "-"])
        probeTable.add(["tag reads (GET /admin/v1/members/{id}/tags)", "\(polls), \(Format.fixed(Double(polls) / Double(max(results.count, 1)), 1)) per probe"])
        probeTable.add(["20 rules saved → all live (backfill of the \(plain.progress.storedEvents) events stored before)", "\(Format.fixed(liveAfter, 1)) s"])
        probeTable.add(["hour buckets \\| current rule tag holds after the load", "\(counts) \\| \(holds)"])

        print("")
        print("### 1. Event → tag latency under load, and the cost of rules")
        print("")
        print("\(Format.int(figure.load.seconds)) s of signed WeChat webhooks per phase (70% text messages with keywords, 15% menu clicks, 15% location reports; \(figure.subjects) subjects), a points rule on all three kinds (one ledger entry per webhook); first with no tag rules, then with the 20 rules below live. Load average \(loadAverage()).")
        print("")
        print(table.text)
        if let pacing = plain.load.pacing { print(""); print("no rules: \(pacing)") }
        if let pacing = ruled.load.pacing { print(""); print("20 rules: \(pacing)") }
        if let pacing = probed.load.pacing { print(""); print("20 rules and the probes: \(pacing)") }
        print("")
        print("Latency from a probe webhook's HTTP 200 to its tag in `GET /admin/v1/members/{id}/tags` (rule dmp-r20: text containing 探针, at least 1 within 1h), probes spread over a third phase's load with the 20 rules, offered at \(Format.int(probeRate))/s (the asked rate, or 90% of the events → ledger/s the 20-rule phase reached if that is lower: above it the broker's queue only grows and every tag waits behind it), tags polled every 50 ms after the last answer (so values are late by up to 50 ms plus one read):")
        print("")
        print(probeTable.text)
        print("")
        print("Rules: " + Self.rules.map { "`\($0.code)` \($0.body.replacingOccurrences(of: "\"", with: ""))" }.joined(separator: "; "))
        print("")
        print("CPU with no tag rules, first request to last ledger entry (\(Format.fixed(plain.cpu.wall, 1)) s):")
        print("")
        print(plain.cpu.table().text)
        print("")
        print("CPU with 20 tag rules (\(Format.fixed(ruled.cpu.wall, 1)) s):")
        print("")
        print(ruled.cpu.table().text)
        print("")
        print("CPU with 20 tag rules and the latency probes' webhooks and tag reads (\(Format.fixed(probed.cpu.wall, 1)) s):")
        print("")
        print(probed.cpu.table().text)
    }

    /// `b` against `a`, as a signed percentage.
    static func change(_ a: Double, _ b: Double) -> String {
        guard a > 0, b.isFinite else { return "-" }
        let pct = 100 * (b - a) / a
        return (pct >= 0 ? "+" : "") + Format.fixed(pct, 1) + "%"
    }

    // MARK: 4. Memory per member per rule

    static func windowHours(_ text: String) -> Int? {
        guard let unit = text.last, let n = Int(text.dropLast()) else { return nil }
        switch unit {
        case "h": return n
        case "d": return n * 24
        default: return nil
        }
    }

    func memory(after: String) async throws {
        let size = try await db.one("""
            SELECT pg_total_relation_size('tag_rule_counts') AS total, pg_relation_size('tag_rule_counts') AS heap,
                   pg_indexes_size('tag_rule_counts') AS indexes, (SELECT count(*) FROM tag_rule_counts) AS n,
                   (SELECT count(*) FROM tag_rule_counts WHERE rule_id NOT IN (SELECT id FROM tag_rules)) AS retired,
                   floor(extract(epoch FROM now()) / 3600)::bigint AS hour
            """)
        let total = try size.number("total"), rows = try size.number("n"), currentHour = try size.number("hour")
        let perRow = rows > 0 ? Double(total) / Double(rows) : 0
        let rules = try await db.query("""
            WITH p AS (SELECT rule_id, member_id, count(*) AS n, min(hour) AS oldest FROM tag_rule_counts GROUP BY rule_id, member_id)
            SELECT r.code, r.definition->>'within' AS within, r.state, count(p.member_id) AS pairs, coalesce(sum(p.n), 0) AS n,
                   coalesce(max(p.n), 0) AS most, coalesce(min(p.oldest), 0) AS oldest,
                   (SELECT count(DISTINCT hour) FROM tag_rule_counts c WHERE c.rule_id = r.id) AS hours
            FROM tag_rules r LEFT JOIN p ON p.rule_id = r.id GROUP BY r.code, r.id, r.definition, r.state ORDER BY r.code
            """)
        var perRule = Table(["rule", "within", "state", "members counted", "rows", "rows per member avg \\| max", "hours with events",
                             "bound: window hours + 1", "rows per member ≤ bound", "rows older than the window (pruned each minute)"])
        var pairs = 0, most = 0, breaches = 0
        for r in rules {
            let code = r.string("code") ?? "?", within = r.string("within") ?? "?"
            let n = try r.number("pairs"), rowCount = try r.number("n"), max = try r.number("most"), hours = try r.number("hours")
            let windowHours = Self.windowHours(within) ?? 0
            let stale = try await db.one("""
                SELECT count(*) AS n FROM tag_rule_counts WHERE rule_id = (SELECT id FROM tag_rules WHERE code = $1)
                AND hour < floor((extract(epoch FROM now()) - $2::bigint * 3600) / 3600)
                """, [code, Int64(windowHours)]).number("n")
            pairs += n
            most = Swift.max(most, max)
            let holds = max <= windowHours + 1
            if !holds { breaches += 1 }
            perRule.add([code, within, r.string("state") ?? "?", "\(n)", "\(rowCount)", n > 0 ? "\(Format.fixed(Double(rowCount) / Double(n), 2)) \\| \(max)" : "-",
                         "\(hours)", "\(windowHours + 1)", holds ? "yes" : "**NO**", "\(stale)"])
        }
        var summary = Table(["tag_rule_counts", "value"])
        summary.add(["size: table + indexes (pg_total_relation_size)", "\(Format.fixed(Double(total) / 1_048_576, 1)) MiB (heap \(Format.fixed(Double(try size.number("heap")) / 1_048_576, 1)), indexes \(Format.fixed(Double(try size.number("indexes")) / 1_048_576, 1)))"])
        summary.add(["rows \\| of retired rule generations (deleted by the expiry job)", "\(rows) \\| \(try size.number("retired"))"])
        summary.add(["**bytes per row** (size / rows, dead tuples and free space included)", "**\(Format.int(perRow))**"])
        summary.add(["(member, rule) pairs counted", "\(pairs)"])
        summary.add(["rows per (member, rule): avg \\| max", pairs > 0 ? "\(Format.fixed(Double(rows) / Double(pairs), 2)) \\| \(most)" : "-"])
        summary.add(["**bytes per member per rule**: avg (size / pairs) \\| the busiest member (max rows × bytes/row)",
                     pairs > 0 ? "**\(Format.int(Double(total) / Double(pairs))) \\| \(Format.int(Double(most) * perRow))**" : "-"])
        summary.add(["bound per member per rule: (window hours + 1) × bytes/row, 1h \\| 7d \\| 30d window",
                     "\(Format.int(2 * perRow)) \\| \(Format.int(169 * perRow)) \\| \(Format.int(721 * perRow)) bytes"])
        summary.add(["rules whose busiest member exceeds the bound", "\(breaches)"])
        print("")
        print("### 4. Hour buckets per member and rule, after \(after)")
        print("")
        print("Measured in the bench's database at hour \(currentHour) (hours since 1970, UTC); load average \(loadAverage()).")
        print("")
        print(summary.text)
        print("")
        print(perRule.text)
    }

    // MARK: 2. Segment reach

    mutating func reach() async throws {
        let memberCount = figure.members
        print("")
        print("### 2. Segment reach over \(memberCount) generated members")
        for tag in DMPData.tagSpread { try await putTag(tag.code, group: "dmp-generated") }
        say("reach: generating \(memberCount) members with identities and tags")
        let took = try await DMPData.members(memberCount, on: db)
        let stats = try await db.one("""
            SELECT (SELECT count(*) FROM members) AS members, (SELECT count(*) FROM member_identities) AS identities,
                   (SELECT count(*) FROM member_tags) AS tags, (SELECT count(*) FROM member_tags WHERE expires_at <= now()) AS expired,
                   (SELECT count(*) FROM member_tags WHERE expires_at > now()) AS expiring
            """)
        print("")
        print("Generated in \(Format.fixed(took, 1)) s (`generate_series` in slices of 100,000, then VACUUM ANALYZE): \(try stats.number("members")) members in the database, \(try stats.number("identities")) identities (every member on \(DMPData.appA), 70% on \(DMPData.appB), the rest and a quarter of those on \(DMPData.appC)), \(try stats.number("tags")) tag holds (\(DMPData.tagSpread.map { "\($0.code) \(Int($0.share * 100))%" }.joined(separator: ", ")); \(try stats.number("expiring")) expiring within 30 days, \(try stats.number("expired")) already expired).")

        let match = #"{"all":[{"tag":"dmp-vip"},{"level":{"gte":2}},{"points":{"gte":500}},{"any":[{"app":"\#(DMPData.appB)"},{"not":{"tag":"dmp-churn"}}]}]}"#
        let code = "dmp-reach-\(runTag)"
        // The same expression, counted straight from the tables: a current hold is one without an
        // expiry or expiring later; levels rank from 1, the lowest, so level 2 and above of the
        // standard table are bronze, silver and gold.
        let current = "(t.expires_at IS NULL OR t.expires_at > now())"
        let independent = """
            SELECT count(*) AS n FROM members m
            WHERE m.merged_into IS NULL
              AND EXISTS (SELECT 1 FROM member_tags t WHERE t.member_id = m.id AND t.tag = 'dmp-vip' AND \(current))
              AND m.level IN ('bronze', 'silver', 'gold') AND m.points >= 500
              AND (EXISTS (SELECT 1 FROM member_identities i WHERE i.member_id = m.id AND i.app = '\(DMPData.appB)')
                   OR NOT EXISTS (SELECT 1 FROM member_tags t WHERE t.member_id = m.id AND t.tag = 'dmp-churn' AND \(current)))
            """
        let sqlStart = now()
        let expected = try await db.one(independent).number("n")
        let sqlSeconds = now() - sqlStart

        let put = try await Web.call(.PUT, "\(gateway)/admin/v1/segments/\(code)", headers: auth, body: #"{"name":"bench reach","match":\#(match)}"#)
        if put.status == 404 || put.status == 405 {
            print("")
            print("segments: not available in this build (PUT /admin/v1/segments answered \(put.status)); the same expression counted in SQL: \(expected) members in \(Format.fixed(sqlSeconds * 1000, 1)) ms")
            return
        }
        guard (200..<300).contains(put.status) else { throw BenchError("PUT segments/\(code) answered \(put.status): \(put.text.prefix(300))") }

        let calls = 25
        var getTimes = LatencyHistogram(), previewTimes = LatencyHistogram()
        var getReach: Set<Int> = [], previewReach: Set<Int> = [], evaluated: Set<String> = []
        var errors: [String] = []
        for _ in 0..<calls {
            let t0 = now()
            let answer = try await Web.call(.GET, "\(gateway)/admin/v1/segments/\(code)", headers: auth, timeout: 120)
            getTimes.record(microseconds: UInt64((now() - t0) * 1e6))
            if answer.status == 200, let object = try answer.json() as? [String: Any], let reach = (object["reach"] as? NSNumber)?.intValue {
                getReach.insert(reach)
                if let at = object["evaluatedAt"] as? String { evaluated.insert(at) }
            } else { errors.append("GET \(answer.status) \(answer.text.prefix(120))") }
        }
        for _ in 0..<calls {
            let t0 = now()
            let answer = try await Web.call(.POST, "\(gateway)/admin/v1/segments/preview", headers: auth, body: #"{"match":\#(match)}"#, timeout: 120)
            previewTimes.record(microseconds: UInt64((now() - t0) * 1e6))
            if answer.status == 200, let object = try answer.json() as? [String: Any], let reach = (object["reach"] as? NSNumber)?.intValue {
                previewReach.insert(reach)
            } else { errors.append("preview \(answer.status) \(answer.text.prefix(120))") }
        }
        let expectedAfter = try await db.one(independent).number("n")

        var table = Table(["call (\(calls) each, one after another)", "p50 ms", "p99 ms", "max ms", "reach answered", "independent count", "equal"])
        func equal(_ set: Set<Int>) -> String { set.isEmpty ? "-" : (set.allSatisfy { $0 == expected || $0 == expectedAfter } ? "yes" : "**NO**") }
        table.add(["GET /admin/v1/segments/{code}", getTimes.milliseconds(0.5), getTimes.milliseconds(0.99), getTimes.maxMilliseconds,
                   getReach.sorted().map(String.init).joined(separator: ", "), "\(expected)", equal(getReach)])
        table.add(["POST /admin/v1/segments/preview", previewTimes.milliseconds(0.5), previewTimes.milliseconds(0.99), previewTimes.maxMilliseconds,
                   previewReach.sorted().map(String.init).joined(separator: ", "), "\(expected)", equal(previewReach)])
        table.add(["the independent count, psql-style (one run)", Format.fixed(sqlSeconds * 1000, 1), "", "", "", "\(expected)", ""])
        print("")
        print("Segment `\(match)`; load average \(loadAverage()):")
        print("")
        print(table.text)
        print("")
        print("GET answered \(evaluated.count) distinct evaluatedAt value(s)\(evaluated.count == 1 ? " (one evaluation served every GET)" : ""); errors: \(errors.isEmpty ? "none" : errors.prefix(3).joined(separator: "; "))")
        if expected != expectedAfter { print("(the independent count moved from \(expected) to \(expectedAfter) during the calls: expiring holds)") }
    }

    // MARK: 3. Backfill

    mutating func backfill() async throws {
        let count = figure.events
        print("")
        print("### 3. Tag rule backfill over \(count) stored events")
        // Subjects: the generated members' app A openids (made here when the reach part did not run).
        var range = try await db.one("""
            SELECT coalesce(min(member_id), 0) AS lo, coalesce(max(member_id), 0) AS hi, count(*) AS n FROM member_identities WHERE app = $1
            """, [DMPData.appA])
        if try range.number("n") < 1000 {
            for tag in DMPData.tagSpread { try await putTag(tag.code, group: "dmp-generated") }
            say("backfill: generating \(figure.members) members as the events' subjects")
            _ = try await DMPData.members(figure.members, on: db)
            range = try await db.one("""
                SELECT coalesce(min(member_id), 0) AS lo, coalesce(max(member_id), 0) AS hi, count(*) AS n FROM member_identities WHERE app = $1
                """, [DMPData.appA])
        }
        let lo = Int64(try range.number("lo")), span = Int64(try range.number("hi")) - lo + 1
        say("backfill: generating \(count) events over 30 days")
        let end = Date().timeIntervalSince1970 - 60
        let took = try await DMPData.events(count, end: end, firstMember: lo, span: span, on: db)
        let check = try await db.one("""
            SELECT count(*) AS n, count(*) FILTER (WHERE verified) AS verified, count(DISTINCT kind) AS kinds,
                   extract(epoch FROM min(occurred_at))::float8 AS first, extract(epoch FROM max(occurred_at))::float8 AS last,
                   count(DISTINCT openid) AS subjects
            FROM events WHERE id LIKE 'wechat:dmp-%'
            """)
        let resolvable = try await db.one("""
            SELECT count(*) AS n, count(i.member_id) AS known FROM (SELECT * FROM events WHERE id LIKE 'wechat:dmp-%' AND verified LIMIT 100000) e
            LEFT JOIN member_identities i ON i.platform = e.platform AND i.app = e.app AND i.openid = e.openid
            """)
        let size = try await db.one("SELECT pg_total_relation_size('events') AS bytes")
        let spanDays = (try check.real("last") - check.real("first")) / 86_400
        print("")
        print("Generated in \(Format.fixed(took, 1)) s (\(Format.int(Double(count) / took)) rows/s; `generate_series` in slices of 500,000, in time order as a store fills, then VACUUM ANALYZE): \(try check.number("n")) events, \(try check.number("kinds")) kinds (\(DMPData.storedKinds.joined(separator: ", "))), \(try check.number("verified")) verified (H5 page views only claim their openid), over \(Format.fixed(spanDays, 1)) days, \(try check.number("subjects")) distinct subjects, \(try resolvable.number("known")) of a sample of \(try resolvable.number("n")) verified events resolve to a member; the events table is now \(Format.fixed(Double(try size.number("bytes")) / 1_073_741_824, 2)) GiB with its indexes.")

        let tag = "dmp-active-30d", code = "dmp-backfill-\(runTag)"
        try await putTag(tag, group: "dmp")
        let body = #"{"kinds":["message.text","click","location","subscribe","scan","view","page_view"],"atLeast":5,"within":"30d"}"#

        // Live traffic: windows of --window seconds at --live-rate, two before the rule is saved,
        // then on until the rule is live.
        let rate = figure.liveRate ?? figure.load.rate.map { $0 / 3 } ?? 500
        var plan = try figure.load.plan(for: gateway)
        plan.rate = rate
        plan.seconds = figure.window
        plan.drainSeconds = 5
        struct Window { var load: LoadResult; var start: Double; var end: Double; var backfilling: Bool }
        var windows: [Window] = []
        let perWindow = Int(rate * figure.window * 1.02) + 100
        func oneWindow(_ backfilling: Bool, _ this: inout DMPRun) async throws -> Window {
            let requests = this.requests(perWindow, plan: plan)
            this.next += perWindow
            let start = Date().timeIntervalSince1970
            let result = try await LoadGenerator.run(plan, requests: requests)
            return Window(load: result, start: start, end: start + plan.seconds, backfilling: backfilling)
        }
        say("backfill: live webhooks at \(Format.int(rate))/s, \(Format.int(figure.window)) s windows; two before the rule")
        for _ in 0..<2 { windows.append(try await oneWindow(false, &self)) }

        let saved = now()
        try await putRule(code, tag: tag, body: body)
        say("backfill: rule \(code) saved; live windows until it is live")
        let gateway = gateway, auth = auth
        let progress = Mutex_<RuleWatch>(RuleWatch(state: "backfilling", liveAt: nil))
        let watcher = Task {
            while !Task.isCancelled {
                if let answer = try? await Web.call(.GET, "\(gateway)/admin/v1/tag-rules/\(code)", headers: auth),
                   let object = try? answer.json() as? [String: Any], let state = object["state"] as? String {
                    progress.set(RuleWatch(state: state, liveAt: state == "live" ? now() : nil))
                    if Int(now() - saved) / 30 != Int(now() - saved - 0.25) / 30 {
                        let scanned = (object["scanned"] as? NSNumber)?.intValue ?? 0
                        DMPData.log("backfill: \(scanned) scanned in \(Int(now() - saved)) s (\(Int(Double(scanned) / (now() - saved)))/s)")
                    }
                    if state == "live" { return }
                }
                try? await Task.sleep(for: .milliseconds(250))
            }
        }
        while progress.get().liveAt == nil {
            windows.append(try await oneWindow(true, &self))
            if now() - saved > 7200 { watcher.cancel(); throw BenchError("rule \(code) not live after 2 hours: \(progress.get())") }
        }
        await watcher.value
        let final = progress.get()
        let wall = (final.liveAt ?? now()) - saved
        // A window that ended after the rule went live still counts as "during": it overlapped.
        try await Task.sleep(for: .seconds(5))

        let rows = try await db.one("SELECT count(*) AS n, count(DISTINCT member_id) AS members FROM tag_rule_counts WHERE rule_id = (SELECT id FROM tag_rules WHERE code = $1)", [code])
        let tagged = try await db.one("SELECT count(*) AS n FROM member_tags WHERE source = $1 AND (expires_at IS NULL OR expires_at > now())", ["rule:\(code)"])
        let rule = try await self.rule(code)
        let depth = try await Broker(vhost: figure.vhost).queues().reduce(0) { $0 + $1.messages }

        var table = Table(["backfill", "value"])
        table.add(["rule", "`\(body)` (tag \(tag))"])
        table.add(["events of its kinds in its window (total) \\| scanned", "\(rule.total) \\| \(rule.scanned)"])
        table.add(["**saved → live**", "**\(Format.fixed(wall, 1)) s**"])
        table.add(["**events scanned/s**", "**\(Format.int(Double(rule.scanned) / max(wall, 1e-9)))**"])
        table.add(["members counted \\| hour buckets written", "\(try rows.number("members")) \\| \(try rows.number("n"))"])
        table.add(["members holding the tag when live", "\(try tagged.number("n"))"])
        print("")
        print(table.text)

        let me = self
        func summary(_ list: [Window]) async throws -> [String] {
            guard let first = list.first, let last = list.last else { return ["-", "-", "-", "-", "-", "-"] }
            let merged = LoadResult.merge(list.map(\.load), seconds: list.reduce(0) { $0 + $1.load.seconds }, cpu: list.reduce(0) { $0 + $1.load.generatorCPUSeconds })
            let lag = try await me.lag(from: first.start, to: last.end)
            let ledger = try await me.db.one("""
                SELECT count(*) AS n FROM ledger WHERE rule = $1 AND created_at >= to_timestamp($2::float8) AND created_at < to_timestamp($3::float8)
                """, [DMPFigure.pointsRule, first.start, last.end]).number("n")
            return ["\(list.count) × \(Format.int(me.figure.window)) s", Format.int(merged.requestsPerSecond),
                    "\(merged.latency.milliseconds(0.5)) \\| \(merged.latency.milliseconds(0.99)) \\| \(merged.latency.maxMilliseconds)",
                    "\(merged.non2xx)", Format.int(Double(ledger) / max(last.end - first.start, 1e-9)), lag.text]
        }
        var live = Table(["live webhooks at \(Format.int(rate))/s", "windows", "accepted/s", "webhook p50 \\| p99 \\| max ms", "non-2xx or no answer",
                          "ledger entries/s", "event → ledger p50 \\| p99 \\| max ms"])
        live.add(["before the rule (just before saving it)"] + (try await summary(windows.filter { !$0.backfilling })))
        live.add(["during the backfill"] + (try await summary(windows.filter(\.backfilling))))
        print("")
        print("Live traffic before and during the backfill (the same mixed webhooks as figure 1, open loop; queues' ready messages at the end: \(depth)); load average \(loadAverage()):")
        print("")
        print(live.text)
        let late = windows.filter { !$0.load.keptUp }.count
        if late > 0 { print(""); print("the load generator could not keep up in \(late) of \(windows.count) windows (latency counts from the due time)") }
    }
}

struct RuleWatch: Sendable {
    var state: String
    var liveAt: Double?
}

/// A value shared between tasks, behind a lock.
final class Mutex_<Value: Sendable>: @unchecked Sendable {
    private var value: Value
    private let lock = NSLock()
    init(_ value: Value) { self.value = value }
    func get() -> Value { lock.lock(); defer { lock.unlock() }; return value }
    func set(_ new: Value) { lock.lock(); value = new; lock.unlock() }
}
