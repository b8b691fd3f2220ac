import Contracts
import Foundation
import Jobs

/// The push job kinds and their handlers. The push worker runs them itself (a `JobRunner` beside
/// its consumers), so a retry or a broadcast batch goes from the jobs table straight to
/// ``PushService``, not through the scheduler and the broker. The gateway enqueues a broadcast's
/// first batch, the push worker everything after.
public enum PushJobs {
    /// A push's next attempt after a transient failure or a spent quota.
    public static let retry = JobKind("push.retry")
    /// A broadcast push's first attempt, one job per push.
    public static let send = JobKind("push.send")
    /// One batch of a broadcast's audience (payload `broadcastId`, `after`: the last member id done).
    public static let broadcast = JobKind("push.broadcast")
    /// The kinds Pushes defines. (The flash-sale payment reminder, defined by flash sales, is run by
    /// the push worker too: ``handlers(_:triggering:)``.)
    public static let kinds = [retry, send, broadcast]

    /// The routing key a job of `kind` had when a scheduler published it (``Jobs/Job/envelope(receivedAt:)``).
    public static func routingKey(_ kind: JobKind) -> String { "\(Platform.fanflow.rawValue).\(kind.rawValue)" }

    public static func broadcastBatch(_ id: Int64, after: Int64, at due: Date) -> NewJob {
        NewJob(kind: broadcast, payload: ["broadcastId": .integer(id), "after": .integer(after)], dueAt: due,
               uniqueKey: "push.broadcast:\(id):\(after)", maxAttempts: 20)
    }

    /// Attempt `attempt` (0: the first) of the push `id`.
    public static func attempt(_ id: String, attempt: Int, at due: Date) -> NewJob {
        NewJob(kind: attempt == 0 ? send : retry, payload: ["pushId": .string(id), "pushAttempt": .integer(Int64(attempt))], dueAt: due,
               uniqueKey: "\(attempt == 0 ? "push.send" : "push.retry"):\(id)\(attempt == 0 ? "" : ":\(attempt)")", maxAttempts: 20)
    }

    /// The handlers of ``kinds``, and of `triggering`: kinds whose job is an event that fires push
    /// triggers (its payload the event's attributes, ``Jobs/Job/envelope(receivedAt:)``), as the
    /// flash-sale payment reminder is.
    ///
    /// Every job of a batch runs at once, each waiting for its app's pace, as a batch of the push
    /// queue's messages does: the runner's batch size is the concurrency. A job is `done` whatever
    /// the push's outcome (the outcome is the push's, and its next attempt is a job of its own); a
    /// server that fails (PostgreSQL, Redis) retries the job with the runner's backoff, and a job
    /// that can never work (a payload without its ids, a push or broadcast that does not exist, a
    /// deleted template) fails at once, kept for an operator.
    public static func handlers(_ service: PushService, triggering: [JobKind] = []) -> [JobKind: any JobHandler] {
        var handlers: [JobKind: any JobHandler] = [retry: AttemptJobs(delivery: service.delivery), send: AttemptJobs(delivery: service.delivery),
                                                   broadcast: BroadcastJobs(broadcasts: service.broadcasts)]
        for kind in triggering { handlers[kind] = TriggerJobs(triggers: service.triggers) }
        return handlers
    }

    /// Runs `body` for every job at once; the outcomes in the jobs' order.
    static func each(_ jobs: [Job], _ body: @escaping @Sendable (Job) async -> JobOutcome) async -> [JobOutcome] {
        await withTaskGroup(of: (Int, JobOutcome).self) { group in
            for (index, job) in jobs.enumerated() { group.addTask { (index, await body(job)) } }
            var outcomes = [JobOutcome](repeating: .retry(error: "not run"), count: jobs.count)
            for await (index, outcome) in group { outcomes[index] = outcome }
            return outcomes
        }
    }
}

/// `push.send` and `push.retry`: attempt `pushAttempt` of `pushId`.
struct AttemptJobs: JobHandler {
    let delivery: PushDelivery

    func run(_ jobs: [Job]) async -> [JobOutcome] {
        await PushJobs.each(jobs) { job in
            guard let id = job.payload["pushId"]?.string, let number = job.payload["pushAttempt"]?.int, let attempt = Int(exactly: number),
                  attempt >= 0 else {
                return .fail(error: "\(job.kind) job without pushId and pushAttempt")
            }
            do {
                switch try await delivery.retry(pushID: id, attempt: attempt) {
                case .unknownPush: return .fail(error: "no push \(id)")
                case .sent, .refused, .deferred, .retryScheduled, .dead, .alreadySettled: return .done
                }
            } catch {
                return .retry(error: "\(error)")
            }
        }
    }
}

/// `push.broadcast`: one batch of a broadcast's audience (a tag's or a segment's members).
struct BroadcastJobs: JobHandler {
    let broadcasts: Broadcasts

    func run(_ jobs: [Job]) async -> [JobOutcome] {
        await PushJobs.each(jobs) { job in
            guard let id = job.payload["broadcastId"]?.int, let cursor = job.payload["after"]?.int else {
                return .fail(error: "push.broadcast job without broadcastId and after")
            }
            do {
                switch try await broadcasts.fanOut(id, after: cursor) {
                case .fannedOut, .notDue: return .done
                case .unknownBroadcast: return .fail(error: "no broadcast \(id)")
                case .templateGone(let template): return .fail(error: "broadcast \(id) names a template that is gone: \(template)")
                case .templateMoved(let app, let owner):
                    return .fail(error: "broadcast \(id) sends template \(app.template) on app \(app.app), but it now belongs to app \(owner)")
                case .segmentGone(let segment): return .fail(error: "broadcast \(id) is for segment \(segment), which is gone")
                case .audienceOutOfOrder: return .fail(error: "the segment audience of broadcast \(id) answered members out of order")
                // A worker deployed without segments wired in leaves the batch to one that has
                // them: a minute apart, its 20 attempts span a rolling deploy's 20 minutes, then
                // the job is kept for an operator.
                case .segmentsUnavailable:
                    return .retry(error: "broadcast \(id) is a segment broadcast and this worker has no segment audience", delay: .seconds(60))
                }
            } catch {
                return .retry(error: "\(error)")
            }
        }
    }
}

/// A job whose payload is an event's attributes: the event fires its triggers.
struct TriggerJobs: JobHandler {
    let triggers: TriggeredPushes

    func run(_ jobs: [Job]) async -> [JobOutcome] {
        await PushJobs.each(jobs) { job in
            do {
                _ = try await triggers.handle(job.envelope())
                return .done
            } catch {
                return .retry(error: "\(error)")
            }
        }
    }
}
