@preconcurrency import Crypto
import Foundation

/// Seals app credentials at rest (AES-256-GCM) with a key derived from `FANFLOW_SECRET_KEY`.
///
/// Stored text is `v2:` + base64(nonce | ciphertext | tag), and the additional authenticated data
/// is the row's platform and app id: a sealed value copied into another app's row does not open,
/// so someone who can write the table cannot move one app's secrets under another's name.
/// Rows written before (`v1:`, sealed with the root key itself and no AAD) are still read, and
/// `fanflow secrets seal` rewrites them; plain JSON rows (written before a key was configured)
/// are refused when loaded, naming the app, until that command has sealed them.
public struct SecretBox: Sendable {
    public enum Failure: Error, CustomStringConvertible, Sendable, Equatable {
        case cannotOpen(String)
        case plaintext(platform: String, appID: String)
        public var description: String {
            switch self {
            case .cannotOpen(let why): "cannot decrypt stored credentials: \(why)"
            case .plaintext(let platform, let appID):
                "app \(platform)/\(appID) stores its credentials unencrypted; run `fanflow secrets seal` to seal them"
            }
        }
    }

    /// How a stored row is sealed.
    public enum Form: Equatable, Sendable {
        /// Plain JSON, written before a key existed: refused until sealed.
        case plaintext
        /// Sealed with the root key and no AAD (before sealing was bound to the row): readable, resealed by the command.
        case v1
        /// The current form.
        case v2
    }

    private let sealing: SymmetricKey
    private let legacy: SymmetricKey

    public init(keys: SecretKeys) {
        sealing = keys.derived(.appSecretSealing)
        legacy = keys.root
    }

    public static func form(of stored: String) -> Form {
        if stored.hasPrefix("v2:") { return .v2 }
        if stored.hasPrefix("v1:") { return .v1 }
        return .plaintext
    }

    /// The row's identity, authenticated with the ciphertext (a NUL cannot occur in either part).
    private static func aad(_ platform: String, _ appID: String) -> [UInt8] {
        Array("fanflow-app\u{0}\(platform)\u{0}\(appID)".utf8)
    }

    public func seal(_ plaintext: [UInt8], platform: String, appID: String) throws -> String {
        let box = try AES.GCM.seal(plaintext, using: sealing, authenticating: Self.aad(platform, appID))
        guard let combined = box.combined else { throw Failure.cannotOpen("no combined form") }
        return "v2:" + combined.base64EncodedString()
    }

    /// Opens what `seal` stored for this row (or a `v1:` row); plain rows are refused.
    public func open(_ stored: String, platform: String, appID: String) throws(Failure) -> [UInt8] {
        switch Self.form(of: stored) {
        case .plaintext:
            throw .plaintext(platform: platform, appID: appID)
        case .v1:
            return try open(base64: stored.dropFirst(3), key: legacy, aad: nil)
        case .v2:
            return try open(base64: stored.dropFirst(3), key: sealing, aad: Self.aad(platform, appID))
        }
    }

    /// Plain rows as they are (only `fanflow secrets seal` reads them this way, to seal them).
    public func openForResealing(_ stored: String, platform: String, appID: String) throws(Failure) -> [UInt8] {
        Self.form(of: stored) == .plaintext ? Array(stored.utf8) : try open(stored, platform: platform, appID: appID)
    }

    private func open(base64: Substring, key: SymmetricKey, aad: [UInt8]?) throws(Failure) -> [UInt8] {
        guard let combined = Data(base64Encoded: String(base64)) else { throw .cannotOpen("not base64") }
        do {
            let box = try AES.GCM.SealedBox(combined: combined)
            if let aad { return Array(try AES.GCM.open(box, using: key, authenticating: aad)) }
            return Array(try AES.GCM.open(box, using: key))
        } catch {
            throw .cannotOpen("wrong FANFLOW_SECRET_KEY, a corrupted row, or a row copied from another app")
        }
    }
}
