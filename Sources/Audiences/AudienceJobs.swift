import Contracts
import Foundation
import Jobs
import PostgresClient

/// The audience domain's scheduled work, run by the pipeline worker from the jobs table.
///
/// - `audiences.backfill` (payload `rule`, `id`, `from`, `span`): one step of a rule's backfill
///   (``TagRuleBackfill``); each step enqueues the next in its own transaction, keyed by rule
///   generation and cursor, so a step enqueued twice runs once.
/// - `audiences.expire` (periodic, every minute): deletes tag holds past their expiry, prunes
///   hour buckets older than their rule's window, and deletes what retired rule generations left.
public enum AudienceJobs {
    public static let backfill = JobKind("audiences.backfill")
    public static let expire = JobKind("audiences.expire")

    public static func backfillJob(rule: String, id: Int32, from: Date, span: Int64?) -> NewJob {
        var payload: [String: JSONValue] = ["rule": .string(rule), "id": .integer(Int64(id)),
                                            "from": .number(from.timeIntervalSince1970)]
        if let span { payload["span"] = .integer(span) }
        return NewJob(kind: backfill, payload: payload, dueAt: Date(),
                      uniqueKey: "audiences.backfill:\(id):\(Int64((from.timeIntervalSince1970 * 1000).rounded()))", maxAttempts: 20)
    }

    public static func periodic(timeZone: TimeZone) throws -> [PeriodicJob] {
        [PeriodicJob(name: "audiences.expire", schedule: try CronSchedule("* * * * *", timeZone: timeZone), kind: expire)]
    }

    public static func handlers(database: PostgresPool) -> [JobKind: any JobHandler] {
        [backfill: BackfillHandler(backfill: TagRuleBackfill(database: database)), expire: ExpireHandler(upkeep: AudienceUpkeep(database: database))]
    }

    struct BackfillHandler: JobHandler {
        let backfill: TagRuleBackfill

        func run(_ jobs: [Job]) async -> [JobOutcome] {
            var outcomes: [JobOutcome] = []
            // One at a time: steps of one rule serialize on its row anyway.
            for job in jobs {
                guard let rule = job.payload["rule"]?.string, let id = job.payload["id"]?.int, let id32 = Int32(exactly: id),
                      let from = job.payload["from"].flatMap(EventConditions.number) else {
                    outcomes.append(.fail(error: "payload needs rule, id and from"))
                    continue
                }
                do {
                    let step = try await backfill.step(rule: rule, id: id32, from: Date(timeIntervalSince1970: from),
                                                       span: job.payload["span"]?.int)
                    if case .finished = step { try await backfill.goLive(rule: rule, id: id32) }
                    outcomes.append(.done)
                } catch {
                    outcomes.append(.retry(error: "\(error)"))
                }
            }
            return outcomes
        }
    }

    struct ExpireHandler: JobHandler {
        let upkeep: AudienceUpkeep

        func run(_ jobs: [Job]) async -> [JobOutcome] {
            do {
                _ = try await upkeep.run(now: Date())
                return jobs.map { _ in .done }
            } catch {
                return jobs.map { _ in .retry(error: "\(error)") }
            }
        }
    }
}

/// What one upkeep pass deleted.
public struct UpkeepReport: Sendable, Equatable {
    public var expiredTags = 0
    public var prunedBuckets = 0
    public var retiredRows = 0
}

/// The minute's upkeep: holds past expiry, buckets out of every window, retired generations. Each
/// delete goes in slices of 10,000 rows, so no pass holds locks on a large set for long.
public struct AudienceUpkeep: Sendable {
    let database: PostgresPool
    static let slice = 10_000

    public init(database: PostgresPool) { self.database = database }

    public func run(now: Date) async throws -> UpkeepReport {
        var report = UpkeepReport()
        while true {
            let deleted = try await database.query("""
                DELETE FROM member_tags WHERE ctid = ANY(ARRAY(
                    SELECT ctid FROM member_tags WHERE expires_at <= $1 LIMIT \(Self.slice)))
                """, [now]).affectedRows
            report.expiredTags += deleted
            if deleted < Self.slice { break }
        }
        let rules = try await database.transaction { connection in try TagRuleStore.readable(on: connection) }
        for stored in rules {
            while true {
                let deleted = try await database.query("""
                    DELETE FROM tag_rule_counts WHERE ctid = ANY(ARRAY(
                        SELECT ctid FROM tag_rule_counts WHERE rule_id = $1 AND hour < $2 LIMIT \(Self.slice)))
                    """, [Int64(stored.id), Int64(stored.rule.criteria.within.firstHour(at: now))]).affectedRows
                report.prunedBuckets += deleted
                if deleted < Self.slice { break }
            }
        }
        for row in try await database.query("SELECT id FROM tag_rule_retired ORDER BY id") {
            let id = Int64(try row.requiredInt("id"))
            for table in ["tag_rule_counts", "tag_rule_seen"] {
                while true {
                    let deleted = try await database.query("""
                        DELETE FROM \(table) WHERE ctid = ANY(ARRAY(SELECT ctid FROM \(table) WHERE rule_id = $1 LIMIT \(Self.slice)))
                        """, [id]).affectedRows
                    report.retiredRows += deleted
                    if deleted < Self.slice { break }
                }
            }
            try await database.query("DELETE FROM tag_rule_retired WHERE id = $1", [id])
        }
        return report
    }
}
