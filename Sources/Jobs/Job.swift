import Contracts
import Foundation

/// A job's kind: a stable string chosen once (renaming a Swift constant never changes what is stored).
public struct JobKind: RawRepresentable, Hashable, Sendable, Codable, CustomStringConvertible {
    public let rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    public init(_ rawValue: String) { self.rawValue = rawValue }
    public var description: String { rawValue }
}

public enum JobStatus: String, Sendable, Codable, CaseIterable {
    /// Waiting for its due time (or for a retry).
    case scheduled
    /// Claimed by a scheduler under a lease.
    case running
    case done
    /// Gave up after its attempts; kept with its last error until retried by an operator.
    case failed
    case cancelled
}

/// A job to enqueue.
public struct NewJob: Sendable {
    public var kind: JobKind
    public var payload: [String: JSONValue]
    public var dueAt: Date
    /// A second enqueue with the same key is a no-op, for as long as the job is kept.
    public var uniqueKey: String?
    public var maxAttempts: Int

    public init(kind: JobKind, payload: [String: JSONValue] = [:], dueAt: Date, uniqueKey: String? = nil, maxAttempts: Int = 10) {
        self.kind = kind
        self.payload = payload
        self.dueAt = dueAt
        self.uniqueKey = uniqueKey
        self.maxAttempts = maxAttempts
    }
}

/// A job as stored.
public struct Job: Sendable, Equatable {
    public let id: Int64
    public let kind: JobKind
    public let payload: [String: JSONValue]
    public let status: JobStatus
    public let dueAt: Date
    public let uniqueKey: String?
    /// Runs started so far, this one included once claimed.
    public let attempts: Int
    public let maxAttempts: Int
    public let lastError: String?
    public let lockedBy: String?
    public let createdAt: Date
    public let startedAt: Date?
    public let finishedAt: Date?
}

/// What a handler says about one job it ran.
public enum JobOutcome: Sendable, Equatable {
    case done
    /// Try again later: after `delay`, or after the store's exponential backoff with jitter.
    /// After the job's last attempt this gives up instead.
    case retry(error: String, delay: Duration? = nil)
    /// Never try again: kept as failed with the error, retryable by an operator.
    case fail(error: String)
}

/// Runs due jobs of the kinds it is registered for. It gets a batch of jobs of one kind and
/// answers one outcome per job, in order. Delivery is at least once: a scheduler that dies after
/// the work but before recording the outcome runs the job again, so handlers are idempotent.
public protocol JobHandler: Sendable {
    func run(_ jobs: [Job]) async -> [JobOutcome]
}

/// A handler that runs one job at a time.
public struct EachJobHandler: JobHandler {
    let body: @Sendable (Job) async throws -> Void

    public init(_ body: @escaping @Sendable (Job) async throws -> Void) { self.body = body }

    public func run(_ jobs: [Job]) async -> [JobOutcome] {
        var outcomes: [JobOutcome] = []
        for job in jobs {
            do {
                try await body(job)
                outcomes.append(.done)
            } catch {
                outcomes.append(.retry(error: "\(error)"))
            }
        }
        return outcomes
    }
}

/// Exponential backoff with full jitter for job retries: attempt n waits a random time between
/// half and all of `base · 2^(n-1)`, capped, so many jobs failing together do not retry together.
public struct JobBackoff: Sendable {
    public var base: Duration
    public var maximum: Duration

    public init(base: Duration = .seconds(5), maximum: Duration = .seconds(3600)) {
        self.base = base
        self.maximum = maximum
    }

    public func delay(afterAttempt attempt: Int, random: Double = Double.random(in: 0...1)) -> Duration {
        let exponent = min(max(attempt - 1, 0), 30)
        let ceiling = min(JobStore.seconds(base) * pow(2, Double(exponent)), JobStore.seconds(maximum))
        return .milliseconds(Int64((ceiling * (0.5 + 0.5 * random)) * 1000))
    }
}

extension Job {
    /// The job as the admin API and `fanflow jobs show` print it (times in RFC 3339).
    public var json: [String: JSONValue] {
        func time(_ date: Date?) -> JSONValue { date.map { .string(RFC3339.format($0)) } ?? .null }
        return [
            "id": .integer(id), "kind": .string(kind.rawValue), "status": .string(status.rawValue), "payload": .object(payload),
            "dueAt": time(dueAt), "uniqueKey": uniqueKey.map(JSONValue.string) ?? .null, "attempts": .integer(Int64(attempts)),
            "maxAttempts": .integer(Int64(maxAttempts)), "lastError": lastError.map(JSONValue.string) ?? .null,
            "lockedBy": lockedBy.map(JSONValue.string) ?? .null, "createdAt": time(createdAt), "startedAt": time(startedAt),
            "finishedAt": time(finishedAt),
        ]
    }
}

extension Job {
    /// The job as the event a pool handles: platform `fanflow`, the job's kind as the event's kind
    /// (`push.flashsale_reminder` routes as `fanflow.push.flashsale_reminder`), id
    /// `fanflow:job:<id>` on every attempt (so whatever is made once per event is made once per
    /// job), the payload as its attributes with `jobId` and `attempt`, and a payload `app` as its app.
    /// The scheduler publishes this envelope; a worker running the job itself hands it to its
    /// domain the same way, so both paths make the same ids.
    public func envelope(receivedAt now: Date = Date()) -> Envelope {
        var attributes = payload
        attributes["jobId"] = .integer(id)
        attributes["attempt"] = .integer(Int64(attempts))
        return Envelope(id: "fanflow:job:\(id)", platform: .fanflow, app: payload["app"]?.string ?? "", kind: EventKind(kind.rawValue),
                        subject: .init(), occurredAt: dueAt, receivedAt: now, attributes: attributes)
    }
}

/// The scheduler's own upkeep: finished jobs are deleted after `retention` by a daily job.
public enum MaintenanceJobs {
    public static let prune = JobKind("scheduler.prune")

    public static func periodic(timeZone: TimeZone) throws -> [PeriodicJob] {
        [PeriodicJob(name: "scheduler.prune", schedule: try CronSchedule("30 4 * * *", timeZone: timeZone), kind: prune)]
    }

    public static func handlers(store: JobStore, retention: Duration = .seconds(30 * 86_400)) -> [JobKind: any JobHandler] {
        [prune: EachJobHandler { _ in _ = try await store.prune(olderThan: retention) }]
    }
}
