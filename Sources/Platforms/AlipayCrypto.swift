@preconcurrency import Crypto
@preconcurrency import _CryptoExtras
import Foundation

/// Alipay's RSA2 (SHA256withRSA, PKCS#1 v1.5) signatures, as its SDKs' `rsaCheckV2` and `rsaSign`.
public struct AlipayCrypto: Sendable {
    public enum Failure: Error, Equatable, Sendable {
        case badPublicKey(String)
        case badPrivateKey(String)
        case unsupportedSignType(String)
    }

    let alipayPublicKey: _RSA.Signing.PublicKey
    let appPrivateKey: _RSA.Signing.PrivateKey
    /// The app's public key as base64 DER, the form Alipay's gateway check expects back.
    public let appPublicKeyBase64: String

    public init(alipayPublicKey: String, appPrivateKey: String) throws(Failure) {
        do {
            self.alipayPublicKey = try Self.publicKey(alipayPublicKey)
        } catch {
            throw .badPublicKey("alipayPublicKey is not an RSA public key in PEM or base64 DER: \(error)")
        }
        do {
            self.appPrivateKey = try Self.privateKey(appPrivateKey)
        } catch {
            throw .badPrivateKey("appPrivateKey is not an RSA private key in PEM (PKCS#1 or PKCS#8) or base64 DER: \(error)")
        }
        appPublicKeyBase64 = self.appPrivateKey.publicKey.derRepresentation.base64EncodedString()
    }

    public static func publicKey(_ text: String) throws -> _RSA.Signing.PublicKey {
        try parse(text, pem: _RSA.Signing.PublicKey.init(unsafePEMRepresentation:), der: _RSA.Signing.PublicKey.init(unsafeDERRepresentation:))
    }

    static func privateKey(_ text: String) throws -> _RSA.Signing.PrivateKey {
        try parse(text, pem: _RSA.Signing.PrivateKey.init(unsafePEMRepresentation:), der: _RSA.Signing.PrivateKey.init(unsafeDERRepresentation:))
    }

    /// Alipay's console hands keys out as bare base64 DER; PEM is accepted too.
    private static func parse<Key>(_ text: String, pem: (String) throws -> Key, der: (Data) throws -> Key) throws -> Key {
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        if trimmed.hasPrefix("-----") { return try pem(trimmed) }
        guard let bytes = Data(base64Encoded: trimmed, options: .ignoreUnknownCharacters) else {
            throw CryptoKitError.incorrectParameterSize
        }
        return try der(bytes)
    }

    /// The signed content of a notification: every parameter but `sign`, sorted by name, as
    /// `k=v` joined by `&`, empty values skipped. `sign_type` stays in (the rsaCheckV2 rule).
    /// Values are the raw, percent-decoded bytes in the request's charset: that is what Alipay signed.
    public static func signedContent(_ parameters: [(name: String, value: [UInt8])]) -> [UInt8] {
        let kept = parameters.filter { $0.name != "sign" && !$0.value.isEmpty }
            .sorted { Array($0.name.utf8).lexicographicallyPrecedes(Array($1.name.utf8)) }
        var out: [UInt8] = []
        for (index, parameter) in kept.enumerated() {
            if index > 0 { out.append(UInt8(ascii: "&")) }
            out += Array(parameter.name.utf8)
            out.append(UInt8(ascii: "="))
            out += parameter.value
        }
        return out
    }

    public func verify(content: [UInt8], signatureBase64: String, signType: String) throws(Failure) -> Bool {
        guard signType == "RSA2" else { throw .unsupportedSignType(signType) }
        guard let raw = Data(base64Encoded: signatureBase64, options: .ignoreUnknownCharacters) else { return false }
        return alipayPublicKey.isValidSignature(_RSA.Signing.RSASignature(rawRepresentation: raw),
                                                for: SHA256.hash(data: content), padding: .insecurePKCS1v1_5)
    }

    /// Signs with the app's private key (the answer to Alipay: gateway check and message acks).
    public func sign(_ content: [UInt8]) throws -> String {
        try appPrivateKey.signature(for: SHA256.hash(data: content), padding: .insecurePKCS1v1_5)
            .rawRepresentation.base64EncodedString()
    }
}
