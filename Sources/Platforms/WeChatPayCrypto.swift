@preconcurrency import Crypto
import Foundation
@preconcurrency import _CryptoExtras

/// WeChat Pay API v3 notifications, as the merchant documentation specifies them: the body is
/// signed with SHA256-RSA (PKCS#1 v1.5) by WeChat Pay's platform key over
/// `timestamp\\nnonce\\nbody\\n` (headers `Wechatpay-Timestamp`, `Wechatpay-Nonce`,
/// `Wechatpay-Signature`), and the transaction in `resource` is sealed with AEAD_AES_256_GCM under
/// the merchant's API v3 key (`ciphertext` is base64 of the sealed bytes and the 16-byte tag).
public struct WeChatPayCrypto: Sendable {
    let platformKey: _RSA.Signing.PublicKey
    let apiV3Key: SymmetricKey

    public init(apiV3Key: String, platformPublicKey: String) throws(AppCredentialsProblem) {
        guard apiV3Key.utf8.count == 32 else { throw AppCredentialsProblem("apiV3Key must be 32 characters") }
        do { platformKey = try AlipayCrypto.publicKey(platformPublicKey) } catch {
            throw AppCredentialsProblem("platformPublicKey is not an RSA public key in PEM or base64 DER: \(error)")
        }
        self.apiV3Key = SymmetricKey(data: Array(apiV3Key.utf8))
    }

    public static func signedMessage(timestamp: String, nonce: String, body: [UInt8]) -> [UInt8] {
        Array("\(timestamp)\n\(nonce)\n".utf8) + body + [0x0A]
    }

    public func verify(timestamp: String, nonce: String, body: [UInt8], signatureBase64: String) -> Bool {
        guard let raw = Data(base64Encoded: signatureBase64) else { return false }
        return platformKey.isValidSignature(_RSA.Signing.RSASignature(rawRepresentation: raw),
                                            for: SHA256.hash(data: Self.signedMessage(timestamp: timestamp, nonce: nonce, body: body)),
                                            padding: .insecurePKCS1v1_5)
    }

    /// Opens `resource`; nil when it was not sealed with this merchant's key.
    public func decrypt(ciphertextBase64: String, nonce: String, associatedData: String) -> [UInt8]? {
        guard let sealed = Data(base64Encoded: ciphertextBase64), sealed.count > 16,
              let gcmNonce = try? AES.GCM.Nonce(data: Array(nonce.utf8)),
              let box = try? AES.GCM.SealedBox(nonce: gcmNonce, ciphertext: sealed.dropLast(16), tag: sealed.suffix(16)),
              let plain = try? AES.GCM.open(box, using: apiV3Key, authenticating: Array(associatedData.utf8)) else { return nil }
        return Array(plain)
    }

    /// What the fake provider in tests and demos does: seal a resource the way WeChat Pay does.
    public static func seal(_ plaintext: [UInt8], apiV3Key: String, nonce: String, associatedData: String) throws -> String {
        let box = try AES.GCM.seal(plaintext, using: SymmetricKey(data: Array(apiV3Key.utf8)),
                                   nonce: AES.GCM.Nonce(data: Array(nonce.utf8)), authenticating: Array(associatedData.utf8))
        return (box.ciphertext + box.tag).base64EncodedString()
    }
}

/// A credential that does not parse (a key of the wrong length or form), naming which and why:
/// the admin API answers it as 422 when an app is registered.
public struct AppCredentialsProblem: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
