/// Where an event came from. The raw values are the wire names (routing keys, JSON, database):
/// chosen once, never derived from Swift identifiers, so renaming a case changes nothing on the wire.
public enum Platform: String, Codable, Sendable, CaseIterable, Hashable {
    case wechat = "wechat"
    case alipay = "alipay"
    case weibo = "weibo"
    case qq = "qq"
    /// Beacons from the brand's H5 pages.
    case h5 = "h5"
    /// Business events posted by the brand's own systems to `/v1/events`.
    case server = "server"
    /// Events FanFlow itself emits (level changes, grants).
    case fanflow = "fanflow"
}
