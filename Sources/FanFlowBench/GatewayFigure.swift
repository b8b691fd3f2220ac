import ArgumentParser
import Foundation

/// The load options every figure shares.
struct LoadOptions: ParsableArguments {
    @Option(help: "Seconds of load.") var seconds: Double = 5
    @Option(help: "Keep-alive connections.") var connections: Int = 64
    @Option(help: "Open loop: requests per second over all connections (paced; latency counted from each request's due time). Default: closed loop.")
    var rate: Double?
    @Option(help: "Load generator threads (event loops).") var threads: Int = 1

    func validate() throws {
        guard seconds > 0, seconds <= 3600 else { throw ValidationError("--seconds must be in (0, 3600]") }
        guard (1...10_000).contains(connections) else { throw ValidationError("--connections must be 1-10000") }
        if let rate, !(rate > 0 && rate <= 1_000_000) { throw ValidationError("--rate must be in (0, 1000000]") }
        guard (1...16).contains(threads) else { throw ValidationError("--threads must be 1-16") }
    }

    func plan(for url: String) throws -> LoadPlan {
        guard let components = URLComponents(string: url), let host = components.host else { throw ValidationError("not a URL: \(url)") }
        return LoadPlan(host: host, port: components.port ?? 80, connections: connections, seconds: seconds, rate: rate, threads: threads)
    }

    var shape: String {
        rate.map { "open loop at \(Format.int($0)) req/s over \(connections) connections" } ?? "closed loop, \(connections) connections"
    }
}

/// How the load generator fared, one row per load: the bench shares the cores with what it measures.
struct GeneratorTable {
    var table = Table(["load", "p90 ms", "max ms", "answered", "answers by status", "no answer", "load generator CPU", "µs per request", "pacing"])

    mutating func add(_ name: String, _ result: LoadResult) {
        table.add([name, result.latency.milliseconds(0.9), result.latency.maxMilliseconds, "\(result.answered)", result.byStatus, "\(result.unanswered)",
                   "\(Format.fixed(100 * result.generatorCPUSeconds / result.seconds, 1))% of a core",
                   Format.fixed(result.generatorMicrosecondsPerRequest, 1),
                   result.rate == nil ? "closed loop" : (result.keptUp ? "kept up" : "COULD NOT KEEP UP")])
    }
}

