import Contracts

/// A member as one platform app knows them.
public struct Identity: Sendable, Hashable {
    public let platform: Platform
    public let app: String
    public let openid: String
    public init(platform: Platform, app: String, openid: String) {
        self.platform = platform
        self.app = app
        self.openid = openid
    }
}

extension Envelope {
    /// The subject as an openid on a platform app that issues them; nil for a member token's
    /// subject (``tokenMember``) and for beacons, whose openid names no platform app.
    public var platformIdentity: Identity? {
        guard tokenMember == nil, let openid = subject.openid, !openid.isEmpty,
              [.wechat, .alipay, .weibo, .qq].contains(platform) else { return nil }
        return Identity(platform: platform, app: app, openid: openid)
    }

    /// The member a verified subject names by id (a beacon with a member token: the gateway puts
    /// the token's member there and nothing else). An unverified subject's member id is ignored.
    public var tokenMember: Int64? {
        guard subject.verified, let member = subject.memberId, member > 0 else { return nil }
        return member
    }
}
