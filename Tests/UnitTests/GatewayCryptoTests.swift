@testable import Apps
import Contracts
@preconcurrency import Crypto
import Foundation
@testable import Gateway
import Platforms
import Testing
@preconcurrency import _CryptoExtras

@Suite("Platform signatures and encryption")
struct GatewayCryptoTests {
    // WeChat's own sample (WXBizMsgCrypt test data from the official message encryption docs).
    static let docKey = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"

    @Test("WeChat: encrypting the documentation's reply gives the documented ciphertext")
    func wechatDocumentedEncryption() throws {
        let crypto = try WeChatCrypto(encodingAESKey: Self.docKey, appID: "wxb11529c136998cb6")
        let encrypted = crypto.encrypt(Array("我是中文abcd123".utf8), random: Array("aaaabbbbccccdddd".utf8))
        #expect(encrypted == "jn1L23DB+6ELqJ+6bruv21Y6MD7KeIfP82D6gU39rmkgczbWwt5+3bnyg5K55bgVtVzd832WzZGMhkP72vVOfg==")
        #expect(String(decoding: try crypto.decrypt(encrypted), as: UTF8.self) == "我是中文abcd123")
    }

    @Test("WeChat: the documentation's encrypted callback verifies and decrypts")
    func wechatDocumentedDecryption() throws {
        let encrypt = "hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQHFVAFmOD2LdJF9FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tEDYsVticbSnyU8dKOIbgU6ux5VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJpXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCzpu9GhglF2PE="
        #expect(WeChatCrypto.signature(["spamtest", "1409735669", "1320562132", encrypt]) == "5d197aaffba7e9b25a30732f161a50dee96bd5fa")
        let crypto = try WeChatCrypto(encodingAESKey: Self.docKey, appID: "wx2c2769f8efd9abc2")
        let xml = try XMLTree.parse(try crypto.decrypt(encrypt))
        #expect(xml.name == "xml")
        #expect(xml.value("MsgType") != nil)

        let other = try WeChatCrypto(encodingAESKey: Self.docKey, appID: "wx0000000000000000")
        #expect(throws: WeChatCrypto.Failure.appIDMismatch(found: "wx2c2769f8efd9abc2")) { try other.decrypt(encrypt) }
    }

    @Test("WeChat: EncodingAESKey decodes leniently (stray low bits of the last character are dropped)")
    func lenientKey() throws {
        #expect(WeChatCrypto.decodeKey(Self.docKey)?.count == 32)
        // 'G' is 6 and 'H' is 7 in base64: they differ only in the two bits past the 32nd byte.
        #expect(WeChatCrypto.decodeKey(String(Self.docKey.dropLast()) + "H") == WeChatCrypto.decodeKey(Self.docKey))
        #expect(WeChatCrypto.decodeKey(String(Self.docKey.dropLast())) == nil)
        #expect(WeChatCrypto.decodeKey(String(Self.docKey.dropLast()) + "!") == nil)
    }

    @Test("WeChat: tampered ciphertext and bad padding are refused, not crashed on")
    func tamperedCiphertext() throws {
        let crypto = try WeChatCrypto(encodingAESKey: Self.docKey, appID: "wxb11529c136998cb6")
        var bytes = Array(Data(base64Encoded: crypto.encrypt(Array("<xml/>".utf8)))!)
        bytes[bytes.count - 1] ^= 0x55
        #expect(throws: WeChatCrypto.Failure.self) { try crypto.decrypt(Data(bytes).base64EncodedString()) }
        #expect(throws: WeChatCrypto.Failure.badCiphertext) { try crypto.decrypt("not base64!") }
        #expect(throws: WeChatCrypto.Failure.badCiphertext) { try crypto.decrypt(Data(count: 15).base64EncodedString()) }
    }

