import Contracts
import Foundation
import Jobs
import Logging
import Platforms

/// What one attempt at a push came to.
public enum SendOutcome: Sendable, Equatable {
    /// The platform took it; `messageID` is WeChat's `msgid` (for the receipt), nil on Alipay.
    case sent(messageID: Int64?)
    /// Not sent and never retried: `status` is ``PushStatus/unsubscribed``,
    /// ``PushStatus/userBlock`` or ``PushStatus/refused``.
    case refused(PushStatus, detail: String)
    /// A quota is spent (ours, or the platform's 45009 or Alipay's limit): `deferred`, with the
    /// next attempt's job due at `until`, just after the quota resets.
    case deferred(until: Date, reason: String)
    /// A transient failure (network, 5xx, -1, 20000) with attempts left: `pending`, attempt
    /// `attempt` due at `at`.
    case retryScheduled(attempt: Int, at: Date, reason: String)
    /// The last attempt failed transiently: `dead` with the error. An outcome, not a dead letter.
    case dead(error: String)
    /// The push does not wait for this attempt (sent, being sent, cancelled, dead, or the attempt
    /// was made by an earlier delivery of the same job or message): nothing was done.
    case alreadySettled
    /// No push has this id.
    case unknownPush
}

/// What a platform receipt changed.
public enum ReceiptOutcome: Sendable, Equatable {
    /// The push with that message id now has `status`.
    case recorded(PushStatus)
    /// No push has that message id (a message FanFlow did not send, or not recorded yet).
    case unknownMessage
}

/// Sends pushes, one attempt at a time, and records what became of each.
///
/// An attempt *claims* the push for its attempt number first (`sending`, attempts + 1), so a
/// redelivered job or message, or a second worker, sends nothing; then waits for the app's pace;
/// then calls the platform once (``PushSender``) and records the outcome. Where the outcome calls
/// for another attempt (a spent quota, a transient failure), that attempt's job is written in the
/// same transaction as the outcome, so a push left `pending` or `deferred` always has the job that
/// will send it. A worker killed during the platform call leaves the push `sending`: sent at most
/// once, at the price of not knowing whether that one call arrived.
public struct PushDelivery: Sendable {
    /// When a failed attempt is tried again, and how often.
    public struct RetryPolicy: Sendable, Equatable {
        /// Attempts in all, the first included: 6 at a 2 s base spread the 5 retries over 31 s to
        /// 62 s (2 + 4 + 8 + 16 + 32 at full jitter's ceiling, half that at its floor), so a
        /// platform outage shorter than half a minute costs no push.
        public var maxAttempts: Int = 6
        /// Attempt n + 1 is due `base × 2^n × [0.5, 1]` after attempt n failed (full jitter:
        /// workers that failed together do not come back together).
        public var baseBackoffSeconds: Double = 2
        /// Deferred pushes are spread over this many seconds past the quota's reset (midnight
        /// Beijing time), so a day's backlog does not hit the platform in one second.
        public var deferralSpreadSeconds: Double = 600

        public init(maxAttempts: Int = 6, baseBackoffSeconds: Double = 2, deferralSpreadSeconds: Double = 600) {
            self.maxAttempts = max(1, maxAttempts)
            self.baseBackoffSeconds = max(0, baseBackoffSeconds)
            self.deferralSpreadSeconds = max(0, deferralSpreadSeconds)
        }

        /// When attempt `next` (1 for the first retry) is due after a failure at `now`.
        func retryDue(next: Int, now: Date, random: Double = Double.random(in: 0.5...1.0)) -> Date {
            now.addingTimeInterval(baseBackoffSeconds * pow(2, Double(min(max(next - 1, 0), 30))) * random)
        }

        /// When a push deferred at `resetsAt` is tried again.
        func deferralDue(_ resetsAt: Date) -> Date {
            resetsAt.addingTimeInterval(Double.random(in: 0...deferralSpreadSeconds))
        }
    }

    let store: PushStore
    let sender: PushSender
    /// The pace every attempt waits for (also what a push job runner sizes its batches by).
    public let pace: PushPace
    let policy: RetryPolicy
    let logger: Logger

    public init(store: PushStore, sender: PushSender, pace: PushPace, policy: RetryPolicy = .init(), logger: Logger) {
        self.store = store
        self.sender = sender
        self.pace = pace
        self.policy = policy
        self.logger = logger
    }

