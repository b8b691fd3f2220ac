import Contracts
import DeadLetters
import Foundation

extension GatewayMetrics {
    /// `fanflow_dead_letters{queue}`: open dead letters per work queue, from PostgreSQL (every
    /// keeper's), so any gateway shows the same figure; the alert in `ops/alerts.yml` fires on it.
    /// Every standard queue is written, at 0 when empty, so the series exists before the first death.
    public static func render(deadLetters depth: [String: Int]?, queues: [String]) -> String {
        var out = "# HELP fanflow_dead_letters Open dead letters per work queue (listed by GET /admin/v1/dead-letters).\n"
        out += "# TYPE fanflow_dead_letters gauge\n"
        guard let depth else { return out }
        var all = depth
        for queue in queues where all[queue] == nil { all[queue] = 0 }
        for (queue, count) in all.sorted(by: { $0.key < $1.key }) {
            let label = queue.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            out += "fanflow_dead_letters{queue=\"\(label)\"} \(count)\n"
        }
        return out
    }
}

extension Gateway {
    /// The dead-letter gauge's text; without the database, only its help lines.
    func deadLetterMetrics() async -> String {
        let depth = try? await DeadLetterStore(database: database).depth()
        return GatewayMetrics.render(deadLetters: depth, queues: Topology.standard.queues.map(\.name.rawValue))
    }
}
