import Foundation
import Logging
import Loyalty
import ServiceLifecycle
import Synchronization

/// Work only the leading scheduler does, every `interval`: purchase points that have matured are
/// granted, expired points are taken back. Both sweeps are safe to run twice or concurrently
/// (SKIP LOCKED and the ledger's unique index), so a leader change at worst runs one early.
///
/// This is the stand-in until durable jobs land (the scheduler issue): the due dates live in the
/// ledger itself, so nothing scheduled here can be lost by a restart.
public final class LeaderTasks: Service, Sendable {
    private let leading = Atomic<Bool>(false)
    let ledger: Ledger
    let rules: RuleStore
    let interval: Duration
    let logger: Logger

    public init(ledger: Ledger, rules: RuleStore, interval: Duration = .seconds(60), logger: Logger) {
        self.ledger = ledger
        self.rules = rules
        self.interval = interval
        self.logger = logger
    }

    /// For ``LeaderElection``'s `onChange`.
    public func setLeading(_ value: Bool) { leading.store(value, ordering: .relaxed) }

    public func run() async throws {
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            if leading.load(ordering: .relaxed) {
                do {
                    let (matured, expired) = try await runOnce(now: Date())
                    if matured + expired > 0 {
                        logger.info("loyalty sweeps", metadata: ["matured": "\(matured)", "expired": "\(expired)"])
                    }
                } catch {
                    logger.error("loyalty sweep failed; next interval retries", metadata: ["error": "\(error)"])
                }
            }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: self.interval) }
        }
    }

    /// Both sweeps until nothing is due; returns the entries matured and expired.
    public func runOnce(now: Date) async throws -> (matured: Int, expired: Int) {
        let levels = try await rules.levels()
        var matured = 0, expired = 0
        while true {
            let count = try await ledger.matureDue(asOf: now, levels: levels)
            matured += count
            if count == 0 { break }
        }
        while true {
            let count = try await ledger.expireDue(asOf: now, levels: levels)
            expired += count
            if count == 0 { break }
        }
        return (matured, expired)
    }
}
