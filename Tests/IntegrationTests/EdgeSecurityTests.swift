#if canImport(Glibc)
import Apps
import Contracts
@preconcurrency import Crypto
import Foundation
@testable import Gateway
import Glibc
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Loyalty
import Members
import Platforms
import PostgresClient
import Synchronization
import Testing
@preconcurrency import _CryptoExtras
#endif

/// The gateway's edges over real HTTP: secrets at rest, cost before authentication, timeouts,
/// plain-mode WeChat replays and CORS.
@Suite("Gateway edges")
struct EdgeSecurityTests {
    static let secret = "server-secret-0123456789"

    static func errorBody(_ response: TestResponse) -> [String: Any] {
        GatewayHarness.json(response)["error"] as? [String: Any] ?? [:]
    }

    static func events(_ client: any TestClientProtocol, app: String, secret: String = secret,
                       headers extra: HTTPFields = [:]) async throws -> TestResponse {
        let body = #"{"events":[]}"#
        var headers = GatewayAPITests.signed(body, app: app, secret: secret)
        headers.append(contentsOf: extra)
        return try await client.execute(uri: "/v1/events", method: .post, headers: headers, body: ByteBuffer(string: body))
    }

    // MARK: A. Secrets

    @Test("a sealed credentials row copied under another app id does not open there")
    func copiedRowRefused() async throws {
        try await GatewayHarness.run { client, _, gateway in
            let original = TestEnvironment.unique("shop"), copy = TestEnvironment.unique("copy")
            try await GatewayHarness.register(client, "server", original, ["secret": Self.secret])
            try await gateway.database.query("""
                INSERT INTO apps (platform, app_id, credentials) SELECT platform, $2, credentials FROM apps
                WHERE platform = 'server' AND app_id = $1
                """, [original, copy])
            let stored = try await gateway.database.query("SELECT credentials FROM apps WHERE platform = 'server' AND app_id = $1", [copy])
            #expect(stored.first?.string("credentials")?.hasPrefix("v2:") == true)
            var response = try await Self.events(client, app: copy)
            #expect(response.status == .internalServerError)
            #expect(Self.errorBody(response)["code"] as? String == "credentials_unreadable")
            #expect(Self.errorBody(response)["requestId"] as? String == response.headers[.requestID])
            response = try await Self.events(client, app: original)
            #expect(response.status == .ok)
        }
    }

