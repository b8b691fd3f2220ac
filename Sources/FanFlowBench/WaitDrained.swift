import AMQPClient
import ArgumentParser
import Foundation

/// Waits until a queue has no ready messages, polling with a passive declare every 20 ms (far
/// finer than `rabbitmqctl`, which takes about a second a call on a loaded machine), and prints
/// the depth it found and the seconds it waited. Unacknowledged deliveries (at most the consumers' prefetch) are not
/// counted here; the bench checks them after.
struct WaitDrained: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wait-drained", abstract: "Wait until a queue has no ready messages; print the seconds waited.")

    @Option(help: "The queue.") var queue: String
    @Option(help: "Give up after this many seconds.") var timeout: Double = 600

    func run() async throws {
        let url = ProcessInfo.processInfo.environment["FANFLOW_AMQP_URL"] ?? "amqp://guest:guest@127.0.0.1:5672/%2F"
        let connection = try await AMQPConnection(url: url)
        let started = ContinuousClock.now
        let depth = try await connection.messageCount(queue: queue)
        while try await connection.messageCount(queue: queue) > 0 {
            if ContinuousClock.now - started > .seconds(timeout) { throw ValidationError("\(queue) did not drain in \(timeout) s") }
            try await Task.sleep(for: .milliseconds(20))
        }
        let waited = ContinuousClock.now - started
        print(depth, String(format: "%.2f", Double(waited.components.seconds) + Double(waited.components.attoseconds) / 1e18))
        await connection.close()
    }
}
