@preconcurrency import Crypto
@preconcurrency import _CryptoExtras
import Contracts
import Foundation
@testable import Gateway
import Hummingbird
import HummingbirdTesting
import HTTPTypes
import Platforms
import Testing

/// Webhooks in over real HTTP, envelopes out on a queue bound to `fanflow.events`.
@Suite("Gateway webhooks")
struct GatewayWebhookTests {
    static let aesKey = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
    static var now: String { String(Int(Date().timeIntervalSince1970)) }

    // A fresh nonce per request, as WeChat sends them: a (timestamp, nonce) pair seen with another body is refused.
    static func wechatQuery(token: String, timestamp: String = now, nonce: String = String(UInt32.random(in: 100_000...UInt32.max))) -> String {
        "signature=\(WeChatCrypto.signature([token, timestamp, nonce]))&timestamp=\(timestamp)&nonce=\(nonce)"
    }

    static func xmlBody(_ xml: String) -> ByteBuffer { ByteBuffer(string: xml) }

    @Test("WeChat plaintext: URL verification, subscribe with a QR scene, retry published once, forgeries refused")
    func wechatPlaintext() async throws {
        try await GatewayHarness.run { client, tap, _ in
            let app = TestEnvironment.unique("wx")
            try await GatewayHarness.register(client, "wechat", app, ["token": "tok123"])

            try await client.execute(uri: "/wechat/\(app)?\(Self.wechatQuery(token: "tok123"))&echostr=hello-echo", method: .get) { response in
                #expect(response.status == .ok)
                #expect(String(buffer: response.body) == "hello-echo")
            }
            let subscribe = "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[fan-1]]></FromUserName><CreateTime>\(Self.now)</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe]]></Event><EventKey><![CDATA[qrscene_spring]]></EventKey><Ticket><![CDATA[TK]]></Ticket><Custom>kept</Custom></xml>"
            for _ in 0..<3 {  // the platform's retries
                try await client.execute(uri: "/wechat/\(app)?\(Self.wechatQuery(token: "tok123"))", method: .post,
                                         body: Self.xmlBody(subscribe)) { response in
                    #expect(response.status == .ok)
                    #expect(String(buffer: response.body) == "success")
                }
            }
            let published = try await tap.wait(app: app, count: 1)
            #expect(published.count == 1)
            let event = try #require(published.first)
            #expect(event.envelope.kind == .subscribe)
            #expect(event.envelope.subject.openid == "fan-1")
            #expect(event.envelope.attributes["scene"] == .string("spring"))
            #expect(event.envelope.attributes["raw"] == .object(["ToUserName": "gh_1", "FromUserName": "fan-1",
                "CreateTime": .string(String(Int(event.envelope.occurredAt.timeIntervalSince1970))), "MsgType": "event",
                "Event": "subscribe", "EventKey": "qrscene_spring", "Ticket": "TK", "Custom": "kept"]))
            #expect(event.messageID == event.envelope.id)
            #expect(event.routingKey == "wechat.subscribe")

            try await client.execute(uri: "/wechat/\(app)?\(Self.wechatQuery(token: "wrong"))", method: .post,
                                     body: Self.xmlBody(subscribe)) { response in
                #expect(response.status == .forbidden)
                #expect(GatewayHarness.errorCode(response) == "bad_signature")
            }
            let stale = String(Int(Date().timeIntervalSince1970) - 3600)
            try await client.execute(uri: "/wechat/\(app)?\(Self.wechatQuery(token: "tok123", timestamp: stale))", method: .post,
                                     body: Self.xmlBody(subscribe)) { response in
                #expect(response.status == .forbidden)
                #expect(GatewayHarness.errorCode(response) == "stale_timestamp")
            }
            try await client.execute(uri: "/wechat/\(app)", method: .post, body: Self.xmlBody(subscribe)) { response in
                #expect(response.status == .unauthorized)
            }
            try await client.execute(uri: "/wechat/nosuchapp?\(Self.wechatQuery(token: "tok123"))", method: .post,
                                     body: Self.xmlBody(subscribe)) { response in
                #expect(response.status == .notFound)
                #expect(GatewayHarness.errorCode(response) == "unknown_app")
            }
            try await client.execute(uri: "/wechat/\(app)?\(Self.wechatQuery(token: "tok123"))", method: .post,
                                     body: Self.xmlBody("<xml><FromUserName>")) { response in
                #expect(response.status == .badRequest)
                #expect(GatewayHarness.errorCode(response) == "malformed_xml")
            }
            let bomb = #"<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]><xml><FromUserName>&b;</FromUserName></xml>"#
            try await client.execute(uri: "/wechat/\(app)?\(Self.wechatQuery(token: "tok123"))", method: .post,
                                     body: Self.xmlBody(bomb)) { response in
                #expect(response.status == .badRequest)
            }
            try await client.execute(uri: "/wechat/\(app)?\(Self.wechatQuery(token: "tok123"))", method: .post,
                                     body: ByteBuffer(repeating: UInt8(ascii: "x"), count: 70_000)) { response in
                #expect(response.status == .contentTooLarge)
                #expect(GatewayHarness.errorCode(response) == "body_too_large")
            }
            // Nothing forged or malformed was published.
            #expect(tap.envelopes(app: app).count == 1)
        }
    }

    @Test("WeChat: two people scanning one QR code, and one person's two events in one second, are four events")
    func wechatDistinctEvents() async throws {
        try await GatewayHarness.run { client, tap, _ in
            let app = TestEnvironment.unique("wx")
            try await GatewayHarness.register(client, "wechat", app, ["token": "tok"])
            let second = Self.now
            for (user, event, key) in [("a", "SCAN", "42"), ("b", "SCAN", "42"), ("c", "CLICK", "menu_1"), ("c", "VIEW", "https://x")] {
                let xml = "<xml><ToUserName>gh</ToUserName><FromUserName>\(user)</FromUserName><CreateTime>\(second)</CreateTime><MsgType>event</MsgType><Event>\(event)</Event><EventKey>\(key)</EventKey></xml>"
                try await client.execute(uri: "/wechat/\(app)?\(Self.wechatQuery(token: "tok"))", method: .post, body: Self.xmlBody(xml)) { response in
                    #expect(response.status == .ok)
                }
            }
            let published = try await tap.wait(app: app, count: 4)
            #expect(published.count == 4)
            #expect(Set(published.map(\.envelope.id)).count == 4)
            #expect(published.filter { $0.envelope.kind == .scan }.allSatisfy { $0.envelope.attributes["scene"] == .string("42") })
        }
    }

    @Test("WeChat safe mode: encrypted message in, passive reply encrypted out, wrong appid refused")
    func wechatSafeMode() async throws {
        try await GatewayHarness.run { client, tap, _ in
            let app = TestEnvironment.unique("wx")
            try await GatewayHarness.register(client, "wechat", app,
                                              ["token": "safe-token", "encodingAESKey": Self.aesKey, "subscribeReply": "欢迎关注!"])
            let crypto = try WeChatCrypto(encodingAESKey: Self.aesKey, appID: app)
            func post(_ xml: String, with cipher: WeChatCrypto, _ check: @escaping @Sendable (TestResponse) throws -> Void) async throws {
                let encrypted = cipher.encrypt(Array(xml.utf8))
                let timestamp = Self.now, nonce = "987654"
                let msgSignature = WeChatCrypto.signature(["safe-token", timestamp, nonce, encrypted])
                let query = "\(Self.wechatQuery(token: "safe-token", timestamp: timestamp, nonce: nonce))&encrypt_type=aes&msg_signature=\(msgSignature)"
                let body = "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><Encrypt><![CDATA[\(encrypted)]]></Encrypt></xml>"
                try await client.execute(uri: "/wechat/\(app)?\(query)", method: .post, body: Self.xmlBody(body)) { try check($0) }
            }
            let text = "<xml><ToUserName>gh_1</ToUserName><FromUserName>fan-2</FromUserName><CreateTime>\(Self.now)</CreateTime><MsgType>text</MsgType><Content>签到</Content><MsgId>6054768590064713728</MsgId></xml>"
            try await post(text, with: crypto) { response in
                #expect(response.status == .ok)
                #expect(String(buffer: response.body) == "success")
            }
            let subscribe = "<xml><ToUserName>gh_1</ToUserName><FromUserName>fan-3</FromUserName><CreateTime>\(Self.now)</CreateTime><MsgType>event</MsgType><Event>subscribe</Event></xml>"
            try await post(subscribe, with: crypto) { response in
                #expect(response.status == .ok)
                let reply = try XMLTree.parse(Array(response.body.readableBytesView))
                let signature = WeChatCrypto.signature(["safe-token", reply.value("TimeStamp") ?? "", reply.value("Nonce") ?? "", reply.value("Encrypt") ?? ""])
                #expect(reply.value("MsgSignature") == signature)
                let inner = try XMLTree.parse(try crypto.decrypt(reply.value("Encrypt") ?? ""))
                #expect(inner.value("Content") == "欢迎关注!")
                #expect(inner.value("ToUserName") == "fan-3")
            }
            let intruder = try WeChatCrypto(encodingAESKey: Self.aesKey, appID: "wx-someone-else")
            try await post(text.replacingOccurrences(of: "6054768590064713728", with: "1"), with: intruder) { response in
                #expect(response.status == .forbidden)
                #expect(GatewayHarness.errorCode(response) == "wrong_appid")
            }
            let published = try await tap.wait(app: app, count: 2)
            #expect(published.map(\.envelope.kind).sorted { $0.rawValue < $1.rawValue } == [.text, .subscribe])
            #expect(published.first { $0.envelope.kind == .text }?.envelope.attributes["content"] == .string("签到"))
        }
    }

    @Test("Alipay: gateway check answered with the signed public key; a signed follow is published; forgery refused")
    func alipay() async throws {
        let alipayKey = try _RSA.Signing.PrivateKey(keySize: .bits2048)
        let appKey = try _RSA.Signing.PrivateKey(keySize: .bits2048)
        try await GatewayHarness.run { client, tap, _ in
            let app = TestEnvironment.unique("2021")
            try await GatewayHarness.register(client, "alipay", app, [
                "alipayPublicKey": alipayKey.publicKey.derRepresentation.base64EncodedString(),
                "appPrivateKey": appKey.pemRepresentation,
            ])
            func form(_ parameters: [(String, String)], key: _RSA.Signing.PrivateKey) throws -> ByteBuffer {
                let content = AlipayCrypto.signedContent(parameters.map { ($0.0, Array($0.1.utf8)) })
                let sign = try key.signature(for: SHA256.hash(data: content), padding: .insecurePKCS1v1_5).rawRepresentation.base64EncodedString()
                let all = parameters + [("sign", sign)]
                let allowed = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-._*"))
                return ByteBuffer(string: all.map { "\($0.0)=\($0.1.addingPercentEncoding(withAllowedCharacters: allowed)!)" }.joined(separator: "&"))
            }
            let headers: HTTPFields = [.contentType: "application/x-www-form-urlencoded; charset=UTF-8"]
            let check = "<XML><AppId><![CDATA[\(app)]]></AppId><FromUserId><![CDATA[2088102]]></FromUserId><CreateTime>1700000000000</CreateTime><MsgType><![CDATA[event]]></MsgType><EventType><![CDATA[verifygw]]></EventType></XML>"
            try await client.execute(uri: "/alipay/\(app)", method: .post, headers: headers, body: try form([
                ("service", "alipay.service.check"), ("sign_type", "RSA2"), ("charset", "UTF-8"), ("biz_content", check),
            ], key: alipayKey)) { response in
                #expect(response.status == .ok)
                let xml = try XMLTree.parse(Array(response.body.readableBytesView))
                let published = try #require(xml["response"]?.value("biz_content"))
                #expect(published == appKey.publicKey.derRepresentation.base64EncodedString())
                let signed = "<success>true</success><biz_content>\(published)</biz_content>"
                let signature = _RSA.Signing.RSASignature(rawRepresentation: Data(base64Encoded: xml.value("sign") ?? "")!)
                #expect(appKey.publicKey.isValidSignature(signature, for: SHA256.hash(data: Array(signed.utf8)), padding: .insecurePKCS1v1_5))
            }
            let follow = "<XML><AppId><![CDATA[\(app)]]></AppId><FromUserId><![CDATA[2088102000001]]></FromUserId><CreateTime>1700000000123</CreateTime><MsgType><![CDATA[event]]></MsgType><EventType><![CDATA[follow]]></EventType><ActionParam><![CDATA[{\"scene\":{\"sceneId\":\"store-7\"}}]]></ActionParam></XML>"
            let notify = [("service", "alipay.mobile.public.message.notify"), ("sign_type", "RSA2"), ("charset", "UTF-8"), ("biz_content", follow)]
            try await client.execute(uri: "/alipay/\(app)", method: .post, headers: headers, body: try form(notify, key: alipayKey)) { response in
                #expect(response.status == .ok)
                #expect(String(buffer: response.body).contains("<MsgType><![CDATA[ack]]></MsgType>"))
            }
            try await client.execute(uri: "/alipay/\(app)", method: .post, headers: headers, body: try form(notify, key: appKey)) { response in
                #expect(response.status == .forbidden)
                #expect(GatewayHarness.errorCode(response) == "bad_signature")
            }
            let published = try await tap.wait(app: app, count: 1)
            #expect(published.count == 1)
            #expect(published.first?.envelope.kind == .subscribe)
            #expect(published.first?.envelope.subject.openid == "2088102000001")
            #expect(published.first?.envelope.attributes["scene"] == .string("store-7"))
        }
    }

    @Test("Weibo: echostr verification and a signed follow event")
    func weibo() async throws {
        try await GatewayHarness.run { client, tap, _ in
            let app = TestEnvironment.unique("wb")
            try await GatewayHarness.register(client, "weibo", app, ["appSecret": "weibo-secret"])
            let timestamp = String(Int64(Date().timeIntervalSince1970 * 1000))  // Weibo sends milliseconds
            let query = "signature=\(WeChatCrypto.signature(["weibo-secret", timestamp, "555"]))&timestamp=\(timestamp)&nonce=555"
            try await client.execute(uri: "/weibo/\(app)?\(query)&echostr=vIuz5ekD", method: .get) { response in
                #expect(String(buffer: response.body) == "vIuz5ekD")
            }
            let body = #"{"type":"event","receiver_id":"1902538057","sender_id":"2489518277","created_at":"Mon Jul 16 18:09:20 +0800 2012","text":"","data":{"subtype":"scan_follow","key":"qr-9"}}"#
            try await client.execute(uri: "/weibo/\(app)?\(query)", method: .post, body: ByteBuffer(string: body)) { response in
                #expect(response.status == .ok)
            }
            try await client.execute(uri: "/weibo/\(app)?\(query.replacingOccurrences(of: "nonce=555", with: "nonce=556"))", method: .post,
                                     body: ByteBuffer(string: body)) { response in
                #expect(response.status == .forbidden)
            }
            let published = try await tap.wait(app: app, count: 1)
            #expect(published.count == 1)
            #expect(published.first?.envelope.kind == .subscribe)
            #expect(published.first?.envelope.attributes["scene"] == .string("qr-9"))
            #expect(published.first?.envelope.occurredAt == RFC3339.parse("2012-07-16T10:09:20Z"))
        }
    }

    @Test("QQ: op 13 validation (token-shaped only), signed op 0 published and acked with op 12, tampered body refused")
    func qq() async throws {
        try await GatewayHarness.run { client, tap, _ in
            let app = TestEnvironment.unique("qq")
            try await GatewayHarness.register(client, "qq", app, ["botSecret": "DG5g3B4j9X2KOErG"])
            let validation = #"{"op":13,"d":{"plain_token":"Arq0D5A61EgUu4OxUvOp","event_ts":"1725442341"}}"#
            try await client.execute(uri: "/qq/\(app)", method: .post, body: ByteBuffer(string: validation)) { response in
                #expect(response.status == .ok)
                let json = GatewayHarness.json(response)
                #expect(json["plain_token"] as? String == "Arq0D5A61EgUu4OxUvOp")
                #expect(json["signature"] as? String == "87befc99c42c651b3aac0278e71ada338433ae26fcb24307bdc5ad38c1adc2d01bcfcadc0842edac85e85205028a1132afe09280305f13aa6909ffc2d652c706")
            }
            // An attacker asking op 13 to sign something shaped like an event gets nothing.
            let oracle = #"{"op":13,"d":{"plain_token":"{\"op\":0,\"id\":\"forged\"}","event_ts":"1725442341"}}"#
            try await client.execute(uri: "/qq/\(app)", method: .post, body: ByteBuffer(string: oracle)) { response in
                #expect(response.status == .badRequest)
                #expect(GatewayHarness.errorCode(response) == "bad_plain_token")
            }
            let signer = try QQCrypto(botSecret: "DG5g3B4j9X2KOErG")
            let body = #"{"id":"GROUP_AT_MESSAGE_CREATE:abc123","op":0,"d":{"author":{"member_openid":"E4F4AEA3"},"content":" 签到 ","group_openid":"G1","id":"ROBOT1.0_x","timestamp":"2024-11-06T13:37:18+08:00"},"t":"GROUP_AT_MESSAGE_CREATE"}"#
            let timestamp = Self.now
            let headers: HTTPFields = [.qqSignature: signer.sign(Array((timestamp + body).utf8)), .qqTimestamp: timestamp]
            try await client.execute(uri: "/qq/\(app)", method: .post, headers: headers, body: ByteBuffer(string: body)) { response in
                #expect(response.status == .ok)
                #expect(GatewayHarness.json(response)["op"] as? Int == 12)
            }
            try await client.execute(uri: "/qq/\(app)", method: .post, headers: headers,
                                     body: ByteBuffer(string: body.replacingOccurrences(of: "签到", with: "抽奖"))) { response in
                #expect(response.status == .forbidden)
            }
            let published = try await tap.wait(app: app, count: 1)
            #expect(published.count == 1)
            #expect(published.first?.envelope.kind == .text)
            #expect(published.first?.envelope.subject.openid == "E4F4AEA3")
            #expect(published.first?.envelope.attributes["content"] == .string("签到"))
        }
    }
}
