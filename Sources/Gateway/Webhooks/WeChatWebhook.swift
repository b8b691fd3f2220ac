import Apps
import Contracts
import Foundation
import Hummingbird
import Platforms

/// `GET|POST /wechat/{appId}`: URL verification, plaintext and safe mode (AES) callbacks.
extension Gateway {
    static let webhookBodyLimit = 64 * 1024

    func addWeChatRoutes(_ router: Router<GatewayRequestContext>) {
        router.get("/wechat/:appId") { request, context in
            try await wechatVerify(request, context)
        }
        router.post("/wechat/:appId") { request, context in
            try await wechatCallback(request, context)
        }
    }

    private func wechatApp(_ context: GatewayRequestContext) async throws(GatewayError) -> (RegisteredApp, AppCredentials.WeChat) {
        let app = try await webhookApp(.wechat, context)
        guard case .wechat(let credentials) = app.credentials else { throw GatewayError.unknownApp("wechat", app.appID) }
        return (app, credentials)
    }

    /// Checks `signature` = sha1(sort(token, timestamp, nonce)) and the timestamp's freshness
    /// (10 digits: see ``FreshnessWindow/Unit``); returns the signature, lowercased, which the
    /// plain-mode replay guard keys on.
    @discardableResult
    private func checkSignature(_ query: [String: String], token: String) throws(GatewayError) -> String {
        guard let signature = query["signature"], let timestamp = query["timestamp"], let nonce = query["nonce"] else {
            throw GatewayError.unauthorized(.missingSignature, "signature, timestamp and nonce are required")
        }
        guard Bytes.hexSignatureMatches(signature, WeChatCrypto.signature([token, timestamp, nonce])) else {
            throw GatewayError.forbidden(.badSignature, "signature does not match")
        }
        try freshness.check(timestamp, now: Date().timeIntervalSince1970, unit: .seconds)
        return signature.lowercased()
    }

    func wechatVerify(_ request: Request, _ context: GatewayRequestContext) async throws -> Response {
        let (_, credentials) = try await wechatApp(context)
        let query = request.uri.queryParameters.flattened
        try checkSignature(query, token: credentials.token)
        guard let echostr = query["echostr"] else {
            throw GatewayError.badRequest(.missingEchostr, "echostr is required for URL verification")
        }
        return .text(echostr)
    }

    func wechatCallback(_ request: Request, _ context: GatewayRequestContext) async throws -> Response {
        let (app, credentials) = try await wechatApp(context)
        let query = request.uri.queryParameters.flattened
        let body = try await request.collectBody(upTo: Self.webhookBodyLimit)
        let receivedAt = Date()
        let safeMode = query["encrypt_type"]?.lowercased() == "aes"

        let message: XMLElement
        if safeMode {
            guard let cipher = app.wechat else {
                throw GatewayError.badRequest(.encryptionNotConfigured, "safe mode needs the app's encodingAESKey")
            }
            let outer = try parseXML(body)
            guard let encrypted = outer.value("Encrypt"), !encrypted.isEmpty else {
                throw GatewayError.badRequest(.malformedMessage, "Encrypt is missing")
            }
            guard let msgSignature = query["msg_signature"], let timestamp = query["timestamp"], let nonce = query["nonce"] else {
                throw GatewayError.unauthorized(.missingSignature, "msg_signature, timestamp and nonce are required in safe mode")
            }
            guard Bytes.hexSignatureMatches(msgSignature, WeChatCrypto.signature([credentials.token, timestamp, nonce, encrypted])) else {
                throw GatewayError.forbidden(.badSignature, "msg_signature does not match")
            }
            try freshness.check(timestamp, now: receivedAt.timeIntervalSince1970, unit: .seconds)
            let plain: [UInt8]
            do {
                plain = try cipher.decrypt(encrypted)
            } catch .appIDMismatch {
                throw GatewayError.forbidden(.wrongAppid, "the encrypted message is for another appid")
            } catch {
                throw GatewayError.badRequest(.badCiphertext, "the message cannot be decrypted with this app's key: \(error)")
            }
            // The ciphertext was signed, the plaintext inside it is still only bytes.
            message = try parseXML(try requireUTF8(plain))
        } else {
            let signature = try checkSignature(query, token: credentials.token)
            try await checkPlainMode(app, signature: signature, body: body)
            message = try parseXML(body)
        }

        let envelope = try WeChatEvents.envelope(message, app: app.appID, receivedAt: receivedAt)
        try await publishWebhookEvent(envelope)

        if envelope.kind == .subscribe, let reply = credentials.subscribeReply {
            return passiveReply(reply, to: message, cipher: safeMode ? app.wechat : nil, token: credentials.token)
        }
        return .text("success")
    }

    /// A text reply to the sender; in safe mode encrypted and signed as WeChat expects.
    private func passiveReply(_ text: String, to message: XMLElement, cipher: WeChatCrypto?, token: String) -> Response {
        let now = String(Int(Date().timeIntervalSince1970))
        let xml = "<xml><ToUserName>\(XMLTree.cdata(message.value("FromUserName") ?? ""))</ToUserName>"
            + "<FromUserName>\(XMLTree.cdata(message.value("ToUserName") ?? ""))</FromUserName>"
            + "<CreateTime>\(now)</CreateTime><MsgType><![CDATA[text]]></MsgType>"
            + "<Content>\(XMLTree.cdata(text))</Content></xml>"
        guard let cipher else { return .text(xml, contentType: "application/xml; charset=utf-8") }
        let encrypted = cipher.encrypt(Array(xml.utf8))
        let nonce = String(UInt32.random(in: 100_000_000...UInt32.max))
        let signature = WeChatCrypto.signature([token, now, nonce, encrypted])
        let wrapped = "<xml><Encrypt>\(XMLTree.cdata(encrypted))</Encrypt><MsgSignature>\(XMLTree.cdata(signature))</MsgSignature>"
            + "<TimeStamp>\(now)</TimeStamp><Nonce>\(XMLTree.cdata(nonce))</Nonce></xml>"
        return .text(wrapped, contentType: "application/xml; charset=utf-8")
    }
}

func parseXML(_ bytes: [UInt8]) throws(GatewayError) -> XMLElement {
    do {
        return try XMLTree.parse(bytes)
    } catch {
        throw GatewayError.badRequest(.malformedXml, "body is not acceptable XML: \(error)")
    }
}

extension Hummingbird.Parameters {
    /// Query parameters as a plain dictionary; the first of a repeated name wins.
    var flattened: [String: String] {
        var out: [String: String] = [:]
        for (name, value) in self where out[String(name)] == nil { out[String(name)] = String(value) }
        return out
    }
}
