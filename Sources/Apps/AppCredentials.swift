import Contracts
import Foundation
import Platforms

/// The platforms an app can be registered for, with the credentials each needs. `server` apps are
/// the brand's own systems (`/v1/events`) and H5 sites (beacons' `site`).
public enum AppPlatform: String, Sendable, CaseIterable, Codable {
    case wechat = "wechat"
    case alipay = "alipay"
    case weibo = "weibo"
    case qq = "qq"
    case server = "server"
    /// A WeChat Pay merchant (API v3), keyed by its mchid: payment notifications.
    case wechatpay = "wechatpay"
}

/// What `PUT /admin/v1/apps/{platform}/{appId}` accepts, per platform. Field names are the contract.
public enum AppCredentials: Sendable, Equatable {
    case wechat(WeChat)
    case alipay(Alipay)
    case weibo(Weibo)
    case qq(QQ)
    case server(Server)
    case wechatPay(WeChatPay)

    public struct WeChat: Codable, Sendable, Equatable {
        public var token: String
        public var encodingAESKey: String?
        public var appSecret: String?
        /// Optional passive text reply to a subscribe event (encrypted in safe mode).
        public var subscribeReply: String?
    }
    public struct Alipay: Codable, Sendable, Equatable {
        public var alipayPublicKey: String
        public var appPrivateKey: String
    }
    public struct Weibo: Codable, Sendable, Equatable {
        public var appSecret: String
    }
    public struct QQ: Codable, Sendable, Equatable {
        public var botSecret: String
    }
    public struct Server: Codable, Sendable, Equatable {
        public var secret: String
    }
    /// The merchant's API v3 key (32 characters, decrypts notifications) and WeChat Pay's platform
    /// public key (PEM or base64 DER, verifies their signatures).
    public struct WeChatPay: Codable, Sendable, Equatable {
        public var apiV3Key: String
        public var platformPublicKey: String
    }

    public var platform: AppPlatform {
        switch self {
        case .wechat: .wechat
        case .alipay: .alipay
        case .weibo: .weibo
        case .qq: .qq
        case .server: .server
        case .wechatPay: .wechatpay
        }
    }

    /// Decodes a request body and checks its fields' shape; the message names the field that is
    /// wrong. Keys are checked by building the app's verifiers (`RegisteredApp`).
    public static func decode(platform: AppPlatform, json: [UInt8]) throws(AppCredentialsProblem) -> AppCredentials {
        let decoder = JSONDecoder()
        func body<T: Decodable>(_ type: T.Type) throws(AppCredentialsProblem) -> T {
            do {
                return try decoder.decode(T.self, from: Data(json))
            } catch let DecodingError.keyNotFound(key, _) {
                throw AppCredentialsProblem("missing field \(key.stringValue)")
            } catch let DecodingError.typeMismatch(_, context) {
                throw AppCredentialsProblem("field \(context.codingPath.map(\.stringValue).joined(separator: ".")) must be a string")
            } catch {
                throw AppCredentialsProblem("body must be a JSON object")
            }
        }
        func nonEmpty(_ value: String, _ field: String, max: Int = 4096) throws(AppCredentialsProblem) {
            guard !value.isEmpty, value.utf8.count <= max else {
                throw AppCredentialsProblem("\(field) must be a non-empty string of at most \(max) bytes")
            }
        }
        switch platform {
        case .wechat:
            let value = try body(WeChat.self)
            try nonEmpty(value.token, "token", max: 64)
            if let key = value.encodingAESKey, WeChatCrypto.decodeKey(key) == nil {
                throw AppCredentialsProblem("encodingAESKey must be the 43 characters the WeChat console shows")
            }
            if let reply = value.subscribeReply { try nonEmpty(reply, "subscribeReply", max: 2048) }
            return .wechat(value)
        case .alipay:
            // The keys themselves are parsed once, when `RegisteredApp` builds the verifier.
            let value = try body(Alipay.self)
            try nonEmpty(value.alipayPublicKey, "alipayPublicKey", max: 8192)
            try nonEmpty(value.appPrivateKey, "appPrivateKey", max: 8192)
            return .alipay(value)
        case .weibo:
            let value = try body(Weibo.self)
            try nonEmpty(value.appSecret, "appSecret", max: 256)
            return .weibo(value)
        case .qq:
            let value = try body(QQ.self)
            try nonEmpty(value.botSecret, "botSecret", max: 256)
            return .qq(value)
        case .server:
            let value = try body(Server.self)
            guard value.secret.utf8.count >= 16, value.secret.utf8.count <= 256 else {
                throw AppCredentialsProblem("secret must be 16 to 256 bytes")
            }
            return .server(value)
        case .wechatpay:
            let value = try body(WeChatPay.self)
            guard value.apiV3Key.utf8.count == 32 else { throw AppCredentialsProblem("apiV3Key must be the 32 characters set in the merchant platform") }
            try nonEmpty(value.platformPublicKey, "platformPublicKey", max: 8192)
            return .wechatPay(value)
        }
    }

    public func encoded() throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        switch self {
        case .wechat(let v): return Array(try encoder.encode(v))
        case .alipay(let v): return Array(try encoder.encode(v))
        case .weibo(let v): return Array(try encoder.encode(v))
        case .qq(let v): return Array(try encoder.encode(v))
        case .server(let v): return Array(try encoder.encode(v))
        case .wechatPay(let v): return Array(try encoder.encode(v))
        }
    }

    /// What the admin API shows: secrets masked to their last 4 characters, public keys in full.
    public func masked() -> [String: String] {
        func mask(_ secret: String) -> String {
            secret.count <= 8 ? "****" : "****" + secret.suffix(4)
        }
        switch self {
        case .wechat(let v):
            var out = ["token": mask(v.token)]
            if let key = v.encodingAESKey { out["encodingAESKey"] = mask(key) }
            if let secret = v.appSecret { out["appSecret"] = mask(secret) }
            if let reply = v.subscribeReply { out["subscribeReply"] = reply }
            return out
        case .alipay(let v):
            return ["alipayPublicKey": v.alipayPublicKey, "appPrivateKey": mask(v.appPrivateKey)]
        case .weibo(let v): return ["appSecret": mask(v.appSecret)]
        case .qq(let v): return ["botSecret": mask(v.botSecret)]
        case .server(let v): return ["secret": mask(v.secret)]
        case .wechatPay(let v): return ["apiV3Key": mask(v.apiV3Key), "platformPublicKey": v.platformPublicKey]
        }
    }
}
