@preconcurrency import Crypto
@preconcurrency import _CryptoExtras
import Contracts
import Foundation

/// The signatures a brand's platform or server puts on requests, made here from their public
/// definitions with swift-crypto, so the bench does not depend on how the gateway is organised
/// inside (it checks them; the bench only needs to make them).
enum Signing {
    static func hex(_ bytes: some Sequence<UInt8>) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// WeChat's signature: SHA-1 of the parts sorted bytewise and joined.
    static func wechat(_ parts: [String]) -> String {
        let joined = parts.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }.joined()
        return hex(Insecure.SHA1.hash(data: Array(joined.utf8)))
    }

    /// `/v1/events`: `sha256=` and the hex HMAC-SHA256 of `timestamp.body` under the app's secret.
    static func serverEvents(secret: SymmetricKey, timestamp: String, body: String) -> String {
        "sha256=" + hex(HMAC<SHA256>.authenticationCode(for: Array((timestamp + "." + body).utf8), using: secret))
    }

    /// WeChat safe mode ("AES mode"): AES-256-CBC under the EncodingAESKey (43 base64 characters
    /// plus "="), IV its first 16 bytes, plaintext = 16 random bytes, the message length (4 bytes,
    /// big-endian), the message and the app id, padded PKCS#7-style to 32-byte blocks.
    struct WeChatAES {
        let key: SymmetricKey
        let iv: AES._CBC.IV
        let appID: String

        init(encodingAESKey: String, appID: String) throws {
            guard encodingAESKey.utf8.count == 43, let bytes = Data(base64Encoded: encodingAESKey + "="), bytes.count == 32 else {
                throw BenchError("an EncodingAESKey is 43 base64 characters")
            }
            key = SymmetricKey(data: bytes)
            iv = try AES._CBC.IV(ivBytes: Array(bytes.prefix(16)))
            self.appID = appID
        }

        func encrypt(_ message: [UInt8]) throws -> String {
            var plain = (0..<16).map { _ in UInt8.random(in: 0...255) }
            let length = UInt32(message.count)
            plain += [UInt8(length >> 24), UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF)]
            plain += message
            plain += Array(appID.utf8)
            let pad = 32 - plain.count % 32
            plain += [UInt8](repeating: UInt8(pad), count: pad)
            return try AES._CBC.encrypt(plain, using: key, iv: iv, noPadding: true).base64EncodedString()
        }
    }

    /// Member tokens as a brand's server mints them (`m1.<member>.<expiry>.<base64url HMAC-SHA256>`),
    /// keyed by HKDF-SHA256 from `FANFLOW_SECRET_KEY` (salt "fanflow", info "fanflow member tokens v2").
    struct MemberTokens {
        let key: SymmetricKey

        init(secretKey: String) throws {
            guard let root = Data(base64Encoded: secretKey), root.count == 32 else {
                throw BenchError("FANFLOW_SECRET_KEY must be base64 of 32 bytes")
            }
            key = HKDF<SHA256>.deriveKey(inputKeyMaterial: SymmetricKey(data: root), salt: Array("fanflow".utf8),
                                         info: Array("fanflow member tokens v2".utf8), outputByteCount: 32)
        }

        func mint(member: Int64, expiresAt: Date) -> String {
            let payload = "m1.\(member).\(Int64(expiresAt.timeIntervalSince1970))"
            let mac = Data(HMAC<SHA256>.authenticationCode(for: Array(payload.utf8), using: key)).base64EncodedString()
            return payload + "." + mac.replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
                .replacingOccurrences(of: "=", with: "")
        }
    }
}

/// The requests the figures send, built and signed before the timed phase.
enum Requests {
    /// Signed WeChat webhooks, one text message each with a distinct MsgId (none is taken for a
    /// retry). Plain mode signs token, timestamp and nonce, and the gateway refuses a second body
    /// under a seen (timestamp, nonce), so each request has its own nonce, as WeChat sends them.
    /// Safe mode signs the ciphertext as well.
    static func wechat(app: String, token: String, aesKey: String?, count: Int, host: String, content: String = "checkin") throws -> [WireRequest] {
        let timestamp = String(Int(Date().timeIntervalSince1970))
        let base = Int64(6_000_000_000_000_000_000) + Int64.random(in: 0..<1_000_000_000) * 1_000_000
        let aes = try aesKey.map { try Signing.WeChatAES(encodingAESKey: $0, appID: app) }
        var out: [WireRequest] = []
        out.reserveCapacity(count)
        for n in 0..<count {
            let nonce = String(1_000_000_000 + n)
            let xml = "<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><FromUserName><![CDATA[o-bench-\(n % 5000)]]></FromUserName>"
                + "<CreateTime>\(timestamp)</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[\(content) \(n)]]></Content>"
                + "<MsgId>\(base + Int64(n))</MsgId></xml>"
            let signature = Signing.wechat([token, timestamp, nonce])
            var path = "/wechat/\(app)?signature=\(signature)&timestamp=\(timestamp)&nonce=\(nonce)"
            var body = xml
            if let aes {
                let encrypted = try aes.encrypt(Array(xml.utf8))
                path += "&encrypt_type=aes&msg_signature=\(Signing.wechat([token, timestamp, nonce, encrypted]))"
                body = "<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><Encrypt><![CDATA[\(encrypted)]]></Encrypt></xml>"
            }
            out.append(.post(path, host: host, headers: [("Content-Type", "text/xml")], body: body))
        }
        return out
    }