    @Test("QQ: the documentation's op 13 example signs to the documented signature")
    func qqDocumentedValidation() throws {
        let crypto = try QQCrypto(botSecret: "DG5g3B4j9X2KOErG")
        #expect(crypto.sign(Array("1725442341Arq0D5A61EgUu4OxUvOp".utf8))
                == "87befc99c42c651b3aac0278e71ada338433ae26fcb24307bdc5ad38c1adc2d01bcfcadc0842edac85e85205028a1132afe09280305f13aa6909ffc2d652c706")
    }

    @Test("QQ: events verify over timestamp + the exact body bytes; a re-serialized body does not")
    func qqEventSignature() throws {
        let crypto = try QQCrypto(botSecret: "naOC0ocQE3shWLAfffVLB1rhYPG7")
        let body = Array(#"{ "op": 0,"d": {}, "t": "GATEWAY_EVENT_NAME"}"#.utf8)
        let signature = crypto.sign(Array("1725442341".utf8) + body)
        #expect(crypto.verify(signatureHex: signature, timestamp: "1725442341", body: body))
        #expect(crypto.verify(signatureHex: signature.uppercased(), timestamp: "1725442341", body: body))
        #expect(!crypto.verify(signatureHex: signature, timestamp: "1725442341", body: Array(#"{"op":0,"d":{},"t":"GATEWAY_EVENT_NAME"}"#.utf8)))
        #expect(!crypto.verify(signatureHex: signature, timestamp: "1725442342", body: body))
        #expect(!crypto.verify(signatureHex: "zz", timestamp: "1725442341", body: body))
    }

    @Test("Alipay: rsaCheckV2 content keeps sign_type, drops sign and empty values, sorts by name")
    func alipayContent() {
        let parameters: [(name: String, value: [UInt8])] = [
            ("sign_type", Array("RSA2".utf8)), ("service", Array("alipay.service.check".utf8)),
            ("sign", Array("xyz".utf8)), ("charset", Array("GBK".utf8)), ("empty", []),
            ("biz_content", Array("<XML/>".utf8)),
        ]
        #expect(String(decoding: AlipayCrypto.signedContent(parameters), as: UTF8.self)
                == "biz_content=<XML/>&charset=GBK&service=alipay.service.check&sign_type=RSA2")
    }

    @Test("Alipay: RSA2 signatures round-trip; bare base64 keys and PEM are both accepted")
    func alipayRoundTrip() throws {
        let alipayKey = try _RSA.Signing.PrivateKey(keySize: .bits2048)
        let appKey = try _RSA.Signing.PrivateKey(keySize: .bits2048)
        let crypto = try AlipayCrypto(alipayPublicKey: alipayKey.publicKey.derRepresentation.base64EncodedString(),
                                      appPrivateKey: appKey.pemRepresentation)
        let content = Array("biz_content=<XML/>&charset=GBK&service=alipay.service.check&sign_type=RSA2".utf8)
        let signature = try alipayKey.signature(for: SHA256.hash(data: content), padding: .insecurePKCS1v1_5)
            .rawRepresentation.base64EncodedString()
        #expect(try crypto.verify(content: content, signatureBase64: signature, signType: "RSA2"))
        #expect(try !crypto.verify(content: content + [0x20], signatureBase64: signature, signType: "RSA2"))
        #expect(throws: AlipayCrypto.Failure.unsupportedSignType("RSA")) {
            try crypto.verify(content: content, signatureBase64: signature, signType: "RSA")
        }
        // What we sign, Alipay verifies with the app's public key (the one the gateway check returns).
        let answer = try crypto.sign(Array("<success>true</success>".utf8))
        let appPublic = try _RSA.Signing.PublicKey(derRepresentation: Data(base64Encoded: crypto.appPublicKeyBase64)!)
        #expect(appPublic.isValidSignature(_RSA.Signing.RSASignature(rawRepresentation: Data(base64Encoded: answer)!),
                                           for: SHA256.hash(data: Array("<success>true</success>".utf8)), padding: .insecurePKCS1v1_5))
    }

    @Test("Secrets at rest: sealed with a derived key, bound to the row, readable only with the key; plain rows refused")
    func secretBox() throws {
        let key = Data((0..<32).map { UInt8($0) }).base64EncodedString()
        let box = SecretBox(keys: try SecretKeys(base64: key))
        let sealed = try box.seal(Array(#"{"secret":"s3cr3t-value-0123"}"#.utf8), platform: "server", appID: "shop")
        #expect(sealed.hasPrefix("v2:"))
        #expect(!sealed.contains("s3cr3t"))
        #expect(String(decoding: try box.open(sealed, platform: "server", appID: "shop"), as: UTF8.self) == #"{"secret":"s3cr3t-value-0123"}"#)
        // Copied to another row (another app id, or another platform) it does not open.
        #expect(throws: SecretBox.Failure.self) { try box.open(sealed, platform: "server", appID: "shop2") }
        #expect(throws: SecretBox.Failure.self) { try box.open(sealed, platform: "wechat", appID: "shop") }
        // Plain JSON rows are refused, naming the app.
        #expect(throws: SecretBox.Failure.plaintext(platform: "server", appID: "shop")) { try box.open(#"{"a":1}"#, platform: "server", appID: "shop") }
        let wrong = SecretBox(keys: try SecretKeys(base64: Data(repeating: 7, count: 32).base64EncodedString()))
        #expect(throws: SecretBox.Failure.self) { try wrong.open(sealed, platform: "server", appID: "shop") }
        // Rows sealed the old way (root key, no AAD) are still read.
        let legacy = try AES.GCM.seal(Array(#"{"old":true}"#.utf8), using: SymmetricKey(data: Data(base64Encoded: key)!))
        let v1 = "v1:" + legacy.combined!.base64EncodedString()
        #expect(String(decoding: try box.open(v1, platform: "qq", appID: "any"), as: UTF8.self) == #"{"old":true}"#)
        #expect(throws: SecretKeys.Failure.missing) { try SecretKeys(base64: nil) }
        #expect(throws: SecretKeys.Failure.malformed) { try SecretKeys(base64: "bm90IDMyIGJ5dGVz") }
    }

    @Test("Keys per purpose are derived by HKDF from the secret key: member tokens do not verify under the sealing key or the admin token")
    func derivedKeys() throws {
        let base64 = Data((0..<32).map { UInt8($0) }).base64EncodedString()
        let keys = try SecretKeys(base64: base64)
        let sealing = keys.derived(.appSecretSealing), tokens = keys.derived(.memberTokens)
        #expect(sealing != tokens && sealing != keys.root && tokens != keys.root)
        let token = keys.memberTokens.mint(member: 7, expiresAt: Date().addingTimeInterval(60))
        #expect(try keys.memberTokens.verify(token) == 7)
        #expect(throws: MemberTokens.Refusal.badSignature) { try MemberTokens(key: sealing).verify(token) }
        #expect(throws: MemberTokens.Refusal.badSignature) { try MemberTokens(key: keys.root).verify(token) }
    }

    @Test("The admin token check refuses a token of another length, a prefix, and the empty token; accepts the token")
    func bearerToken() {
        let check = BearerToken("admin-token-0123456789")
        #expect(check.accepts("admin-token-0123456789".utf8))
        #expect(!check.accepts("admin-token-012345678".utf8))
        #expect(!check.accepts("admin-token-0123456789-and-more".utf8))
        #expect(!check.accepts("admin".utf8))
        #expect(!check.accepts("".utf8))
        #expect(!check.accepts("admin-token-0123456780".utf8))
    }
}

@Suite("Hand-written encoders")
struct HandWrittenEncoderTests {
    @Test("base64url by hand matches Foundation's base64 with the URL alphabet and no padding, for every length mod 3")
    func base64URL() {
        var generator = SystemRandomNumberGenerator()
        for length in 0..<40 {
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            let foundation = Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-")
                .replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
            #expect(MemberTokens.base64URL(bytes) == foundation, "\(bytes)")
        }
    }

    @Test("JSONValue's bytes are JSONEncoder's with sorted keys and unescaped slashes")
    func jsonBytes() throws {
        let value: JSONValue = .object(["z": .string("a/b \"q\" \n\u{1}é"), "a": .array([.integer(-3), .number(1.5), .bool(true), .null]),
                                        "m": .object(["y": .number(2), "b": .string("")])])
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        #expect(value.jsonBytes == Array(try encoder.encode(value)))
    }
}
