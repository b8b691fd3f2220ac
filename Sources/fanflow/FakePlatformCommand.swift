import ArgumentParser
import FakePlatform
import Foundation
import Hummingbird
import Logging
import Runtime

/// `fanflow fake-platform`: the fake WeChat message APIs and Alipay's gateway on a port, for demos,
/// benches and trying the push pool without the internet. Point `FANFLOW_WECHAT_API_BASE` and
/// `FANFLOW_ALIPAY_API_BASE` at it.
struct FakePlatformCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fake-platform",
        abstract: "Serve a fake WeChat message API (tokens, template and custom messages) and Alipay gateway (service-window template messages) with faults on demand.",
        discussion: """
            Control endpoints (not WeChat's): POST /fake/apps {"appid","secret"}, POST /fake/faults \
            {"errcode"|"status"|"delayMs","times","scope":"send|token|any"}, POST /fake/tokens/expire, \
            POST /fake/tokens/invalidate, POST /fake/refusing {"openid","errcode"}, POST /fake/quota \
            {"appid","limit"}, GET /fake/sent, GET /fake/stats. Alipay: GET /fake/alipay/public-key (register it as \
            the app's alipayPublicKey in FanFlow), POST /fake/alipay/apps {"appid","publicKey"}, POST \
            /fake/alipay/refusing {"userId","subCode","subMsg"}, POST /fake/alipay/faults {"status"|"code","times"}, \
            GET /fake/alipay/sent.
            """)

    @Option(help: "Address to listen on.") var host = "127.0.0.1"
    @Option(help: "Port to listen on.") var port = 8099
    @Option(name: .customLong("app"), help: "An app the fake knows, as appid:secret (repeatable).") var apps: [String] = []
    @Option(name: .customLong("alipay-app"), help: "An Alipay app the fake knows, as appid:publicKey (base64 DER; repeatable).")
    var alipayApps: [String] = []

    func run() async throws {
        LoggingSetup.bootstrap(level: "notice")
        let logger = Logger(label: "fanflow.fake-platform")
        let fake = FakeWeChat()
        for app in apps {
            let parts = app.split(separator: ":", maxSplits: 1)
            guard parts.count == 2 else { throw ValidationError("--app takes appid:secret, got \(app)") }
            fake.register(app: String(parts[0]), secret: String(parts[1]))
        }
        let alipay = try FakeAlipay()
        for app in alipayApps {
            let parts = app.split(separator: ":", maxSplits: 1)
            guard parts.count == 2 else { throw ValidationError("--alipay-app takes appid:publicKey, got \(app)") }
            try alipay.register(app: String(parts[0]), publicKey: String(parts[1]))
        }
        let router = Router()
        fake.addRoutes(to: router)
        alipay.addRoutes(to: router)
        let application = Application(router: router, configuration: .init(address: .hostname(host, port: port)), logger: logger)
        logger.notice("fake WeChat and Alipay listening",
                      metadata: ["address": "http://\(host):\(port)", "alipayPublicKey": "\(alipay.alipayPublicKey)"])
        try await runServices([application], logger: logger)
    }
}
