import Contracts
import Foundation
import Logging
import Platforms
import Synchronization

/// The push domain as a worker runs it: ``TriggeredPushes`` (an event fires its app's trigger and
/// the push is rendered, stored and sent), ``PushDelivery`` (one attempt at the app's pace, its
/// outcome recorded and, where it says so, the next attempt's job written with it; receipts) and
/// ``Broadcasts`` (a tag's or a segment's members fanned out in batches, each push a send job). Each operation
/// answers an outcome enum; none knows a broker or an HTTP server: the push queue's consumer, the
/// push job handlers (``PushJobs/handlers(_:triggering:)``) and the gateway's admin routes adapt it.
public struct PushService: Sendable {
    public let delivery: PushDelivery
    public let triggers: TriggeredPushes
    public let broadcasts: Broadcasts

    /// `members` makes the member behind a platform follow (a welcome usually arrives before the
    /// points pool has seen the follower); `reservations` says whether a flash-sale reservation
    /// still waits for its payment (a reminder is only for those); `audience` lists a segment's
    /// members for segment broadcasts (nil: their batches wait, ``Broadcasts/BatchOutcome/segmentsUnavailable``).
    public init(store: PushStore, sender: PushSender, pace: PushPace, members: any PushMembers, reservations: any ReservationPayments,
                logger: Logger, policy: PushDelivery.RetryPolicy = .init(), broadcastBatch: Int = 1000,
                audience: (any BroadcastAudience)? = nil) {
        let catalog = PushCatalog(store: store)
        delivery = PushDelivery(store: store, sender: sender, pace: pace, policy: policy, logger: logger)
        triggers = TriggeredPushes(store: store, catalog: catalog, delivery: delivery, members: members, reservations: reservations,
                                   logger: logger)
        broadcasts = Broadcasts(store: store, catalog: catalog, audience: audience, batchSize: broadcastBatch)
    }
}

/// Who a platform identity is, for a push to a follower no other pool has seen yet. The member
/// directory lives with the loyalty program; the push worker hands it in through this.
public protocol PushMembers: Sendable {
    /// The member with this identity, made if there is none (concurrent first sightings end in one).
    func member(platform: Platform, app: String, openid: String, unionid: String?) async throws -> Int64
}

/// Whether a flash-sale reservation still waits for its payment. Flash sales keep the orders; the
/// push worker hands them in through this.
public protocol ReservationPayments: Sendable {
    func awaitingPayment(_ reservationID: String) async throws -> Bool
}

/// Triggers and templates, read from PostgreSQL at most every few seconds: every event the push
/// worker sees needs them, and an operator's change shows within `refresh`.
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

extension PushStore.Recipient {
    /// What a template may name (``PushTemplate/names``), from the member and `event`.
    func templateValues(for event: Envelope) -> [String: String] {
        var values: [String: String] = [
            "nickname": nickname, "openid": openid, "memberId": member.map(String.init) ?? "",
            "balance": String(balance), "growth": String(growth), "level": level,
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
            // Fen to yuan without trapping: an amount is an event's input, so any Int64 arrives here.
            let (yuan, fen) = amount.quotientAndRemainder(dividingBy: 100)
            values["amount"] = String(amount)
            values["amountYuan"] = (amount < 0 ? "-" : "") + "\(yuan.magnitude).\(fen.magnitude < 10 ? "0" : "")\(fen.magnitude)"
        }
        if let payBy = text("payBy").flatMap(RFC3339.parse) { values["payBy"] = BeijingTime.minutes(payBy) }
        // Unknown stays absent rather than empty, so `{{^nickname}}…{{/nickname}}` can stand in for it.
        return values.filter { !$0.value.isEmpty }
    }
}
