@preconcurrency import Crypto
import Foundation

/// `FANFLOW_SECRET_KEY`, the one root secret of a deployment, and the keys derived from it.
///
/// Each purpose gets its own key by HKDF-SHA256 with its own label, so a key for one purpose
/// (say, the member-token MAC that every H5 request exercises) reveals nothing about another
/// (the key that seals app secrets at rest), and none is ever derived from another secret such
/// as the admin token: an operator who can read the admin token cannot mint member tokens.
public struct SecretKeys: Sendable {
    public enum Failure: Error, CustomStringConvertible, Sendable, Equatable {
        case missing
        case malformed
        public var description: String {
            switch self {
            case .missing: "FANFLOW_SECRET_KEY is not set: app secrets and member tokens need it (base64 of 32 random bytes: openssl rand -base64 32)"
            case .malformed: "FANFLOW_SECRET_KEY must be base64 of exactly 32 bytes (openssl rand -base64 32)"
            }
        }
    }

    /// The purposes keys are derived for; the label is the HKDF `info` and never changes.
    public enum Purpose: String, Sendable {
        case appSecretSealing = "fanflow app-secret sealing v2"
        case memberTokens = "fanflow member tokens v2"
    }

    /// The root key as configured: used directly only to open rows sealed the old way (`v1:`).
    let root: SymmetricKey

    public init(base64: String?) throws(Failure) {
        guard let base64 else { throw .missing }
        guard let bytes = Data(base64Encoded: base64), bytes.count == 32 else { throw .malformed }
        root = SymmetricKey(data: bytes)
    }

    public func derived(_ purpose: Purpose) -> SymmetricKey {
        HKDF<SHA256>.deriveKey(inputKeyMaterial: root, salt: Array("fanflow".utf8), info: Array(purpose.rawValue.utf8),
                               outputByteCount: 32)
    }
}
