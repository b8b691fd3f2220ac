import Apps
import Contracts
@preconcurrency import Crypto
import Foundation
import Hummingbird
import Platforms

/// Deterministic event ids: derived from the platform's own keys, so a retried webhook gets the
/// same id and every consumer can dedupe on it. `<platform>:` + 32 hex characters of SHA-256 over
/// the app and the parts, separated by a byte that cannot occur in them (unit separator).
public enum EventID {
    public static func derive(_ platform: Platform, app: String, _ parts: [String]) -> String {
        var hasher = SHA256()
        hasher.update(data: Array(platform.rawValue.utf8))
        for part in [app] + parts {
            hasher.update(data: [0x1F])
            hasher.update(data: Array(part.utf8))
        }
        return platform.rawValue + ":" + Bytes.hex(hasher.finalize().prefix(16))
    }
}

/// Freshness of a platform's timestamp: replay protection the common SDKs leave out.
struct FreshnessWindow: Sendable {
    let seconds: Int

    /// How a platform writes its timestamp. WeChat and Weibo sign the sorted, joined
    /// `[token, timestamp, nonce]`, so the boundary between timestamp and nonce is not signed:
    /// `1765000000` + `4242424242` and `1765000000424` + `2424242` join to the same string. Their
    /// unit is therefore fixed by length, 10 digits for WeChat's seconds and 13 for Weibo's
    /// milliseconds, so digits moved from the nonce make a timestamp that is refused.
    enum Unit: Sendable {
        /// Exactly 10 digits (WeChat).
        case seconds
        /// Exactly 13 digits (Weibo).
        case milliseconds
        /// Either, told apart by size (channels that sign the timestamp on its own).
        case secondsOrMilliseconds
    }

    /// Accepts unix seconds or milliseconds as `unit` says.
    func check(_ text: String?, now: Double, unit: Unit = .secondsOrMilliseconds) throws(GatewayError) {
        guard let text, let value = Int64(text), value > 0 else {
            throw GatewayError.badRequest(.missingTimestamp, "timestamp is missing or not an integer")
        }
        let digits = text.utf8.count
        switch unit {
        case .seconds where digits != 10 || !text.utf8.allSatisfy({ (0x30...0x39).contains($0) }):
            throw GatewayError.badRequest(.missingTimestamp, "timestamp must be unix seconds, exactly 10 digits")
        case .milliseconds where digits != 13 || !text.utf8.allSatisfy({ (0x30...0x39).contains($0) }):
            throw GatewayError.badRequest(.missingTimestamp, "timestamp must be unix milliseconds, exactly 13 digits")
        default: break
        }
        let seconds = unit == .milliseconds || (unit == .secondsOrMilliseconds && value > 100_000_000_000)
            ? Double(value) / 1000 : Double(value)
        guard abs(now - seconds) <= Double(self.seconds) else { throw GatewayError.staleTimestamp }
    }
}

/// The edge's checks on what a webhook carries, each refusing with a clear 400: identities
/// (`invalid_subject`), times and payloads (`malformed_message`). Nothing unchecked reaches a queue.
enum WebhookInput {
    /// An identity the platform sends (openid, unionid, user id): visible ASCII, 1-128 bytes.
    static func identity(_ value: String?, _ field: String) throws(GatewayError) -> String? {
        guard let value else { return nil }
        if let problem = InputLimits.identityProblem(value) {
            throw GatewayError.badRequest(.invalidSubject, "\(field) \(problem)")
        }
        return value
    }

    /// A time the platform sends, in 2000-01-01..2100-01-01.
    static func time(_ date: Date, _ field: String) throws(GatewayError) -> Date {
        guard InputLimits.isPlausible(date) else {
            throw GatewayError.badRequest(.malformedMessage, "\(field) is outside 2000-01-01..2100-01-01")
        }
        return date
    }

    /// The envelope's attributes (the platform's payload kept whole under `raw`): no NUL, sane depth.
    static func attributes(_ attributes: [String: JSONValue]) throws(GatewayError) -> [String: JSONValue] {
        if let problem = InputLimits.attributesProblem(attributes, .webhook) {
            throw GatewayError.badRequest(.malformedMessage, problem)
        }
        return attributes
    }
}

extension Gateway {
    /// The path's app, once its id has the shape of one (``AppIDShape``, the rule the admin API
    /// registers by). Anything else (5,000 characters, `%00`, emoji) cannot be a registered app and
    /// is 404 before any lookup; a NUL would otherwise be cut by libpq and look up another app's prefix.
    func webhookApp(_ platform: AppPlatform, _ context: GatewayRequestContext) async throws(GatewayError) -> RegisteredApp {
        let id = context.parameters.get("appId") ?? ""
        guard AppIDShape.isValid(id) else {
            throw GatewayError(.notFound, .unknownApp, "no \(platform.rawValue) app has such an id (\(AppIDShape.rule))")
        }
        return try await pathApp(platform, context)
    }
}

extension XMLElement {
    /// Every field as JSON, nested elements as objects: the platform's payload kept whole in
    /// `attributes.raw`, so fields we do not name yet are not lost.
    var jsonFields: [String: JSONValue] {
        var out: [String: JSONValue] = [:]
        for child in children {
            out[child.name] = child.children.isEmpty ? .string(child.text) : .object(child.jsonFields)
        }
        return out
    }
}

extension JSONValue {
    /// An integer that is a JSON number, not a string that looks like one.
    var intStrict: Int64? {
        switch self {
        case .integer(let v): v
        case .number(let v): InputLimits.wholeNumber(v)
        default: nil
        }
    }
}
