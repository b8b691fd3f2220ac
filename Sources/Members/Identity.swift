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
