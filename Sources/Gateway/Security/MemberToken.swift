import Apps
@preconcurrency import Crypto
import Foundation
import Platforms

/// Short-lived bearer tokens that let an H5 page act for one member (`POST /v1/codes/verify`,
/// `POST /v1/mall/redemptions`). Minted by the brand's server through the admin API after the
/// platform's OAuth told it who the visitor is; verified by any gateway without a database
/// round trip. Form: `m1.<member id>.<expiry unix seconds>.<base64url HMAC-SHA256>`.
///
/// The key is derived from `FANFLOW_SECRET_KEY` by HKDF with its own label (``SecretKeys``), never
/// from the admin token: every gateway of a deployment shares it, and rotating it revokes every token.
public struct MemberTokens: Sendable {
    private let key: SymmetricKey
    /// HMAC keyed once: a copy continues from the keyed state, so a verify does not pad and hash
    /// the key again.
    private let keyed: HMAC<SHA256>

    init(key: SymmetricKey) {
        self.key = key
        keyed = HMAC<SHA256>(key: key)
    }

    /// The signer of a deployment whose `FANFLOW_SECRET_KEY` is `secretKey` (base64 of 32 bytes).
    public init(secretKey: String) throws(SecretKeys.Failure) {
        self = try SecretKeys(base64: secretKey).memberTokens
    }

    public func mint(member: Int64, expiresAt: Date) -> String {
        let payload = "m1.\(member).\(Int64(expiresAt.timeIntervalSince1970))"
        return payload + "." + Self.base64URL(Array(HMAC<SHA256>.authenticationCode(for: Array(payload.utf8), using: key)))
    }

    public enum Refusal: Error, Equatable {
        case malformed, badSignature, expired
    }

    /// The member the token names, if its signature holds and it has not expired.
    public func verify(_ token: String, now: Date = Date()) throws(Refusal) -> Int64 {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4, parts[0] == "m1", let member = Int64(parts[1]), member > 0,
              let expiry = Int64(parts[2]) else { throw .malformed }
        let payload = Array(token.utf8.prefix(parts[0].utf8.count + parts[1].utf8.count + parts[2].utf8.count + 2))
        var mac = keyed
        mac.update(data: payload)
        let expected = Self.base64URLBytes(Array(mac.finalize()))
        guard Bytes.constantTimeEquals(Array(parts[3].utf8), expected) else { throw .badSignature }
        guard Double(expiry) > now.timeIntervalSince1970 else { throw .expired }
        return member
    }

    static func base64URL(_ bytes: [UInt8]) -> String { String(decoding: base64URLBytes(bytes), as: UTF8.self) }

    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

    /// Base64url without padding (RFC 4648 §5), by hand: every member request verifies a token,
    /// and Foundation's encoder plus three string replacements were a tenth of the gateway's CPU.
    static func base64URLBytes(_ bytes: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count * 4 + 2) / 3)
        var index = 0
        while index < bytes.count {
            let chunk = bytes[index..<min(index + 3, bytes.count)]
            var word = 0
            for (shift, byte) in zip([16, 8, 0], chunk) { word |= Int(byte) << shift }
            for position in 0...chunk.count { out.append(alphabet[(word >> (18 - 6 * position)) & 0x3F]) }
            index += 3
        }
        return out
    }
}

extension SecretKeys {
    /// The member-token signer of this key.
    public var memberTokens: MemberTokens { MemberTokens(key: derived(.memberTokens)) }
}
