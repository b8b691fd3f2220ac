import ArgumentParser

/// Checks the bench's own arithmetic before it is trusted with figures: the latency histogram's
/// buckets and percentiles, and the HTTP response parser on answers split at every byte.
/// `scripts/bench` runs it after each build; it exits non-zero on the first wrong answer.
struct SelfCheck: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "self-check", abstract: "Check the histogram and the HTTP parser.")

    func run() async throws {
        let problems = LatencyHistogram.selfCheck() + ResponseParser.selfCheck()
        guard problems.isEmpty else { throw BenchError("self-check failed:\n" + problems.joined(separator: "\n")) }
        print("self-check: histogram and HTTP parser ok")
    }
}
