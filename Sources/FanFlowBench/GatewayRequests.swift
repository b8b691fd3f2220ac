import ArgumentParser
import Foundation
import Gateway
import Platforms

/// Pre-signed WeChat safe-mode requests for `scripts/bench gateway`: the signature covers the
/// ciphertext, so each distinct event must be encrypted and signed ahead of time (wrk's Lua has no
/// AES). One `path<TAB>body` line per request, each a different event (distinct MsgId), so none is
/// recognized as a retry.
struct GatewayRequests: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gateway-requests", abstract: "Write pre-signed WeChat safe-mode webhook requests for wrk.")

    @Option(help: "The WeChat app id registered at the gateway.") var app: String
    @Option(help: "The app's token.") var token: String
    @Option(help: "The app's EncodingAESKey (safe mode); without it, plain-mode requests.") var aesKey: String?
    @Option(help: "How many distinct requests.") var count: Int = 100_000
    @Option(help: "Output file.") var output: String

    func run() async throws {
        guard let aesKey else { return try plain() }
        let crypto = try WeChatCrypto(encodingAESKey: aesKey, appID: app)
        let timestamp = String(Int(Date().timeIntervalSince1970))
        let nonce = "424242"
        let signature = WeChatCrypto.signature([token, timestamp, nonce])
        var out = ""
        out.reserveCapacity(count * 900)
        let base = Int64(7_000_000_000_000_000_000) + Int64.random(in: 0..<1_000_000_000) * 1_000_000
        for n in 0..<count {
            let xml = "<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><FromUserName><![CDATA[o-bench-\(n % 5000)]]></FromUserName>"
                + "<CreateTime>\(timestamp)</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[签到 \(n)]]></Content>"
                + "<MsgId>\(base + Int64(n))</MsgId></xml>"
            let encrypted = crypto.encrypt(Array(xml.utf8))
            let msgSignature = WeChatCrypto.signature([token, timestamp, nonce, encrypted])
            let path = "/wechat/\(app)?signature=\(signature)&timestamp=\(timestamp)&nonce=\(nonce)&encrypt_type=aes&msg_signature=\(msgSignature)"
            out += path + "\t<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><Encrypt><![CDATA[\(encrypted)]]></Encrypt></xml>\n"
        }
        try out.write(toFile: output, atomically: false, encoding: .utf8)
    }

    /// Plain mode signs only token, timestamp and nonce, and the gateway refuses a second body under
    /// a seen (timestamp, nonce): each request gets its own nonce, as WeChat sends them.
    func plain() throws {
        let timestamp = String(Int(Date().timeIntervalSince1970))
        var out = ""
        out.reserveCapacity(count * 400)
        let base = Int64(6_000_000_000_000_000_000) + Int64.random(in: 0..<1_000_000_000) * 1_000_000
        for n in 0..<count {
            let nonce = String(1_000_000_000 + n)
            let xml = "<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><FromUserName><![CDATA[o-bench-\(n % 5000)]]></FromUserName>"
                + "<CreateTime>\(timestamp)</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[checkin]]></Content>"
                + "<MsgId>\(base + Int64(n))</MsgId></xml>"
            let signature = WeChatCrypto.signature([token, timestamp, nonce])
            out += "/wechat/\(app)?signature=\(signature)&timestamp=\(timestamp)&nonce=\(nonce)\t\(xml)\n"
        }
        try out.write(toFile: output, atomically: false, encoding: .utf8)
    }
}
