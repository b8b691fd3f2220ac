import Contracts
import Foundation
import Logging

/// What an event's triggers did.
public enum TriggerOutcome: Sendable, Equatable {
    /// No enabled trigger matches the event on any app it reaches.
    case noTrigger
    /// A payment reminder (``PushTrigger/paymentReminderEvent``) for a reservation that no longer
    /// waits for its payment (paid, expired, cancelled), or that names none: nothing to remind of.
    case notAwaitingPayment
    /// One trigger fired per app the event reaches, with what became of its push.
    case fired([FiredPush])
}

/// One app's trigger firing for an event.
public struct FiredPush: Sendable, Equatable {
    public let trigger: String
    public let app: String
    public let outcome: Outcome

    public enum Outcome: Sendable, Equatable {
        /// The member has no identity on the template's app: nothing stored, nothing sent.
        case noRecipient
        /// Stored as `pushID` (`<trigger>:<event id>`, so a redelivered event makes no second push)
        /// and attempted.
        case attempted(pushID: String, SendOutcome)
    }
}

/// Events that fire pushes (`PUT /admin/v1/push-triggers/{code}`): each app's most specific trigger
/// for the event renders its template for the member, stores the push with its rendered message,
/// and sends it (``PushDelivery``).
public struct TriggeredPushes: Sendable {
    let store: PushStore
    let catalog: PushCatalog
    let delivery: PushDelivery
    let members: any PushMembers
    let reservations: any ReservationPayments
    let logger: Logger

    /// A platform event (a follow) fires only on its own app; a FanFlow event (a level change) on
    /// every app whose templates a trigger names. A payment reminder fires only while its
    /// reservation still waits for the payment.
    public func handle(_ event: Envelope) async throws -> TriggerOutcome {
        if event.routingKey == PushTrigger.paymentReminderEvent {
            guard let reservation = event.attributes["reservationId"]?.string, try await reservations.awaitingPayment(reservation) else {
                return .notAwaitingPayment
            }
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
        var fired: [FiredPush] = []
        for (app, candidates) in byApp.sorted(by: { $0.key < $1.key }) {
            guard let trigger = PushTrigger.firing(candidates.map(\.0), for: event),
                  let template = candidates.first(where: { $0.0.code == trigger.code })?.1 else { continue }
            fired.append(FiredPush(trigger: trigger.code, app: app, outcome: try await fire(trigger, template, for: event)))
        }
        return fired.isEmpty ? .noTrigger : .fired(fired)
    }

    func fire(_ trigger: PushTrigger, _ template: PushTemplate, for event: Envelope) async throws -> FiredPush.Outcome {
        guard let recipient = try await recipient(of: event, on: template) else {
            logger.info("no recipient on the template's app; not sent",
                        metadata: ["event": "\(event.id)", "trigger": "\(trigger.code)", "app": "\(template.app)"])
            return .noRecipient
        }
        let message = template.render(recipient.templateValues(for: event))
        let push = PushStore.NewPush(id: "\(trigger.code):\(event.id)", member: recipient.member, platform: template.platform,
                                     app: template.app, openid: recipient.openid, template: template.code, trigger: trigger.code,
                                     message: message)
        try await store.begin(push)
        return .attempted(pushID: push.id, try await delivery.attempt(id: push.id, platform: push.platform, app: push.app, openid: push.openid,
                                                                      message: message, attempt: 0))
    }

    func recipient(of event: Envelope, on template: PushTemplate) async throws -> PushStore.Recipient? {
        if let member = event.attributes["memberId"]?.int {
            return try await store.recipient(member: member, platform: template.platform, app: template.app)
        }
        guard event.platform.rawValue == template.platform, event.app == template.app, let openid = event.subject.openid else { return nil }
        // A new follower's welcome usually runs before the points pool has seen them: the member is
        // made here (concurrent first sightings end in one member), so the push is theirs too.
        let member = try await members.member(platform: event.platform, app: event.app, openid: openid, unionid: event.subject.unionid)
        return try await store.recipient(member: member, platform: template.platform, app: template.app)
    }
}
