import Contracts
import Foundation

/// Which event sends which template (`PUT /admin/v1/push-triggers/{code}`): an event by its
/// routing key (`wechat.subscribe`, `fanflow.member.level_changed`, …), optionally only when some
/// of its attributes have given values (`{"scene": "store-42"}`, the QR scene of a subscribe).
///
/// For one event at most one trigger fires: the matching one with the most conditions (ties by
/// code). So a welcome for a store's QR code replaces the general welcome instead of adding to it.
public struct PushTrigger: Sendable, Equatable {
    public var code: String
    public var event: String
    public var conditions: [String: String]
    public var template: String
    public var enabled: Bool

    public init(code: String, event: String, conditions: [String: String] = [:], template: String, enabled: Bool = true) {
        self.code = code
        self.event = event
        self.conditions = conditions
        self.template = template
        self.enabled = enabled
    }

    /// A flash-sale reservation's payment reminder, due 5 minutes before its pay-by time: the
    /// routing key of the reminder job's event (the job kind `push.flashsale_reminder` of platform
    /// `fanflow`). It fires only while the reservation still waits for its payment.
    public static let paymentReminderEvent = "fanflow.push.flashsale_reminder"

    /// The events pushes are triggered by (the push queue's bindings, and the reminder jobs the
    /// push worker runs), with what each one carries for templates beside the member's own fields.
    public static let events: [String: String] = [
        "wechat.subscribe": "scene (the QR scene, when the follow came through one)",
        "alipay.subscribe": "nothing beyond the member's fields (a follow of the Alipay service window)",
        "fanflow.member.level_changed": "level, previousLevel",
        "fanflow.flashsale.reserved": "saleId, campaign, quantity, amount, amountYuan, payBy, reservationId",
        paymentReminderEvent: "the reservation's fields, 5 minutes before its pay-by time while unpaid",
        "fanflow.points.granted": "points (granted), balance",
        "fanflow.points.matured": "points (matured), balance",
    ]

    public struct Problem: Error, Sendable, Equatable, CustomStringConvertible {
        public let description: String
        init(_ description: String) { self.description = description }
    }

    static let bodyFields: Set<String> = ["event", "when", "template", "enabled", "code"]

    public static func parse(code: String, json: [UInt8]) throws(Problem) -> PushTrigger {
        guard PushTemplate.isValidCode(code) else { throw Problem("code must be 1-64 characters of [A-Za-z0-9._-]") }
        guard case .object(let body)? = try? JSONValue.parse(json) else { throw Problem("body must be a JSON object") }
        if let unknown = body.keys.sorted().first(where: { !bodyFields.contains($0) }) { throw Problem("unknown field \(unknown)") }
        guard let event = body["event"]?.string, events[event] != nil else {
            throw Problem("event must be one of \(events.keys.sorted().joined(separator: ", "))")
        }
        guard let template = body["template"]?.string, PushTemplate.isValidCode(template) else { throw Problem("template must be a template's code") }
        var conditions: [String: String] = [:]
        switch body["when"] {
        case nil, .null?: break
        case .object(let when)?:
            for (name, value) in when {
                switch value {
                case .string(let text): conditions[name] = text
                case .integer(let number): conditions[name] = String(number)
                case .bool(let flag): conditions[name] = String(flag)
                default: throw Problem("when.\(name) must be a string, integer or boolean")
                }
            }
        default: throw Problem("when must be an object of attribute values")
        }
        let enabled: Bool
        switch body["enabled"] {
        case nil: enabled = true
        case .bool(let flag)?: enabled = flag
        default: throw Problem("enabled must be a boolean")
        }
        return PushTrigger(code: code, event: event, conditions: conditions, template: template, enabled: enabled)
    }

    /// Whether this trigger fires for `envelope`.
    public func matches(_ envelope: Envelope) -> Bool {
        guard enabled, envelope.routingKey == event else { return false }
        return conditions.allSatisfy { name, expected in
            switch envelope.attributes[name] {
            case .string(let value)?: return value == expected
            case .integer(let value)?: return String(value) == expected
            case .bool(let value)?: return String(value) == expected
            case .number(let value)?: return Double(expected) == value
            default: return false
            }
        }
    }

    /// The trigger that fires for `envelope` among `triggers`, if any.
    public static func firing(_ triggers: [PushTrigger], for envelope: Envelope) -> PushTrigger? {
        triggers.filter { $0.matches(envelope) }.min { a, b in
            a.conditions.count != b.conditions.count ? a.conditions.count > b.conditions.count : a.code < b.code
        }
    }

    public var json: [String: JSONValue] {
        ["code": .string(code), "event": .string(event), "when": .object(conditions.mapValues(JSONValue.string)),
         "template": .string(template), "enabled": .bool(enabled)]
    }
}
