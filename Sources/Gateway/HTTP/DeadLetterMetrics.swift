import ClientSupport
import Contracts
import DeadLetters
import Foundation
import PostgresClient
import Synchronization

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

/// The dead-letter depth as `/metrics` shows it, read from PostgreSQL at most once per `maxAge`
/// (15 s: Prometheus scrapes every 15 to 60 s, and the alert waits minutes). `/metrics` may be
/// open (no FANFLOW_METRICS_TOKEN): a query per request would let anyone hold the gateway's 8
/// pooled connections, so requests share one refresh at a time, and a refresh that fails keeps
/// the last figure (nil only before the first success) and is not tried again before `maxAge`.
final class DeadLetterDepthCache: Sendable {
    typealias Depth = [String: Int]

    private struct State {
        var value: Depth?
        var fetchedAt: ContinuousClock.Instant?
        var refresh: Task<Depth?, Never>?
    }

    private enum Next {
        case cached(Depth?)
        case wait(Task<Depth?, Never>)
    }

    let maxAge: Duration
    private let fetch: @Sendable () async throws -> Depth
    private let state = Mutex(State())

    init(maxAge: Duration = .seconds(15), fetch: @escaping @Sendable () async throws -> Depth) {
        self.maxAge = maxAge
        self.fetch = fetch
    }

    /// Open dead letters per queue from `dead_letters`.
    convenience init(database: PostgresPool) {
        self.init { try await DeadLetterStore(database: database).depth() }
    }

    func depth() async -> Depth? {
        let now = ContinuousClock.now
        let next: Next = state.withLock { state in
            if let at = state.fetchedAt, now - at < maxAge { return .cached(state.value) }
            if let running = state.refresh { return .wait(running) }
            let running = Task { await self.refresh() }
            state.refresh = running
            return .wait(running)
        }
        switch next {
        case .cached(let value): return value
        case .wait(let running): return await running.value
        }
    }

    /// Forgets when the figure was read, so the next request reads it again.
    func expire() {
        state.withLock { $0.fetchedAt = nil }
    }

    private func refresh() async -> Depth? {
        let fresh = try? await fetch()
        return state.withLock { state in
            if let fresh { state.value = fresh }
            state.fetchedAt = ContinuousClock.now
            state.refresh = nil
            return state.value
        }
    }
}

extension Gateway {
    /// The dead-letter gauge's text (``DeadLetterDepthCache``); without a figure yet, only its help lines.
    func deadLetterMetrics() async -> String {
        GatewayMetrics.render(deadLetters: await deadLetterDepth.depth(), queues: Topology.standard.queues.map(\.name.rawValue))
    }
}
