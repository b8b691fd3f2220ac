@preconcurrency import Crypto
@preconcurrency import _CryptoExtras
import Foundation

/// WeChat's callback signatures and "safe mode" message encryption.
///
/// Safe mode: AES-256-CBC, key = base64(EncodingAESKey + "="), IV = the key's first 16 bytes,
/// plaintext = 16 random bytes | 4-byte big-endian length | message | appid, padded PKCS#7 to a
/// multiple of 32 bytes (not 16: WeChat's block size for padding is 32).
public struct WeChatCrypto: Sendable {
    public enum Failure: Error, Equatable, Sendable {
        case badEncodingAESKey
        case badCiphertext
        case badPadding
        case badLength
        case appIDMismatch(found: String)
    }

    let key: SymmetricKey
    let iv: [UInt8]
    public let appID: String

    /// The console makes 43 characters; WeChat appends "=" and decodes leniently, so a key whose
    /// last character carries stray low bits still decodes to the same 32 bytes.
    public init(encodingAESKey: String, appID: String) throws(Failure) {
        guard let bytes = Self.decodeKey(encodingAESKey) else { throw .badEncodingAESKey }
        key = SymmetricKey(data: bytes)
        iv = Array(bytes[0..<16])
        self.appID = appID
    }

    public static func decodeKey(_ text: String) -> [UInt8]? {
        guard text.utf8.count == 43 else { return nil }
        var bits: UInt32 = 0
        var bitCount = 0
        var out = [UInt8]()
        out.reserveCapacity(32)
        for c in text.utf8 {
            let value: UInt32
            switch c {
            case 65...90: value = UInt32(c - 65)
            case 97...122: value = UInt32(c - 71)
            case 48...57: value = UInt32(c + 4)
            case 43: value = 62
            case 47: value = 63
            default: return nil
            }
            bits = bits << 6 | value
            bitCount += 6
            if bitCount >= 8 {
                bitCount -= 8
                out.append(UInt8(truncatingIfNeeded: bits >> UInt32(bitCount)))
            }
        }
        // 43 characters carry 258 bits: 32 bytes and 2 leftover bits, which lenient decoding drops.
        return out.count == 32 ? out : nil
    }

    /// sha1 of the sorted parts concatenated: `signature` (token, timestamp, nonce) and
    /// `msg_signature` (the same plus the Encrypt text).
    public static func signature(_ parts: [String]) -> String {
        let joined = parts.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }.joined()
        return Bytes.hex(Insecure.SHA1.hash(data: Array(joined.utf8)))
    }

    /// Decrypts an Encrypt field and checks the appid inside it.
    public func decrypt(_ base64: String) throws(Failure) -> [UInt8] {
        guard let ciphertext = Data(base64Encoded: base64), ciphertext.count >= 32, ciphertext.count % 16 == 0 else {
            throw .badCiphertext
        }
        let plain: [UInt8]
        do {
            plain = Array(try AES._CBC.decrypt(ciphertext, using: key, iv: try AES._CBC.IV(ivBytes: iv), noPadding: true))
        } catch {
            throw .badCiphertext
        }
        guard let pad = plain.last, pad >= 1, pad <= 32, Int(pad) <= plain.count,
              plain.suffix(Int(pad)).allSatisfy({ $0 == pad }) else { throw .badPadding }
        let body = plain.prefix(plain.count - Int(pad))
        guard body.count >= 20 else { throw .badLength }
        let start = body.startIndex
        let length = Int(body[start + 16]) << 24 | Int(body[start + 17]) << 16 | Int(body[start + 18]) << 8 | Int(body[start + 19])
        guard length <= body.count - 20 else { throw .badLength }
        let message = Array(body[(start + 20)..<(start + 20 + length)])
        let foundAppID = String(decoding: body[(start + 20 + length)...], as: UTF8.self)
        guard Bytes.constantTimeEquals(Array(foundAppID.utf8), Array(appID.utf8)) else {
            throw .appIDMismatch(found: foundAppID)
        }
        return message
    }

    /// Encrypts a message for a passive reply (or a test's webhook); `random` is 16 bytes.
    public func encrypt(_ message: [UInt8], random: [UInt8]? = nil) -> String {
        var plain = random ?? (0..<16).map { _ in UInt8.random(in: 0...255) }
        let length = UInt32(message.count)
        plain += [UInt8(length >> 24), UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF)]
        plain += message
        plain += Array(appID.utf8)
        let pad = 32 - plain.count % 32
        plain += [UInt8](repeating: UInt8(pad), count: pad)
        // Cannot fail: the key is 32 bytes, the IV 16 and the input block-aligned.
        let sealed = (try? AES._CBC.encrypt(plain, using: key, iv: try AES._CBC.IV(ivBytes: iv), noPadding: true)) ?? Data()
        return sealed.base64EncodedString()
    }
}