    /// H5 beacon batches of 5 events (as sdk.js sends them with sendBeacon), every event a new UUID.
    static func beacons(site: String, count: Int, host: String) -> [WireRequest] {
        let kinds = ["page_view", "click", "dwell", "click", "share"]
        let now = RFC3339.format(Date())
        return (0..<count).map { n in
            let events = kinds.map { kind in
                #"{"id":"\#(UUID().uuidString.lowercased())","type":"\#(kind)","occurredAt":"\#(now)","url":"https://brand.example/spring?p=\#(n)","title":"Spring sale","referrer":"","openid":"o-bench-\#(n % 5000)"}"#
            }
            let body = #"{"site":"\#(site)","clientId":"client-\#(n)","events":[\#(events.joined(separator: ","))]}"#
            return .post("/v1/collect", host: host, headers: [("Content-Type", "text/plain;charset=UTF-8")], body: body)
        }
    }

    /// `/v1/events` batches in the mix a loyalty program sees: 30% posts, 20% comments, 20% shares
    /// to moments, 20% check-ins, 10% deliveries, over `members` members, each event distinct.
    static func events(app: String, secret: String, memberApp: String, members: Int, count: Int, batch: Int, run: String,
                       host: String) -> [WireRequest] {
        let key = SymmetricKey(data: Array(secret.utf8))
        let timestamp = String(Int(Date().timeIntervalSince1970))
        let now = Date()
        var out: [WireRequest] = []
        out.reserveCapacity(count)
        var n = 0
        for _ in 0..<count {
            var events: [String] = []
            events.reserveCapacity(batch)
            for _ in 0..<batch {
                let member = (n &* 7919) % members
                // In the last hour, in the past so the gateway takes them.
                let time = RFC3339.format(now.addingTimeInterval(-Double(n % 3600) - 60))
                let (kind, attributes): (String, String)
                switch n % 10 {
                case 0, 1, 2: (kind, attributes) = ("community.post", #"{"postId":"p\#(n)"}"#)
                case 3, 4: (kind, attributes) = ("community.comment", #"{"postId":"p\#(n)"}"#)
                case 5, 6: (kind, attributes) = ("community.share", #"{"postId":"p\#(n)","channel":"moments"}"#)
                case 7, 8: (kind, attributes) = ("member.checkin", "{}")
                default: (kind, attributes) = ("mall.order_delivered", #"{"orderId":"o\#(n)","amount":\#(1000 + n % 50_000)}"#)
                }
                events.append(#"{"id":"\#(run)-\#(n)","kind":"\#(kind)","member":{"platform":"wechat","app":"\#(memberApp)","openid":"m\#(member)"},"occurredAt":"\#(time)","attributes":\#(attributes)}"#)
                n += 1
            }
            let body = #"{"events":[\#(events.joined(separator: ","))]}"#
            out.append(.post("/v1/events", host: host, headers: [
                ("Content-Type", "application/json"), ("X-FanFlow-App", app), ("X-FanFlow-Timestamp", timestamp),
                ("X-FanFlow-Signature", Signing.serverEvents(secret: key, timestamp: timestamp, body: body)),
            ], body: body))
        }
        return out
    }

    /// Reservation attempts, members in turn so each attempt is a different member's while there are
    /// members left, every request id distinct (none is taken for a retry).
    static func reservations(sale: String, secretKey: String, firstMember: Int64, members: Int, count: Int, host: String) throws -> [WireRequest] {
        let tokens = try Signing.MemberTokens(secretKey: secretKey)
        let expires = Date().addingTimeInterval(3600)
        let minted = (0..<Int64(members)).map { tokens.mint(member: firstMember + $0, expiresAt: expires) }
        let run = UUID().uuidString.prefix(8)
        return (0..<count).map { n in
            .post("/v1/flash-sales/\(sale)/reservations", host: host,
                  headers: [("Content-Type", "application/json"), ("Authorization", "Bearer \(minted[n % members])")],
                  body: #"{"quantity":1,"requestId":"\#(run)-\#(n)"}"#)
        }
    }
}

extension Signing {
    /// Envelope ids as the gateway derives them (a public part of the envelope contract): the
    /// platform, ":", and 32 hex characters of SHA-256 over the platform, the app and the parts,
    /// each after a unit separator (0x1F), which cannot occur in them.
    static func eventID(_ platform: Platform, app: String, _ parts: [String]) -> String {
        var hasher = SHA256()
        hasher.update(data: Array(platform.rawValue.utf8))
        for part in [app] + parts {
            hasher.update(data: [0x1F])
            hasher.update(data: Array(part.utf8))
        }
        return platform.rawValue + ":" + hex(hasher.finalize().prefix(16))
    }
}
