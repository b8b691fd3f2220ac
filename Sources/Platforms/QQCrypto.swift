@preconcurrency import Crypto
import Foundation

/// QQ bot webhook signatures: Ed25519, the private key's seed derived from the bot secret by
/// repeating it until it is at least 32 bytes long and taking the first 32 (QQ's documented rule).
public struct QQCrypto: Sendable {
    let signingKey: Curve25519.Signing.PrivateKey
    let verifyingKey: Curve25519.Signing.PublicKey

    public enum Failure: Error, Equatable, Sendable { case emptySecret }

    public init(botSecret: String) throws(Failure) {
        let secret = Array(botSecret.utf8)
        guard !secret.isEmpty else { throw .emptySecret }
        var seed = secret
        while seed.count < 32 { seed += seed }
        // A 32-byte seed is always a valid Ed25519 private key.
        guard let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: seed.prefix(32)) else { throw .emptySecret }
        signingKey = key
        verifyingKey = key.publicKey
    }

    /// Checks `X-Signature-Ed25519` (hex) over timestamp + the body bytes exactly as received.
    public func verify(signatureHex: String, timestamp: String, body: [UInt8]) -> Bool {
        guard let signature = Bytes.fromHex(signatureHex), signature.count == 64 else { return false }
        return verifyingKey.isValidSignature(signature, for: Array(timestamp.utf8) + body)
    }

    public func sign(_ message: [UInt8]) -> String {
        // Signing with a valid key over bytes does not fail.
        Bytes.hex((try? signingKey.signature(for: message)) ?? Data())
    }
}
