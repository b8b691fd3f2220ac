import Contracts
import FlashSales
import Foundation
import Jobs
import Logging
import Loyalty
import Members
import Platforms
import Pushes
import Synchronization

/// The push pool (`fanflow worker --pool push=N`): events on `fanflow.push` become template
/// messages, sent once, at the app's pace, with what became of each recorded in `pushes`.
///
/// - An event a trigger fires for: the template is rendered for the member and stored with the
///   push (id `<trigger>:<event id>`, so a redelivery sends nothing twice), then sent.
/// - `fanflow.push.retry` (a scheduler job the pool enqueued): the stored message is sent again,
///   if the push still waits for exactly that attempt.
/// - `wechat.templatesendjobfinish`: the platform's receipt sets the push's final status.
///
/// Outcomes follow ``PushSender``: sent; refused (43004 unsubscribed, 43101 blocked, other
/// refusals) never retried; deferred (quota) until the quota resets; a transient failure retried
/// with exponential backoff and jitter, and after `maxAttempts` the push is `dead` with its last
/// error (`GET /admin/v1/pushes?status=dead`) and its retry message is acked: a dead push is an
/// outcome, like a refused one, not a dead letter (replaying it would send nothing, and a platform
/// outage would otherwise fill `dead_letters` and page with `FanFlowDeadLetters`).
public struct PushPool: EnvelopeProcessor {
    static let retryKey = PushJobs.routingKey(PushJobs.retry)
    static let sendKey = PushJobs.routingKey(PushJobs.send)
    static let broadcastKey = PushJobs.routingKey(PushJobs.broadcast)
    static let reminderKey = PushJobs.routingKey(FlashSaleStore.reminderJob)
    static let receiptKey = "wechat.templatesendjobfinish"
    let broadcastBatch: Int

    let store: PushStore
    let sender: PushSender
    let pace: PushPace
    let jobs: JobStore
    let orders: FlashSaleStore
    let members: MemberDirectory
    let catalog: PushCatalog
    let logger: Logger
    let maxAttempts: Int
    let baseBackoff: Double

