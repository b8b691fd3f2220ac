/// The kind of an event, as a stable wire string (`subscribe`, `community.post`, …).
///
/// An open set: platforms add event types we have not seen, and those pass through under their
/// own name in the platform's namespace (``passthrough(_:platform:message:)``) rather than being
/// dropped. The well-known kinds are named here once.
public struct EventKind: RawRepresentable, Codable, Sendable, Hashable, CustomStringConvertible,
    ExpressibleByStringLiteral {
    public let rawValue: String

    public init(rawValue: String) { self.rawValue = rawValue }
    public init(_ rawValue: String) { self.rawValue = rawValue }
    public init(stringLiteral value: String) { self.rawValue = value }

    public init(from decoder: any Decoder) throws {
        rawValue = try decoder.singleValueContainer().decode(String.self)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }

    public var description: String { rawValue }

    // Platform messages and events (WeChat names; other platforms map onto them where they mean the same).
    public static let subscribe: EventKind = "subscribe"
    public static let unsubscribe: EventKind = "unsubscribe"
    public static let scan: EventKind = "scan"
    public static let click: EventKind = "click"
    public static let view: EventKind = "view"
    public static let location: EventKind = "location"
    public static let templateSendJobFinish: EventKind = "templatesendjobfinish"
    public static let text: EventKind = "message.text"
    public static let image: EventKind = "message.image"
    public static let voice: EventKind = "message.voice"
    public static let video: EventKind = "message.video"
    public static let locationMessage: EventKind = "message.location"
    public static let link: EventKind = "message.link"

    // Business events from the brand's systems (`/v1/events`).
    public static let memberCheckin: EventKind = "member.checkin"
    public static let memberRegistered: EventKind = "member.registered"
    /// A phone number the brand verified (SMS) for the member: merges members who share it.
    public static let memberPhoneBound: EventKind = "member.phone_bound"
    /// Profile fields the brand's systems know (gender, city, birthday…), as the event's attributes:
    /// kept as the member's profile attributes, the newest event winning.
    public static let memberProfileUpdated: EventKind = "member.profile_updated"
    public static let communityPost: EventKind = "community.post"
    public static let communityComment: EventKind = "community.comment"
    public static let communityShare: EventKind = "community.share"
    public static let communityLike: EventKind = "community.like"
    public static let orderPaid: EventKind = "mall.order_paid"
    public static let orderDelivered: EventKind = "mall.order_delivered"
    public static let orderRefunded: EventKind = "mall.order_refunded"
    public static let codeVerified: EventKind = "code.verified"

    // H5 beacons.
    public static let pageView: EventKind = "page_view"
    public static let dwell: EventKind = "dwell"
    public static let beaconClick: EventKind = "click"
    public static let share: EventKind = "share"

    // Emitted by FanFlow.
    public static let levelChanged: EventKind = "member.level_changed"
    /// Points a member earned from one event, every rule's share summed.
    public static let pointsGranted: EventKind = "points.granted"
    /// Purchase points that matured after their pending period.
    public static let pointsMatured: EventKind = "points.matured"

    /// A platform's own event or message name as a kind, in that platform's namespace:
    /// `<platform>.event.<name>` or `<platform>.message.<name>` (WeChat's `user_get_card` becomes
    /// `wechat.event.user_get_card`, routed as `wechat.wechat.event.user_get_card`). The name is
    /// lower-cased, anything but `[a-z0-9_]` becomes `_`, and it is cut at 64 bytes. Business kinds
    /// may not begin with a platform's name (``InputLimits/isBusinessKind(_:)``), so a platform
    /// event named `member.checkin` can never pass for the brand's `member.checkin`, whatever the
    /// platform sends.
    public static func passthrough(_ raw: String, platform: Platform, message: Bool = false) -> EventKind {
        let cleaned = raw.lowercased().unicodeScalars.prefix(64).map { c -> Character in
            (c >= "a" && c <= "z") || (c >= "0" && c <= "9") || c == "_" ? Character(c) : "_"
        }
        return EventKind(platform.rawValue + (message ? ".message." : ".event.") + (cleaned.isEmpty ? "unknown" : String(cleaned)))
    }
}
