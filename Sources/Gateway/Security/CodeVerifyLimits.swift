import ClientSupport
import HTTPTypes
import Platforms

/// Product-code verifications per member and per client, per minute. A code printed on a product
/// is the only secret a verification needs, so guessing codes is the attack: at the defaults (10 a
/// minute per member, 60 per IP) a member token buys 14,400 guesses a day, against code spaces of
/// 10^12 and more. Refused attempts cost nothing from the other bucket.
final class CodeVerifyLimits: Sendable {
    private let perMember: TokenBuckets.Limit?
    private let perIP: TokenBuckets.Limit?
    private let buckets = TokenBuckets()

    init(perMember: Int, perIP: Int) {
        self.perMember = .perMinute(perMember)
        self.perIP = .perMinute(perIP)
    }

    func allows(member: Int64, ip: String) -> Bool {
        let key = IPAddress(ip)?.limitKey ?? ip
        return buckets.take(perMember.map { ("m:\(member)", $0) }, perIP.map { ("i:" + key, $0) }) == .allowed
    }
}

/// `POST /v1/events`' headers, checked for format and size before anything is looked up or hashed.
enum ServerEventHeaders {
    /// The app id, the timestamp text (as signed) and the signature's 32 bytes.
    static func check(_ headers: HTTPFields) throws(GatewayError) -> (app: String, timestamp: String, signature: [UInt8]) {
        guard let appID = headers[.fanflowApp], !appID.isEmpty else {
            throw GatewayError.unauthorized(.missingApp, "X-FanFlow-App is required")
        }
        // The admin API accepts 1-64 characters of [A-Za-z0-9_.-] for an app id: nothing else can be registered.
        guard AppIDShape.isValid(appID) else {
            throw GatewayError.badRequest(.invalidApp, "X-FanFlow-App must be \(AppIDShape.rule)")
        }
        guard let timestamp = headers[.fanflowTimestamp], let signature = headers[.fanflowSignature] else {
            throw GatewayError.unauthorized(.missingSignature, "X-FanFlow-Timestamp and X-FanFlow-Signature are required")
        }
        // Unix seconds or milliseconds: at most 13 digits.
        guard (1...13).contains(timestamp.utf8.count), timestamp.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }) else {
            throw GatewayError.badRequest(.missingTimestamp, "X-FanFlow-Timestamp must be unix seconds or milliseconds")
        }
        guard signature.utf8.count == 71, signature.hasPrefix("sha256="), let received = Bytes.fromHex(signature.dropFirst(7)),
              received.count == 32 else {
            throw GatewayError.unauthorized(.badSignature, "X-FanFlow-Signature must be sha256=<64 hex digits>")
        }
        return (appID, timestamp, received)
    }
}