    public init(store: PushStore, sender: PushSender, pace: PushPace, jobs: JobStore, logger: Logger, maxAttempts: Int = 6,
                baseBackoffSeconds: Double = 2, broadcastBatch: Int = 1000) {
        self.broadcastBatch = broadcastBatch
        self.store = store
        self.sender = sender
        self.pace = pace
        self.jobs = jobs
        self.orders = FlashSaleStore(database: store.database)
        self.members = MemberDirectory(database: store.database)
        self.catalog = PushCatalog(store: store)
        self.logger = logger
        self.maxAttempts = maxAttempts
        self.baseBackoff = baseBackoffSeconds
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
        case Self.receiptKey: try await receipt(event)
        case Self.retryKey, Self.sendKey: try await retry(event)
        case Self.broadcastKey: try await fanOut(event)
        default: try await trigger(event)
        }
    }

    // MARK: Triggered pushes

    /// Each app's most specific trigger for `event` fires: a platform event (a follow) only on its own
    /// app, a FanFlow event (a level change) on every app whose templates a trigger names.
    func trigger(_ event: Envelope) async throws {
        if event.routingKey == Self.reminderKey {
            guard let reservation = event.attributes["reservationId"]?.string, try await orders.awaitingPayment(reservation) else { return }
        }
        var byApp: [String: [(PushTrigger, PushTemplate)]] = [:]
        for trigger in try await catalog.triggers() where trigger.matches(event) {
            guard let template = try await catalog.template(trigger.template) else {
                logger.error("a trigger names a template that is gone", metadata: ["trigger": "\(trigger.code)", "template": "\(trigger.template)"])
                continue
            }
            if event.platform != .fanflow, event.platform.rawValue != template.platform || event.app != template.app { continue }
            byApp[template.app, default: []].append((trigger, template))
        }
        for candidates in byApp.values {
            guard let trigger = PushTrigger.firing(candidates.map(\.0), for: event),
                  let template = candidates.first(where: { $0.0.code == trigger.code })?.1 else { continue }
            try await fire(trigger, template, for: event)
        }
    }

    func fire(_ trigger: PushTrigger, _ template: PushTemplate, for event: Envelope) async throws {
        guard let recipient = try await recipient(of: event, on: template) else {
            logger.info("no recipient on the template's app; not sent",
                        metadata: ["event": "\(event.id)", "trigger": "\(trigger.code)", "app": "\(template.app)"])
            return
        }
        let message = template.render(Self.values(event, recipient))
        let push = PushStore.NewPush(id: "\(trigger.code):\(event.id)", member: recipient.member, platform: template.platform,
                                     app: template.app, openid: recipient.openid, template: template.code, trigger: trigger.code,
                                     message: message)
        try await store.begin(push)
        try await attempt(id: push.id, platform: push.platform, app: push.app, openid: push.openid, message: message, attempt: 0)
    }

    func recipient(of event: Envelope, on template: PushTemplate) async throws -> PushStore.Recipient? {
        if let member = event.attributes["memberId"]?.int {
            return try await store.recipient(member: member, platform: template.platform, app: template.app)
        }
        guard event.platform.rawValue == template.platform, event.app == template.app, let openid = event.subject.openid else { return nil }
        // A new follower's welcome usually runs before the pipeline has seen them: the member is
        // made here (concurrent first sightings end in one member), so the push is theirs too.
        let member = try await members.resolve(Identity(platform: event.platform, app: event.app, openid: openid),
                                               unionid: event.subject.unionid)
        return try await store.recipient(member: member, platform: template.platform, app: template.app)
    }

    /// What a template may name (``PushTemplate/names``), from the member and the event.
    static func values(_ event: Envelope, _ recipient: PushStore.Recipient) -> [String: String] {
        var values: [String: String] = [
            "nickname": recipient.nickname, "openid": recipient.openid, "memberId": recipient.member.map(String.init) ?? "",
            "balance": String(recipient.balance), "growth": String(recipient.growth), "level": recipient.level,
            "event": event.kind.rawValue, "occurredAt": BeijingTime.minutes(event.occurredAt),
        ]
        let a = event.attributes
        func text(_ name: String) -> String? {
            switch a[name] {
            case .string(let value)?: return value
            case .integer(let value)?: return String(value)
            case .number(let value)?: return String(value)
            default: return nil
            }
        }
        for name in ["scene", "points", "saleId", "sku", "quantity", "reservationId"] { if let value = text(name) { values[name] = value } }
        if let to = text("to") { values["level"] = to }
        if let from = text("from") { values["previousLevel"] = from }
        if let campaign = text("title") ?? text("saleId") { values["campaign"] = campaign }
        if let amount = a["amount"]?.int {
            values["amount"] = String(amount)
            values["amountYuan"] = String(format: "%d.%02d", amount / 100, amount % 100)
        }
        if let payBy = text("payBy").flatMap(RFC3339.parse) { values["payBy"] = BeijingTime.minutes(payBy) }
        // Unknown stays absent rather than empty, so `{{^nickname}}…{{/nickname}}` can stand in for it.
        return values.filter { !$0.value.isEmpty }
    }

    // MARK: Sending

    /// One attempt, `attempt` earlier ones having failed; the outcome recorded and, where it says
    /// so, a retry scheduled. Throws ``EventRefused`` when the push is dead, so a retry message
    /// goes to the dead-letter queue.
    func attempt(id: String, platform: String, app: String, openid: String, message: RenderedMessage, attempt: Int) async throws {
        guard try await store.claim(id, attempt: attempt) else { return }
        pacing: while true {
            switch try await pace.take(app: app) {
            case .go:
                break pacing
            case .wait(let milliseconds):
                try await Task.sleep(for: .milliseconds(max(1, milliseconds)))
            case .quotaSpent(let resetsAt):
                await count("deferred", app: app)
                try await store.record(id, status: "deferred", error: "daily quota spent")
                try await scheduleRetry(id, attempt: attempt + 1, at: resetsAt.addingTimeInterval(Double.random(in: 0...600)))
                return
            }
        }
        let outcome = platform == Platform.alipay.rawValue
            ? await sender.sendAlipayTemplate(app: app, message.alipayMessage(to: openid))
            : await sender.sendTemplate(app: app, message.templateMessage(to: openid))
        switch outcome {
        case .sent(let messageID):
            await count("sent", app: app)
            try await store.record(id, status: "sent", messageID: messageID)
        case .refused(let status, let detail):
            await count(status, app: app)
            try await store.record(id, status: status, error: detail)
        case .deferred(let reason):
            await count("deferred", app: app)
            try await store.record(id, status: "deferred", error: reason)
            try await scheduleRetry(id, attempt: attempt + 1,
                                    at: BeijingTime.nextMidnight(after: Date()).addingTimeInterval(Double.random(in: 0...600)))
        case .retry(let reason):
            guard attempt + 1 < maxAttempts else {
                await count("dead", app: app)
                try await store.record(id, status: "dead", error: reason)
                logger.error("push dead after its last attempt", metadata: ["push": "\(id)", "attempts": "\(attempt + 1)", "error": "\(reason)"])
                return
            }
            await count("retried", app: app)
            try await store.record(id, status: "pending", error: reason)
            // Exponential, with full jitter: workers that failed together do not come back together.
            let delay = baseBackoff * pow(2, Double(attempt)) * Double.random(in: 0.5...1.0)
            try await scheduleRetry(id, attempt: attempt + 1, at: Date().addingTimeInterval(delay))
        }
    }

    /// Today's outcome counts in Redis (`GET /admin/v1/push-stats`). A count that cannot be written
    /// is logged, not thrown: the push's own outcome is already recorded in PostgreSQL.
    func count(_ outcome: String, app: String) async {
        do { try await pace.stats.record(app: app, outcome: outcome) } catch {
            logger.warning("push outcome not counted", metadata: ["app": "\(app)", "outcome": "\(outcome)", "error": "\(error)"])
        }
    }

    func scheduleRetry(_ id: String, attempt: Int, at due: Date) async throws {
        try await jobs.enqueue(PushJobs.attempt(id, attempt: attempt, at: due))
    }

    func retry(_ event: Envelope) async throws {
        guard let id = event.attributes["pushId"]?.string, let attempt = event.attributes["pushAttempt"]?.int else {
            throw EventRefused("push retry without pushId and pushAttempt: \(event.id)")
        }
        guard let push = try await store.push(id) else { throw EventRefused("push retry for an unknown push \(id)") }
        // Its outcome is recorded already (a redelivered last job after the push died): nothing to send.
        if push.status == "dead" { return }
        // The claim admits only the attempt this job was made for: a redelivered job sends nothing.
        try await self.attempt(id: id, platform: push.platform, app: push.app, openid: push.openid, message: push.message, attempt: Int(attempt))
    }

    // MARK: Broadcasts

    /// One batch of a broadcast: the next members with its tags get their push rendered and
    /// recorded, with a send job each, and the batch after is scheduled, all in one transaction.
    func fanOut(_ event: Envelope) async throws {
        guard let id = event.attributes["broadcastId"]?.int, let cursor = event.attributes["after"]?.int else {
            throw EventRefused("broadcast batch without broadcastId and after: \(event.id)")
        }
        guard let broadcast = try await store.broadcast(id), broadcast.cursor == cursor,
              broadcast.status == "scheduled" || broadcast.status == "fanning_out" else { return }
        guard let template = try await catalog.template(broadcast.template) else {
            throw EventRefused("broadcast \(id) names a template that is gone: \(broadcast.template)")
        }
        let members = try await store.audience(tags: broadcast.tags, platform: template.platform, app: template.app, after: cursor,
                                               limit: broadcastBatch)
        let now = Date(), fanned = Envelope(id: event.id, platform: .fanflow, app: template.app, kind: "broadcast", subject: .init(),
                                             occurredAt: now, receivedAt: now, attributes: [:])
        let pushes = members.map { member in
            PushStore.NewPush(id: "broadcast:\(id):\(member.member ?? 0)", member: member.member, platform: template.platform, app: template.app,
                              openid: member.openid, template: template.code, trigger: nil,
                              message: template.render(Self.values(fanned, member)))
        }
        _ = try await store.fanOut(broadcast: id, from: cursor, pushes: pushes, more: members.count == broadcastBatch, at: now)
    }

    // MARK: Receipts

    func receipt(_ event: Envelope) async throws {
        guard let text = event.attributes["msgId"]?.string ?? event.attributes["msgId"]?.int.map(String.init), let messageID = Int64(text) else {
            return
        }
        let reported = event.attributes["status"]?.string ?? ""
        let status = reported == "success" ? "delivered" : reported.contains("user block") ? "user_block" : "system_failed"
        if try await !store.receipt(app: event.app, messageID: messageID, status: status) {
            logger.info("receipt for a message FanFlow did not send (or not recorded yet)", metadata: ["msgId": "\(messageID)"])
        }
    }
}

/// Triggers and templates, read from PostgreSQL at most every few seconds: every event the pool
/// sees needs them, and an operator's change shows within `refresh`.
final class PushCatalog: Sendable {
    let store: PushStore
    let refresh: Duration
    private let cache = Mutex<(triggers: [PushTrigger], templates: [String: PushTemplate?], at: ContinuousClock.Instant?)>(([], [:], nil))

    init(store: PushStore, refresh: Duration = .seconds(3)) {
        self.store = store
        self.refresh = refresh
    }

    /// Triggers, and the templates read since, are forgotten together once `refresh` has passed.
    private var isFresh: Bool { cache.withLock { state in state.at.map { ContinuousClock.now - $0 < refresh } == true } }

    func triggers() async throws -> [PushTrigger] {
        if isFresh { return cache.withLock { $0.triggers } }
        let triggers = try await store.triggers()
        cache.withLock { $0 = (triggers, [:], .now) }
        return triggers
    }

    func template(_ code: String) async throws -> PushTemplate? {
        if !isFresh { _ = try await triggers() }
        if let cached = cache.withLock({ $0.templates[code] }) { return cached }
        let template = try await store.template(code)
        cache.withLock { $0.templates[code] = template }
        return template
    }
}
