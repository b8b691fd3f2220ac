import Audiences
import Runtime
import Contracts
import FlashSales
import Foundation
import Jobs
import Logging
import Loyalty
import Members
import PostgresClient
import Pushes

/// The push queue's consumer (`fanflow worker --pool push=N`), a thin adapter of ``PushService``:
/// events on `fanflow.push` fire their triggers (follows, points, level changes, flash-sale
/// reservations), and `wechat.templatesendjobfinish` receipts set a push's final status. What
/// becomes of each push is the service's (``SendOutcome``); this only routes and maps refusals.
///
/// The push job kinds (`push.retry`, `push.send`, `push.broadcast`, `push.flashsale_reminder`) run
/// in the same worker, from the jobs table (``jobs(_:runners:limit:)``), not through this queue.
public struct PushPool: EnvelopeProcessor {
    static let receiptKey = "wechat.templatesendjobfinish"
    /// Jobs an older scheduler published to the broker instead of leaving them to the push
    /// worker. Still handled: see ``handle(_:)``.
    static let retryKey = PushJobs.routingKey(PushJobs.retry)
    static let sendKey = PushJobs.routingKey(PushJobs.send)
    static let broadcastKey = PushJobs.routingKey(PushJobs.broadcast)

    let service: PushService
    let logger: Logger

    public init(service: PushService, logger: Logger) {
        self.service = service
        self.logger = logger
    }

    public func process(_ events: [Envelope]) async throws {
        // Every event runs to its end, even when another fails: a send cut short by a sibling's
        // error would leave a push whose outcome nobody recorded.
        let failures = await withTaskGroup(of: (any Error)?.self) { group in
            for event in events {
                group.addTask {
                    do { try await self.handle(event) } catch { return error }
                    return nil
                }
            }
            return await group.reduce(into: [any Error]()) { if let error = $1 { $0.append(error) } }
        }
        if let refused = failures.first(where: { $0 is EventRefused }) { throw refused }
        if let failure = failures.first { throw failure }
    }

    func handle(_ event: Envelope) async throws {
        switch event.routingKey {
        case Self.receiptKey:
            try await receipt(event)
        // Upgrade path: a scheduler from before push jobs ran in the push worker published
        // `fanflow.push.retry`, `.send`, `.broadcast` and `.flashsale_reminder` here, and the queue
        // (binding `fanflow.push.#`, durable) still holds what it published before it was
        // replaced; during a rolling deploy an old scheduler may still be publishing. Dropping them
        // would lose those retries, batches and reminders: their jobs are already `done`. They
        // are handled as the jobs would be, and as idempotently (an attempt's claim, the
        // broadcast's cursor, the push id `<trigger>:fanflow:job:<id>`), so a job published and
        // also run here sends once.
        case Self.retryKey, Self.sendKey:
            try await legacyAttempt(event)
        case Self.broadcastKey:
            try await legacyBroadcastBatch(event)
        default:
            // Triggers, the reminder's included (``PushTrigger/paymentReminderEvent``).
            _ = try await service.triggers.handle(event)
        }
    }

    func receipt(_ event: Envelope) async throws {
        guard let text = event.attributes["msgId"]?.string ?? event.attributes["msgId"]?.int.map(String.init), let messageID = Int64(text) else {
            return
        }
        _ = try await service.delivery.receipt(app: event.app, messageID: messageID, reported: event.attributes["status"]?.string ?? "")
    }

    func legacyAttempt(_ event: Envelope) async throws {
        guard let id = event.attributes["pushId"]?.string, let number = event.attributes["pushAttempt"]?.int,
              let attempt = Int(exactly: number), attempt >= 0 else {
            throw EventRefused("push retry without pushId and pushAttempt: \(event.id)")
        }
        if case .unknownPush = try await service.delivery.retry(pushID: id, attempt: attempt) {
            throw EventRefused("push retry for an unknown push \(id)")
        }
    }

    func legacyBroadcastBatch(_ event: Envelope) async throws {
        guard let id = event.attributes["broadcastId"]?.int, let cursor = event.attributes["after"]?.int else {
            throw EventRefused("broadcast batch without broadcastId and after: \(event.id)")
        }
        if case .templateGone(let template) = try await service.broadcasts.fanOut(id, after: cursor) {
            throw EventRefused("broadcast \(id) names a template that is gone: \(template)")
        }
    }
}

extension PushPool {
    /// The push service as the push worker runs it: members made through the loyalty program's
    /// directory, reservations read from flash sales' orders.
    public static func service(database: PostgresPool, sender: PushSender, pace: PushPace, logger: Logger,
                               policy: PushDelivery.RetryPolicy = .init(), broadcastBatch: Int = 1000) -> PushService {
        PushService(store: PushStore(database: database), sender: sender, pace: pace,
                    members: DirectoryMembers(directory: MemberDirectory(database: database)),
                    reservations: OrderPayments(store: FlashSaleStore(database: database)), logger: logger, policy: policy,
                    broadcastBatch: broadcastBatch, audience: SegmentAudience(store: SegmentStore(database: database) {
                        try await RuleStore(database: database).levels().levels.map(\.name)
                    }))
    }

    /// The job kinds the push worker runs: Pushes' own and flash sales' payment reminder (an event
    /// for the reminder trigger), by `runners` runners claiming at most `limit` jobs a batch.
    ///
    /// A batch's sends all wait for their app's pace at once, so the batch is the concurrency, as
    /// a consumer's prefetch is for the queue (`--prefetch`, the `limit` given). It is also capped
    /// at what the pace lets one app send in half the lease (``PushPace/sends(within:)``): a runner
    /// records a batch's outcomes only when all of it is done, and a batch of one app's sends still
    /// waiting for the pace when its lease ends is taken back and run by another runner as well
    /// (each push's claim keeps it from going twice, but the first runner's outcomes are lost and
    /// twice the sends wait on the bucket). At the default 50/s that cap is 1,500, above the
    /// default prefetch of 500; it bites below 17/s.
    public static func jobs(_ service: PushService, runners: Int, limit: Int) -> PoolJobs {
        var jobs = PoolJobs(pool: .push, handlers: PushJobs.handlers(service, triggering: [FlashSaleStore.reminderJob]), runners: runners)
        jobs.batchSize = max(1, min(limit, service.delivery.pace.sends(within: jobs.lease / 2) ?? limit))
        return jobs
    }
}

/// The loyalty program's member directory, as pushes need it.
struct DirectoryMembers: PushMembers {
    let directory: MemberDirectory

    func member(platform: Platform, app: String, openid: String, unionid: String?) async throws -> Int64 {
        try await directory.resolve(Identity(platform: platform, app: app, openid: openid), unionid: unionid)
    }
}

/// Flash sales' orders, as the payment reminder needs them.
struct OrderPayments: ReservationPayments {
    let store: FlashSaleStore

    func awaitingPayment(_ reservationID: String) async throws -> Bool { try await store.awaitingPayment(reservationID) }
}