    /// Attempt `attempt` (0: the first) of a stored push, as its job or a retry message asks.
    public func retry(pushID id: String, attempt: Int) async throws -> SendOutcome {
        guard let push = try await store.push(id) else { return .unknownPush }
        // Its outcome is recorded already (a redelivered last job after the push died): nothing to send.
        if push.status == .dead { return .alreadySettled }
        // The claim admits only the attempt this job was made for: a redelivered job sends nothing.
        return try await self.attempt(id: id, platform: push.platform, app: push.app, openid: push.openid, message: push.message,
                                      attempt: attempt)
    }

    /// One attempt, `attempt` earlier ones having failed; the outcome recorded and, where it says
    /// so, the next attempt's job written with it.
    func attempt(id: String, platform: String, app: String, openid: String, message: RenderedMessage, attempt: Int) async throws -> SendOutcome {
        guard try await store.claim(id, attempt: attempt) else { return .alreadySettled }
        let admission: PushPace.Admission
        do { admission = try await pace.admit(app: app) } catch {
            // The platform was not called (Redis failed, or the wait was cancelled): the claim is
            // given back, so the job or message retried for this attempt sends it instead of
            // finding it `sending` for ever.
            try? await store.unclaim(id, attempt: attempt)
            throw error
        }
        if case .quotaSpent(let resetsAt) = admission {
            let due = policy.deferralDue(resetsAt)
            await count(.deferred, app: app)
            try await store.record(id, status: .deferred, error: "daily quota spent", next: PushJobs.attempt(id, attempt: attempt + 1, at: due))
            return .deferred(until: due, reason: "daily quota spent")
        }
        let outcome = platform == Platform.alipay.rawValue
            ? await sender.sendAlipayTemplate(app: app, message.alipayMessage(to: openid))
            : await sender.sendTemplate(app: app, message.templateMessage(to: openid))
        switch outcome {
        case .sent(let messageID):
            await count(.sent, app: app)
            try await store.record(id, status: .sent, messageID: messageID)
            return .sent(messageID: messageID)
        case .refused(let status, let detail):
            await count(PushStats.Outcome(refusal: status), app: app)
            try await store.record(id, status: status, error: detail)
            return .refused(status, detail: detail)
        case .deferred(let reason):
            let due = policy.deferralDue(BeijingTime.nextMidnight(after: Date()))
            await count(.deferred, app: app)
            try await store.record(id, status: .deferred, error: reason, next: PushJobs.attempt(id, attempt: attempt + 1, at: due))
            return .deferred(until: due, reason: reason)
        case .retry(let reason):
            guard attempt + 1 < policy.maxAttempts else {
                await count(.dead, app: app)
                try await store.record(id, status: .dead, error: reason)
                logger.error("push dead after its last attempt", metadata: ["push": "\(id)", "attempts": "\(attempt + 1)", "error": "\(reason)"])
                return .dead(error: reason)
            }
            let due = policy.retryDue(next: attempt + 1, now: Date())
            await count(.retried, app: app)
            try await store.record(id, status: .pending, error: reason, next: PushJobs.attempt(id, attempt: attempt + 1, at: due))
            return .retryScheduled(attempt: attempt + 1, at: due, reason: reason)
        }
    }

    /// Today's outcome counts in Redis (`GET /admin/v1/push-stats`). A count that cannot be written
    /// is logged, not thrown: the push's own outcome is recorded in PostgreSQL.
    func count(_ outcome: PushStats.Outcome, app: String) async {
        do { try await pace.stats.record(app: app, outcome: outcome) } catch {
            logger.warning("push outcome not counted", metadata: ["app": "\(app)", "outcome": "\(outcome.rawValue)", "error": "\(error)"])
        }
    }

    /// WeChat's `TEMPLATESENDJOBFINISH` for message `messageID` of `app`, whose `Status` was
    /// `reported` (``PushStatus/init(receipt:)``).
    public func receipt(app: String, messageID: Int64, reported: String) async throws -> ReceiptOutcome {
        let status = PushStatus(receipt: reported)
        guard try await store.receipt(app: app, messageID: messageID, status: status) else {
            logger.info("receipt for a message FanFlow did not send (or not recorded yet)", metadata: ["msgId": "\(messageID)"])
            return .unknownMessage
        }
        return .recorded(status)
    }
}
