@preconcurrency import Crypto
import Foundation

/// Encrypts app credentials at rest with `FANFLOW_SECRET_KEY` (AES-256-GCM). Stored text is
/// `v1:` + base64(nonce | ciphertext | tag); without a key, credentials are stored as plain JSON.
public struct SecretBox: Sendable {
    public enum Failure: Error, CustomStringConvertible, Sendable {
        case badKey
        case cannotOpen(String)
        public var description: String {
            switch self {
            case .badKey: "FANFLOW_SECRET_KEY must be base64 of 32 bytes"
            case .cannotOpen(let why): "cannot decrypt stored credentials: \(why)"
            }
        }
    }

    private let key: SymmetricKey?
    public var encrypts: Bool { key != nil }

    public init(base64Key: String?) throws(Failure) {
        guard let base64Key else { key = nil; return }
        guard let bytes = Data(base64Encoded: base64Key), bytes.count == 32 else { throw .badKey }
        key = SymmetricKey(data: bytes)
    }

    public func seal(_ plaintext: [UInt8]) throws -> String {
        guard let key else { return String(decoding: plaintext, as: UTF8.self) }
        let box = try AES.GCM.seal(plaintext, using: key)
        guard let combined = box.combined else { throw Failure.cannotOpen("no combined form") }
        return "v1:" + combined.base64EncodedString()
    }

    /// Opens what `seal` stored. Plain JSON rows (written before a key was configured) are read
    /// as they are, so turning encryption on needs no migration step.
    public func open(_ stored: String) throws(Failure) -> [UInt8] {
        guard stored.hasPrefix("v1:") else { return Array(stored.utf8) }
        guard let key else { throw .cannotOpen("stored encrypted, but FANFLOW_SECRET_KEY is not set") }
        guard let combined = Data(base64Encoded: String(stored.dropFirst(3))) else { throw .cannotOpen("not base64") }
        do {
            return Array(try AES.GCM.open(try AES.GCM.SealedBox(combined: combined), using: key))
        } catch {
            throw .cannotOpen("wrong FANFLOW_SECRET_KEY or corrupted row (\(error))")
        }
    }
}
