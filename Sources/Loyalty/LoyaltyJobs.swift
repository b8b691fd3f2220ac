import Foundation
import Jobs

/// The loyalty program's scheduled work.
///
/// - `loyalty.mature` (payload `ledgerId`): one pending grant (purchase points after the
///   maturation period, a community post after its review) becomes spendable. Enqueued in the
///   transaction that wrote the pending entry, due at its due date, keyed by the entry.
/// - `loyalty.expire` (periodic, every minute): expired points are taken back.
///
/// Both are idempotent: a pending entry is settled once (row lock and `settled_at`), and the
/// ledger's unique index refuses a second `matured` or `expiry` entry.
public enum LoyaltyJobs {
    public static let mature = JobKind("loyalty.mature")
    public static let expire = JobKind("loyalty.expire")

    public static func matureJob(ledgerID: Int64, dueAt: Date) -> NewJob {
        NewJob(kind: mature, payload: ["ledgerId": .integer(ledgerID)], dueAt: dueAt, uniqueKey: "loyalty.mature:\(ledgerID)",
               maxAttempts: 20)
    }

    public static func periodic(timeZone: TimeZone) throws -> [PeriodicJob] {
        [PeriodicJob(name: "loyalty.expire", schedule: try CronSchedule("* * * * *", timeZone: timeZone), kind: expire)]
    }

    /// Handlers for the scheduler process.
    public static func handlers(ledger: Ledger, rules: RuleStore) -> [JobKind: any JobHandler] {
        [mature: MatureHandler(ledger: ledger, rules: rules), expire: ExpireHandler(ledger: ledger, rules: rules)]
    }

    struct MatureHandler: JobHandler {
        let ledger: Ledger
        let rules: RuleStore

        func run(_ jobs: [Job]) async -> [JobOutcome] {
            let ids = jobs.compactMap { $0.payload["ledgerId"]?.int }
            do {
                _ = try await ledger.mature(ids: ids, levels: try await rules.levels())
            } catch {
                return jobs.map { _ in .retry(error: "\(error)") }
            }
            return jobs.map { $0.payload["ledgerId"]?.int == nil ? .fail(error: "payload has no ledgerId") : .done }
        }
    }

    struct ExpireHandler: JobHandler {
        let ledger: Ledger
        let rules: RuleStore

        func run(_ jobs: [Job]) async -> [JobOutcome] {
            do {
                let levels = try await rules.levels()
                // One sweep serves every period in the batch (a catch-up after an outage).
                while try await ledger.expireDue(asOf: Date(), levels: levels) > 0 {}
                return jobs.map { _ in .done }
            } catch {
                return jobs.map { _ in .retry(error: "\(error)") }
            }
        }
    }
}