    @Test("a plaintext credentials row is refused (the operator's text only in the log) until `fanflow secrets seal` seals it (v1 rows resealed too)")
    func plaintextRowSealedByCommand() async throws {
        try await ScratchDatabase.with { database, url in
            try await GatewayHarness.run(["FANFLOW_DATABASE_URL": url]) { client, _, _ in
                let plain = TestEnvironment.unique("plain"), old = TestEnvironment.unique("old")
                try await database.query("INSERT INTO apps (platform, app_id, credentials) VALUES ('server', $1, $2)",
                                         [plain, #"{"secret":"\#(Self.secret)"}"#])
                let root = SymmetricKey(data: try #require(Data(base64Encoded: GatewayHarness.secretKey)))
                let legacy = try AES.GCM.seal(Array(#"{"secret":"\#(Self.secret)"}"#.utf8), using: root)
                try await database.query("INSERT INTO apps (platform, app_id, credentials) VALUES ('server', $1, $2)",
                                         [old, "v1:" + (try #require(legacy.combined)).base64EncodedString()])

                var response = try await Self.events(client, app: plain)
                #expect(response.status == .internalServerError)
                #expect(Self.errorBody(response)["code"] as? String == "credentials_not_sealed")
                // The caller is outside: no app name, no operator's instructions in the body.
                let message = Self.errorBody(response)["message"] as? String ?? ""
                #expect(!message.contains(plain) && !message.contains("secrets seal"), "\(message)")
                // Old-format rows are still read.
                #expect(try await Self.events(client, app: old).status == .ok)

                let (status, output) = try Self.runFanflow(["secrets", "seal"], databaseURL: url)
                #expect(status == 0, "\(output)")
                #expect(output.contains("sealed\tserver/\(plain)") && output.contains("sealed\tserver/\(old)"))
                let rows = try await database.query("SELECT credentials FROM apps ORDER BY app_id")
                #expect(rows.allSatisfy { $0.string("credentials")?.hasPrefix("v2:") == true })

                response = try await Self.events(client, app: plain)
                #expect(response.status == .ok)
                #expect(try await Self.events(client, app: old).status == .ok)
                // Again: nothing left to do.
                let (again, second) = try Self.runFanflow(["secrets", "seal"], databaseURL: url)
                #expect(again == 0 && second.contains("0 sealed, 2 already sealed"))
            }
        }
    }

    static func runFanflow(_ arguments: [String], databaseURL: String) throws -> (Int32, String) {
        let process = Process()
        process.executableURL = SchedulerProcessTests.binary
        process.arguments = arguments
        var environment = ProcessInfo.processInfo.environment
        environment["FANFLOW_AMQP_URL"] = TestEnvironment.amqpURL
        environment["FANFLOW_REDIS_URL"] = TestEnvironment.redisURL
        environment["FANFLOW_DATABASE_URL"] = databaseURL
        environment["FANFLOW_SECRET_KEY"] = GatewayHarness.secretKey
        environment["FANFLOW_LOG_LEVEL"] = "error"
        process.environment = environment
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    // MARK: B. Cost before authentication

    @Test("/v1/events: header format, size and timestamp are checked before any lookup (the database is unreachable here)")
    func eventsCheapChecksFirst() async throws {
        let unreachable = "postgresql://fanflow:fanflow@127.0.0.1:1/fanflow"
        try await GatewayHarness.run(["FANFLOW_DATABASE_URL": unreachable]) { client, _, _ in
            let body = ByteBuffer(string: #"{"events":[]}"#)
            let app = TestEnvironment.unique("shop")
            func post(_ headers: HTTPFields) async throws -> (HTTPResponse.Status, String?) {
                let response = try await client.execute(uri: "/v1/events", method: .post, headers: headers, body: body)
                return (response.status, Self.errorBody(response)["code"] as? String)
            }
            var headers = GatewayAPITests.signed(#"{"events":[]}"#, app: String(repeating: "a", count: 65))
            #expect(try await post(headers) == (.badRequest, "invalid_app"))
            headers = GatewayAPITests.signed(#"{"events":[]}"#, app: "bad app/..")
            #expect(try await post(headers) == (.badRequest, "invalid_app"))
            headers = GatewayAPITests.signed(#"{"events":[]}"#, app: app, timestamp: "12345678901234")
            #expect(try await post(headers) == (.badRequest, "missing_timestamp"))
            headers = GatewayAPITests.signed(#"{"events":[]}"#, app: app, timestamp: String(Int(Date().timeIntervalSince1970) - 3600))
            #expect(try await post(headers) == (.forbidden, "stale_timestamp"))
            headers = GatewayAPITests.signed(#"{"events":[]}"#, app: app)
            headers[.fanflowSignature] = "sha256=abcd"
            #expect(try await post(headers) == (.unauthorized, "bad_signature"))
            let huge = String(repeating: " ", count: Gateway.serverEventsBodyLimit + 1)
            headers = GatewayAPITests.signed(huge, app: app)
            let tooLarge = try await client.execute(uri: "/v1/events", method: .post, headers: headers, body: ByteBuffer(string: huge))
            #expect(tooLarge.status == .contentTooLarge, "\(tooLarge.status) \(String(buffer: tooLarge.body))")
            // Only a well-formed, fresh request reaches the lookup: here the database cannot answer,
            // and the 503 names no internals.
            let response = try await Self.events(client, app: app)
            #expect(response.status == .serviceUnavailable)
            #expect(Self.errorBody(response)["code"] as? String == "database_unavailable")
            #expect(!String(buffer: response.body).contains("127.0.0.1") && !String(buffer: response.body).lowercased().contains("connect"))
        }
    }

    @Test("unknown app ids: cached (negative), and limited per client IP (IPv6 by /64) before the database, behind trusted proxies only")
    func unknownAppsLimited() async throws {
        try await GatewayHarness.run(["FANFLOW_TRUSTED_PROXIES": "127.0.0.1/32,::1/128", "FANFLOW_APP_LOOKUP_RATE_PER_IP": "1"]) { client, _, gateway in
            func post(_ app: String, from ip: String) async throws -> HTTPResponse.Status {
                try await Self.events(client, app: app, headers: [.forwardedFor: ip]).status
            }
            let prefix = TestEnvironment.unique("nx")
            let known = TestEnvironment.unique("shop")
            try await GatewayHarness.register(client, "server", known, ["secret": Self.secret])
            #expect(try await post(known, from: "198.51.100.200") == .ok)
            /// Names unknown ids from `ip` until refused; how many were looked up first.
            func exhaust(_ ip: String, _ tag: String) async throws -> Int {
                var looked = 0
                for n in 0..<50 {
                    let status = try await post("\(prefix)-\(tag)\(n)", from: ip)
                    if status == .tooManyRequests { return looked }
                    #expect(status == .notFound)
                    looked += 1
                }
                return looked
            }
            // A burst of 2 (2 s at 1/s) is looked up, then refused without a lookup (a slow run may refill one or two).
            let started = ContinuousClock.now
            let looked = try await exhaust("1.1.1.1, 203.0.113.7", "a")
            let elapsed = Double((ContinuousClock.now - started).components.seconds) + 1
            #expect(looked >= 2 && Double(looked) <= 2 + elapsed, "\(looked) lookups in \(elapsed) s")
            // What the client wrote left of the proxy's hop is not believed: still the same client.
            #expect(try await post("\(prefix)-b2", from: "203.0.113.8, 203.0.113.7") == .tooManyRequests)
            // Another client has its own bucket.
            #expect(try await post("\(prefix)-b", from: "203.0.113.8") == .notFound)
            // An app the gateway knows (cached) is never limited, from the same client.
            #expect(try await post(known, from: "203.0.113.7") == .ok)
            // IPv6: one /64 is one client.
            _ = try await exhaust("2001:db8:1:2::1", "v6")
            #expect(try await post("\(prefix)-v6x", from: "2001:db8:1:2:ffff::9") == .tooManyRequests)
            #expect(try await post("\(prefix)-v6y", from: "2001:db8:1:3::1") == .notFound)

            // The negative cache: an app added behind the gateway's back stays unknown for 2 s (no lookup), then is found.
            let late = TestEnvironment.unique("late")
            #expect(try await post(late, from: "198.51.100.1") == .notFound)
            let box = SecretBox(keys: try SecretKeys(base64: GatewayHarness.secretKey))
            let sealed = try box.seal(Array(#"{"secret":"\#(Self.secret)"}"#.utf8), platform: "server", appID: late)
            try await gateway.database.query("INSERT INTO apps (platform, app_id, credentials) VALUES ('server', $1, $2)", [late, sealed])
            #expect(try await post(late, from: "198.51.100.1") == .notFound)
            try await Task.sleep(for: .milliseconds(2_200))
            #expect(try await post(late, from: "198.51.100.1") == .ok)
        }
        // Without trusted proxies X-Forwarded-For is ignored: every "client" is the test's own address.
        try await GatewayHarness.run(["FANFLOW_APP_LOOKUP_RATE_PER_IP": "1"]) { client, _, _ in
            let prefix = TestEnvironment.unique("nx")
            var statuses: [HTTPResponse.Status] = []
            for n in 0..<10 {
                statuses.append(try await Self.events(client, app: "\(prefix)-\(n)", headers: [.forwardedFor: "203.0.113.\(n)"]).status)
            }
            #expect(statuses.filter { $0 == .tooManyRequests }.count >= 5, "\(statuses.map(\.code))")
        }
    }

    @Test("WeChat Pay merchants are cached: a notification's merchant lookup costs no query within 10 s")
    func merchantsCached() async throws {
        try await GatewayHarness.run { client, _, gateway in
            let merchant = TestEnvironment.unique("mch")
            let key = try _RSA.Signing.PrivateKey(keySize: .bits2048)
            try await GatewayHarness.register(client, "wechatpay", merchant,
                                              ["apiV3Key": String(repeating: "k", count: 32), "platformPublicKey": key.publicKey.pemRepresentation])
            #expect(try await gateway.wechatPayMerchants().contains { $0.appID == merchant })
            try await gateway.database.query("DELETE FROM apps WHERE platform = 'wechatpay' AND app_id = $1", [merchant])
            #expect(try await gateway.wechatPayMerchants().contains { $0.appID == merchant })
        }
    }

    @Test("code verification: limited per member and per IP; unknown codes and codes someone else verified answer alike")
    func codeVerification() async throws {
        try await GatewayHarness.run(["FANFLOW_CODE_VERIFY_PER_MINUTE_PER_MEMBER": "4", "FANFLOW_CODE_VERIFY_PER_MINUTE_PER_IP": "6",
                                      "FANFLOW_TRUSTED_PROXIES": "127.0.0.1/32"]) { client, _, gateway in
            let app = TestEnvironment.unique("wx")
            let directory = MemberDirectory(database: gateway.database)
            let alice = try await directory.resolve(Identity(platform: .wechat, app: app, openid: "alice"))
            let bob = try await directory.resolve(Identity(platform: .wechat, app: app, openid: "bob"))
            let carol = try await directory.resolve(Identity(platform: .wechat, app: app, openid: "carol"))
            let prefix = app.uppercased()
            let imported = try await client.execute(uri: "/admin/v1/product-codes", method: .post, headers: GatewayHarness.adminHeaders,
                                                    body: ByteBuffer(string: #"{"codes":[{"code":"\#(prefix)-1","sku":"S"}]}"#))
            #expect(imported.status == .ok)
            func verify(_ member: Int64, _ code: String, ip: String) async throws -> TestResponse {
                let token = GatewayHarness.memberTokens.mint(member: member, expiresAt: Date().addingTimeInterval(600))
                return try await client.execute(uri: "/v1/codes/verify", method: .post,
                                                headers: [.authorization: "Bearer \(token)", .contentType: "application/json", .forwardedFor: ip],
                                                body: ByteBuffer(string: #"{"code":"\#(code)"}"#))
            }
            #expect(try await verify(alice, "\(prefix)-1", ip: "192.0.2.1").status == .ok)
            let used = try await verify(bob, "\(prefix)-1", ip: "192.0.2.2")
            let unknown = try await verify(bob, "\(prefix)-NOPE", ip: "192.0.2.2")
            #expect(used.status == .notFound && unknown.status == .notFound)
            #expect(Self.errorBody(used)["code"] as? String == "unknown_code")
            #expect(String(buffer: used.body) == String(buffer: unknown.body))
            // Per member: 4 a minute (bob has used 2).
            #expect(try await verify(bob, "\(prefix)-X1", ip: "192.0.2.2").status == .notFound)
            #expect(try await verify(bob, "\(prefix)-X2", ip: "192.0.2.2").status == .notFound)
            let limited = try await verify(bob, "\(prefix)-X3", ip: "192.0.2.3")
            #expect(limited.status == .tooManyRequests && Self.errorBody(limited)["code"] as? String == "rate_limited")
            // Per IP: 6 a minute, whichever members (192.0.2.2 has used 4).
            #expect(try await verify(carol, "\(prefix)-Y1", ip: "192.0.2.2").status == .notFound)
            #expect(try await verify(carol, "\(prefix)-Y2", ip: "192.0.2.2").status == .notFound)
            #expect(try await verify(carol, "\(prefix)-Y3", ip: "192.0.2.2").status == .tooManyRequests)
            #expect(try await verify(carol, "\(prefix)-Y4", ip: "192.0.2.9").status == .notFound)
        }
    }

    // MARK: C. Timeouts

    @Test("slowloris: half a request is cut after the read timeout even while bytes keep coming; half a head after the idle timeout")
    func slowloris() async throws {
        try await GatewayHarness.run(["FANFLOW_HTTP_READ_TIMEOUT_SECONDS": "1", "FANFLOW_HTTP_IDLE_TIMEOUT_SECONDS": "3"]) { client, _, _ in
            let port = try #require(client.port)
            // The head, then the body a byte every 0.3 s: each byte restarts the idle timer, the read timeout still cuts it.
            let dribble = ["POST /v1/collect HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"] + Array(repeating: " ", count: 20)
            let slowBody = try await Self.secondsUntilClosed(port: port, send: dribble, every: 0.3)
            #expect(slowBody >= 0.8 && slowBody < 2.5, "closed after \(slowBody) s")
            // Half a head: no request ever starts, the idle timeout closes it.
            let halfHead = try await Self.secondsUntilClosed(port: port, send: ["GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: "])
            #expect(halfHead >= 2.5 && halfHead < 6, "closed after \(halfHead) s")
            // A whole request on a fresh connection is answered as usual.
            let whole = try await Self.exchange(port: port, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            #expect(whole.hasPrefix("HTTP/1.1 200"), "\(whole)")
        }
    }

    /// Sends a whole request and reads until the server closes.
    static func exchange(port: Int, _ request: String) async throws -> String {
        try await withCheckedThrowingContinuation { continuation in
            Thread {
                let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
                defer { close(fd) }
                var address = CuttableProxy.loopback(port: port)
                let connected = withUnsafePointer(to: &address) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
                }
                guard connected == 0 else { continuation.resume(throwing: CuttableProxy.ProxyError("connect failed")); return }
                var timeout = timeval(tv_sec: 5, tv_usec: 0)
                setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
                _ = request.withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
                var received: [UInt8] = []
                var buffer = [UInt8](repeating: 0, count: 4096)
                while true {
                    let read = recv(fd, &buffer, buffer.count, 0)
                    if read <= 0 { break }
                    received += buffer[0..<read]
                }
                continuation.resume(returning: String(decoding: received, as: UTF8.self))
            }.start()
        }
    }

    /// Connects, sends `parts` `every` seconds apart, and measures until the server closes (8 s at most).
    static func secondsUntilClosed(port: Int, send parts: [String], every: Double = 0) async throws -> Double {
        try await withCheckedThrowingContinuation { continuation in
            Thread {
                let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
                defer { close(fd) }
                var address = CuttableProxy.loopback(port: port)
                let connected = withUnsafePointer(to: &address) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
                }
                guard connected == 0 else { continuation.resume(throwing: CuttableProxy.ProxyError("connect failed")); return }
                var timeout = timeval(tv_sec: 8, tv_usec: 0)
                setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
                let start = Date()
                var buffer = [UInt8](repeating: 0, count: 4096)
                for part in parts {
                    _ = part.withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
                    if every > 0 { Thread.sleep(forTimeInterval: every) }
                    // Closed while we were still sending?
                    let peek = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
                    if peek == 0 || (peek < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
                        continuation.resume(returning: Date().timeIntervalSince(start))
                        return
                    }
                }
                while true {
                    let read = recv(fd, &buffer, buffer.count, 0)
                    if read <= 0 { break }  // closed (0), reset or timed out (-1)
                }
                continuation.resume(returning: Date().timeIntervalSince(start))
            }.start()
        }
    }

    @Test("pool exhausted: 503 database_busy within the acquire timeout, with a request id and no internal text")
    func databaseBusy() async throws {
        try await GatewayHarness.run(["FANFLOW_DB_ACQUIRE_TIMEOUT_MS": "300"]) { client, _, gateway in
            let holders = (0..<8).map { _ in Task { try await gateway.database.query("SELECT pg_sleep(3)") } }
            try await Task.sleep(for: .milliseconds(500))
            let started = ContinuousClock.now
            let response = try await client.execute(uri: "/admin/v1/points-rules/some-rule", method: .get, headers: GatewayHarness.adminHeaders)
            #expect(ContinuousClock.now - started < .seconds(2))
            #expect(response.status == .serviceUnavailable)
            let error = Self.errorBody(response)
            #expect(error["code"] as? String == "database_busy")
            let requestID = try #require(response.headers[.requestID])
            #expect(error["requestId"] as? String == requestID)
            let text = String(buffer: response.body)
            #expect(!text.contains("pool of") && !text.contains("PostgreSQL") && !text.contains("Duration"))
            for holder in holders { _ = try? await holder.value }
        }
    }

    @Test("PostgreSQL statement timeout comes from the configuration and stops a long statement")
    func statementTimeout() async throws {
        try await GatewayHarness.run(["FANFLOW_DB_STATEMENT_TIMEOUT_SECONDS": "1"]) { _, _, gateway in
            let shown = try await gateway.database.query("SHOW statement_timeout")
            #expect(shown.first?.string("statement_timeout") == "1s")
            let started = ContinuousClock.now
            await #expect(throws: PostgresError.self) { try await gateway.database.query("SELECT pg_sleep(5)") }
            #expect(ContinuousClock.now - started < .seconds(3))
        }
    }

    @Test("/metrics: 401 without the token when FANFLOW_METRICS_TOKEN is set, 200 with it")
    func metricsToken() async throws {
        let token = "metrics-token-0123456789"
        try await GatewayHarness.run(["FANFLOW_METRICS_TOKEN": token]) { client, _, _ in
            #expect(try await client.execute(uri: "/metrics", method: .get).status == .unauthorized)
            #expect(try await client.execute(uri: "/metrics", method: .get, headers: [.authorization: "Bearer wrong-token-0123456789"]).status == .unauthorized)
            let response = try await client.execute(uri: "/metrics", method: .get, headers: [.authorization: "Bearer \(token)"])
            #expect(response.status == .ok && String(buffer: response.body).contains("# TYPE"))
        }
    }

    // MARK: D. Plain-mode WeChat

    @Test("plain-mode WeChat: a (timestamp, nonce) replayed with another body is refused; WeChat's own retry passes; safe mode can be required")
    func wechatPlainMode() async throws {
        try await GatewayHarness.run(["FANFLOW_WECHAT_REQUIRE_SAFE_MODE": "true"]) { client, tap, _ in
            let app = TestEnvironment.unique("wx"), safeApp = TestEnvironment.unique("wx")
            try await GatewayHarness.register(client, "wechat", app, ["token": "tok"])
            try await GatewayHarness.register(client, "wechat", safeApp, ["token": "tok", "encodingAESKey": GatewayWebhookTests.aesKey])
            let now = GatewayWebhookTests.now
            func message(_ from: String) -> ByteBuffer {
                ByteBuffer(string: "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[\(from)]]></FromUserName><CreateTime>\(now)</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe]]></Event></xml>")
            }
            // WeChat's documented signing: sha1 of the sorted token, timestamp and nonce.
            let query = GatewayWebhookTests.wechatQuery(token: "tok", timestamp: now, nonce: "20240601")
            for _ in 0..<2 {  // the request, then WeChat's retry of it (same body)
                let response = try await client.execute(uri: "/wechat/\(app)?\(query)", method: .post, body: message("fan-1"))
                #expect(response.status == .ok && String(buffer: response.body) == "success")
            }
            let replayed = try await client.execute(uri: "/wechat/\(app)?\(query)", method: .post, body: message("attacker-chosen"))
            #expect(replayed.status == .forbidden)
            #expect(Self.errorBody(replayed)["code"] as? String == "replayed")
            let published = try await tap.wait(app: app, count: 1)
            #expect(published.map(\.envelope.subject.openid) == ["fan-1"])

            // An app with an EncodingAESKey: plain callbacks refused, safe mode accepted.
            let plain = try await client.execute(uri: "/wechat/\(safeApp)?\(GatewayWebhookTests.wechatQuery(token: "tok"))", method: .post,
                                                 body: message("fan-2"))
            #expect(plain.status == .forbidden && Self.errorBody(plain)["code"] as? String == "safe_mode_required")
            let cipher = try WeChatCrypto(encodingAESKey: GatewayWebhookTests.aesKey, appID: safeApp)
            let encrypted = cipher.encrypt(Array(String(buffer: message("fan-2")).utf8))
            let nonce = "778899"
            let signature = WeChatCrypto.signature(["tok", now, nonce, encrypted])
            let safe = try await client.execute(
                uri: "/wechat/\(safeApp)?encrypt_type=aes&msg_signature=\(signature)&timestamp=\(now)&nonce=\(nonce)", method: .post,
                body: ByteBuffer(string: "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><Encrypt><![CDATA[\(encrypted)]]></Encrypt></xml>"))
            #expect(safe.status == .ok, "\(String(buffer: safe.body))")
        }
    }

    // MARK: E. CORS

    @Test("CORS: only the H5 routes answer it, only for configured origins; admin routes never")
    func cors() async throws {
        let allowed = "https://h5.brand.example"
        try await GatewayHarness.run(["FANFLOW_H5_ORIGINS": allowed]) { client, _, _ in
            func preflight(_ uri: String, origin: String) async throws -> TestResponse {
                try await client.execute(uri: uri, method: .options,
                                         headers: [.origin: origin, .accessControlRequestMethod: "POST",
                                                   .accessControlRequestHeaders: "authorization, content-type"])
            }
            for uri in ["/v1/codes/verify", "/v1/collect", "/v1/mall/redemptions", "/v1/flash-sales/sale-1/reservations"] {
                let response = try await preflight(uri, origin: allowed)
                #expect(response.headers[.accessControlAllowOrigin] == allowed, "\(uri)")
                #expect(response.headers[.accessControlAllowHeaders]?.contains("authorization") == true)
                #expect(try await preflight(uri, origin: "https://evil.example").headers[.accessControlAllowOrigin] == nil)
            }
            for uri in ["/admin/v1/apps", "/admin/v1/apps/server/x", "/v1/events", "/wechat/x"] {
                let response = try await preflight(uri, origin: allowed)
                #expect(response.headers[.accessControlAllowOrigin] == nil, "\(uri)")
                #expect(response.headers[.accessControlAllowHeaders] == nil, "\(uri)")
            }
            var headers = GatewayHarness.adminHeaders
            headers[.origin] = allowed
            let admin = try await client.execute(uri: "/admin/v1/apps", method: .get, headers: headers)
            #expect(admin.status == .ok && admin.headers[.accessControlAllowOrigin] == nil)
            // A beacon from the allowed origin carries the grant, its refusal too (so the page can read it).
            let refused = try await client.execute(uri: "/v1/collect", method: .post, headers: [.origin: allowed, .contentType: "application/json"],
                                                   body: ByteBuffer(string: #"{"clientId":"c1","events":[{"type":"page_view"}]}"#))
            #expect(refused.status == .badRequest && refused.headers[.accessControlAllowOrigin] == allowed)
            let other = try await client.execute(uri: "/v1/collect", method: .post, headers: [.origin: "https://evil.example"],
                                                 body: ByteBuffer(string: #"{"clientId":"c1","events":[{"type":"page_view"}]}"#))
            #expect(other.headers[.accessControlAllowOrigin] == nil)
        }
    }
}