/// `scripts/bench gateway`: signed WeChat webhooks (plaintext and safe mode) and beacon batches at a
/// release gateway, beside the raw client's confirmed-publish rate measured in the same run.
struct GatewayFigure: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gateway", abstract: "Drive a running gateway with signed webhooks and beacons; print the gateway table.")

    @Option(help: "The gateway's base URL.") var gateway: String
    @OptionGroup var load: LoadOptions
    @Option(help: "The WeChat app in plaintext mode.") var plainApp: String = "bench-plain"
    @Option(help: "The WeChat app in safe mode.") var aesApp: String = "bench-aes"
    @Option(help: "Both apps' token.") var token: String = "bench-token"
    @Option(help: "The safe-mode app's EncodingAESKey.") var aesKey: String
    @Option(help: "The beacon site.") var site: String = "bench-site"
    @Option(help: "The AMQP URL the raw client publishes to (a vhost of its own is best).") var rawAmqpURL: String?

    func run() async throws {
        let plan = try load.plan(for: gateway)
        let host = "\(plan.host):\(plan.port)"
        let perLoad = Int(load.seconds * 12_000)
        FileHandle.standardError.write(Data("[bench] pre-signing \(perLoad) plaintext and \(perLoad) safe-mode webhooks\n".utf8))
        let plain = try Requests.wechat(app: plainApp, token: token, aesKey: nil, count: perLoad, host: host)
        let aes = try Requests.wechat(app: aesApp, token: token, aesKey: aesKey, count: perLoad, host: host)
        let beacons = Requests.beacons(site: site, count: Int(load.seconds * 4_000), host: host)
        let rawURL = try rawAmqpURL ?? environment("FANFLOW_AMQP_URL")
        let seconds = String(load.seconds)

        func raw(_ extra: [String]) async throws -> Double {
            let client = try ClientsBench.parse(["--only", "amqp", "--seconds", seconds] + extra)
            return try await client.amqp(url: rawURL).0
        }
        FileHandle.standardError.write(Data("[bench] raw client: confirmed publishes\n".utf8))
        let raw1 = try await raw([])
        var results: [(String, LoadResult, Int)] = []
        for (name, requests, events) in [("WeChat plaintext, signed", plain, 1), ("WeChat safe mode (AES), signed", aes, 1),
                                         ("beacon batches (5 events)", beacons, 5)] {
            if let last = requests.last { _ = try await LoadGenerator.warmUp(plan, last) }
            FileHandle.standardError.write(Data("[bench] \(name): \(load.shape), \(seconds)s\n".utf8))
            results.append((name, try await LoadGenerator.run(plan, requests: requests), events))
        }
        let raw2 = try await raw([])
        // The raw client in the gateway's own shape: as many in flight as the load's connections, and
        // each message routed to one quorum queue, as the topology routes a webhook (the pipeline).
        FileHandle.standardError.write(Data("[bench] raw client: the gateway's shape\n".utf8))
        let shape = try await raw(["--in-flight", String(load.connections), "--queues", "1"])
        let best = max(raw1, raw2)
        let published = try await Web.acceptedEvents(gateway: gateway)

        var table = Table(["load", "req/s", "events/s", "p50 ms", "p99 ms", "non-2xx", "events vs raw publish"])
        var generator = GeneratorTable()
        for (name, result, events) in results {
            let rate = Double(Int(result.requestsPerSecond))
            table.add([name, Format.int(rate), Format.int(rate * Double(events)), result.latency.milliseconds(0.5),
                       result.latency.milliseconds(0.99), "\(result.non2xx)", Format.percent(rate * Double(events), of: best)])
            generator.add(name, result)
        }
        print("")
        print("\(banner("gateway")), \(seconds)s per load, \(load.shape) over loopback (FanFlowBench load generator, \(load.threads) thread), load average \(loadAverage())")
        print("")
        print(table.text)
        print("")
        print("raw client, confirmed publishes (2000 in flight, one queue, best of 2 in this run): \(Format.int(best))/s")
        print("raw client in the gateway's shape (\(load.connections) in flight, two quorum queues per message): \(Format.int(shape))/s")
        print("events the gateway published (broker-confirmed) during the run: \(published)")
        print("")
        print("The load generator in the same run (it shares the cores with the gateway and the servers):")
        print("")
        print(generator.table.text)
        for (name, result, _) in results { if let pacing = result.pacing { print("\(name): \(pacing)") } }
    }
}

/// One load at a URL, for ceilings (nginx, the gateway's `/health`): a result line for a table.
struct HTTPLoad: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "http-load", abstract: "GET one URL under load; append the result to a file.")

    @Option(help: "The URL to GET.") var url: String
    @OptionGroup var load: LoadOptions
    @Option(help: "A name for the result.") var name: String
    @Option(help: "Append the result here (one JSON object per line).") var results: String

    struct Line: Codable {
        var name: String
        var result: LoadResult
    }

    func run() async throws {
        let plan = try load.plan(for: url)
        let path = URLComponents(string: url).map { $0.percentEncodedPath.isEmpty ? "/" : $0.percentEncodedPath } ?? "/"
        let result = try await LoadGenerator.run(plan, requests: [.get(path, host: "\(plan.host):\(plan.port)")])
        try ResultLines.append(Line(name: name, result: result), to: results)
        print("\(name): \(Format.int(result.requestsPerSecond)) req/s, p99 \(result.latency.milliseconds(0.99)) ms")
        if let pacing = result.pacing { print(pacing) }
    }
}
