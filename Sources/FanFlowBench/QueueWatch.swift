import AMQPClient
import ArgumentParser
import Foundation

/// Samples the ready depth of the work queues every 250 ms for `scripts/bench faults`, one
/// `epochMs total` line per sample (flushed as it goes, so the bench can read it while it runs).
/// A broker that is down or restarting gives `epochMs -1` and a fresh connection on the next sample.
struct QueueWatch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "queue-watch", abstract: "Sample the ready depth of queues until stopped or --seconds pass.")

    @Option(help: "Comma-separated queue names.") var queues: String = "fanflow.pipeline,fanflow.orders,fanflow.push"
    @Option(help: "Stop after this many seconds.") var seconds: Double = 900
    @Option(help: "Output file.") var output: String

    func run() async throws {
        let url = ProcessInfo.processInfo.environment["FANFLOW_AMQP_URL"] ?? "amqp://guest:guest@127.0.0.1:5672/%2F"
        let names = queues.split(separator: ",").map(String.init)
        guard FileManager.default.createFile(atPath: output, contents: nil), let file = FileHandle(forWritingAtPath: output) else {
            throw ValidationError("cannot write \(output)")
        }
        let end = now() + seconds
        var connection: AMQPConnection?
        while now() < end {
            let at = Int64(Date().timeIntervalSince1970 * 1000)
            var total: Int64 = -1
            do {
                if connection == nil { connection = try await AMQPConnection(url: url) }
                if let connection {
                    var sum: Int64 = 0
                    for name in names { sum += Int64(try await connection.messageCount(queue: name)) }
                    total = sum
                }
            } catch {
                await connection?.close()
                connection = nil
            }
            file.write(Data("\(at) \(total)\n".utf8))
            try await Task.sleep(for: .milliseconds(250))
        }
        await connection?.close()
        try file.close()
    }
}
