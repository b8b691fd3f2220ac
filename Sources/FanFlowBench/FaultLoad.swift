import ArgumentParser
import AsyncHTTPClient
import Contracts
@preconcurrency import Crypto
import Foundation
import NIOCore
import Platforms

/// Steady load for `scripts/bench faults`, at fixed rates whatever the gateway answers: signed
/// WeChat webhooks (plaintext mode, one text message each, a distinct MsgId and nonce each, signed
/// as they go so the timestamps stay fresh through a long run), signed business events to
/// `/v1/events` (batches, the points bench's mix of kinds) and flash-sale reservations (member
/// tokens and request ids from `flash-sale-requests`, one attempt per line).
///
/// It writes two files: `<output>.requests`, one line per request
/// (`sentMs doneMs stream status`, status 0 for no answer: refused connection, reset, timeout), and
/// `<output>.accepted`, one line per thing the gateway promised (`stream id`): the envelope id of
/// every webhook answered 2xx and of every event a `/v1/events` answer calls accepted or duplicate
/// (whatever the request's status: a 503 answer still names what it did accept), and the
/// reservation id of every reservation answered 2xx. The bench then looks each one up in PostgreSQL.
struct FaultLoad: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fault-load", abstract: "Steady webhooks, events and reservations at fixed rates; record what was accepted.")

    @Option(help: "The gateway's base URL.") var gateway: String
    @Option(help: "Seconds of load.") var seconds: Double
    @Option(help: "Webhooks per second.") var webhookRate: Double = 100
    @Option(help: "Business events per second (sent in batches of --event-batch).") var eventRate: Double = 100
    @Option(help: "Events per /v1/events request.") var eventBatch: Int = 5
    @Option(help: "Reservation attempts per second.") var reservationRate: Double = 100
    @Option(help: "The WeChat app registered at the gateway (plaintext mode).") var wechatApp: String
    @Option(help: "Its token.") var wechatToken: String
    @Option(help: "The server app registered at the gateway.") var serverApp: String
    @Option(help: "Its secret.") var serverSecret: String
    @Option(help: "The WeChat app the events' members belong to.") var memberApp: String = "wx-faults"
    @Option(help: "The flash sale.") var sale: String
    @Option(help: "Reservation attempts, `token<TAB>requestId` lines (from flash-sale-requests).") var reservations: String
    @Option(help: "A tag that makes this run's ids its own.") var run: String
    @Option(help: "Output file prefix.") var output: String
    @Option(help: "Requests in flight at most; a tick that finds them all busy is counted as not sent.") var maxInFlight: Int = 256
    @Option(help: "Seconds before a request without an answer counts as failed.") var timeout: Int64 = 5

    func validate() throws {
        guard seconds > 0, seconds <= 3600 else { throw ValidationError("--seconds must be in (0, 3600]") }
        for rate in [webhookRate, eventRate, reservationRate] where !(0...5_000).contains(rate) {
            throw ValidationError("rates must be within 0-5000 per second")
        }
        guard (1...100).contains(eventBatch) else { throw ValidationError("--event-batch must be 1-100") }
        guard (1...4_096).contains(maxInFlight) else { throw ValidationError("--max-in-flight must be 1-4096") }
        guard (1...60).contains(timeout) else { throw ValidationError("--timeout must be 1-60") }
    }

    func run() async throws {
        let attempts = try String(contentsOfFile: reservations, encoding: .utf8).split(separator: "\n").compactMap { line -> (String, String)? in
            let parts = line.split(separator: "\t")
            return parts.count == 2 ? (String(parts[0]), String(parts[1])) : nil
        }
        guard !attempts.isEmpty else { throw ValidationError("no reservation attempts in \(reservations)") }
        var configuration = HTTPClient.Configuration()
        configuration.timeout = .init(connect: .seconds(2), read: .seconds(self.timeout))
        configuration.connectionPool = .init(idleTimeout: .seconds(30), concurrentHTTP1ConnectionsPerHostSoftLimit: 128)
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        let recorder = Recorder()
        let end = now() + seconds
        let slots = InFlight(limit: maxInFlight)
        let base = gateway.hasSuffix("/") ? String(gateway.dropLast()) : gateway
        let requestTimeout = TimeAmount.seconds(self.timeout)
        let msgBase = Int64(6_000_000_000_000_000_000) + Int64.random(in: 0..<1_000_000_000) * 1_000_000
        let eventKey = SymmetricKey(data: Array(serverSecret.utf8))
        let (wechatApp, wechatToken, serverApp, memberApp, sale, run, eventBatch) =
            (self.wechatApp, self.wechatToken, self.serverApp, self.memberApp, self.sale, self.run, self.eventBatch)

        /// One request: sent, timed, its answer handed to `accepted` for the ids it promises.
        @Sendable func send(_ stream: String, _ request: HTTPClientRequest, accepted: @escaping @Sendable (Int, [UInt8]) -> [String]) async {
            let sent = Date().timeIntervalSince1970
            var status = 0
            var ids: [String] = []
            do {
                let response = try await client.execute(request, timeout: requestTimeout)
                status = Int(response.status.code)
                let body = try await response.body.collect(upTo: 1 << 20)
                ids = accepted(status, Array(body.readableBytesView))
            } catch {
                status = 0
            }
            await recorder.record(stream: stream, sent: sent, done: Date().timeIntervalSince1970, status: status, accepted: ids)
        }

        /// Ticks at `rate` until the end; each tick sends one request unless every slot is busy.
        @Sendable func paced(_ rate: Double, _ stream: String, _ make: @escaping @Sendable (Int) -> (HTTPClientRequest, @Sendable (Int, [UInt8]) -> [String])) async {
            guard rate > 0 else { return }
            await withTaskGroup(of: Void.self) { group in
                var next = now()
                var n = 0
                while next < end {
                    let wait = next - now()
                    if wait > 0 { try? await Task.sleep(for: .nanoseconds(Int64(wait * 1e9))) }
                    next += 1 / rate
                    guard await slots.take() else { await recorder.skipped(stream); continue }
                    let (request, accepted) = make(n)
                    n += 1
                    group.addTask {
                        await send(stream, request, accepted: accepted)
                        await slots.give()
                    }
                }
                await group.waitForAll()
            }
        }

        async let webhooks: Void = paced(webhookRate, "webhook") { n in
            let timestamp = String(Int(Date().timeIntervalSince1970))
            let nonce = "\(run)\(n)"
            let signature = Signing.wechat([wechatToken, timestamp, nonce])
            let msgID = String(msgBase + Int64(n))
            var request = HTTPClientRequest(url: "\(base)/wechat/\(wechatApp)?signature=\(signature)&timestamp=\(timestamp)&nonce=\(nonce)")
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "text/xml")
            let xml = "<xml><ToUserName><![CDATA[gh_faults]]></ToUserName><FromUserName><![CDATA[o-faults-\(n % 5000)]]></FromUserName>"
                + "<CreateTime>\(timestamp)</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[签到 \(n)]]></Content>"
                + "<MsgId>\(msgID)</MsgId></xml>"
            request.body = .bytes(ByteBuffer(string: xml))
            let id = Signing.eventID(.wechat, app: wechatApp, ["msg", msgID])
            return (request, { status, _ in (200..<300).contains(status) ? [id] : [] })
        }
        async let events: Void = paced(eventRate / Double(eventBatch), "events") { n in
            let timestamp = String(Int(Date().timeIntervalSince1970))
            let time = RFC3339.format(Date().addingTimeInterval(-60))
            var items: [String] = []
            for k in 0..<eventBatch {
                let i = n * eventBatch + k
                let (kind, attributes): (String, String)
                switch i % 10 {
                case 0, 1, 2: (kind, attributes) = ("community.post", #"{"postId":"p\#(i)"}"#)
                case 3, 4: (kind, attributes) = ("community.comment", #"{"postId":"p\#(i)"}"#)
                case 5, 6: (kind, attributes) = ("community.share", #"{"postId":"p\#(i)","channel":"moments"}"#)
                case 7, 8: (kind, attributes) = ("member.checkin", "{}")
                default: (kind, attributes) = ("mall.order_delivered", #"{"orderId":"o\#(run)\#(i)","amount":\#(1000 + i % 50_000)}"#)
                }
                items.append(#"{"id":"\#(run)-\#(i)","kind":"\#(kind)","member":{"platform":"wechat","app":"\#(memberApp)","openid":"m\#((i &* 7919) % 20_000)"},"occurredAt":"\#(time)","attributes":\#(attributes)}"#)
            }
            let body = #"{"events":[\#(items.joined(separator: ","))]}"#
            let mac = HMAC<SHA256>.authenticationCode(for: Array((timestamp + "." + body).utf8), using: eventKey)
            var request = HTTPClientRequest(url: "\(base)/v1/events")
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "application/json")
            request.headers.add(name: "X-FanFlow-App", value: serverApp)
            request.headers.add(name: "X-FanFlow-Timestamp", value: timestamp)
            request.headers.add(name: "X-FanFlow-Signature", value: "sha256=" + mac.map { String(format: "%02x", $0) }.joined())
            request.body = .bytes(ByteBuffer(string: body))
            return (request, { _, body in
                guard let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any],
                      let results = object["results"] as? [[String: Any]] else { return [] }
                return results.compactMap { result in
                    guard let status = result["status"] as? String, status == "accepted" || status == "duplicate",
                          let brandID = result["id"] as? String else { return nil }
                    return Signing.eventID(.server, app: serverApp, ["event", brandID])
                }
            })
        }
        async let reservationLoad: Void = paced(reservationRate, "reservation") { n in
            let (token, requestID) = attempts[n % attempts.count]
            var request = HTTPClientRequest(url: "\(base)/v1/flash-sales/\(sale)/reservations")
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "application/json")
            request.headers.add(name: "Authorization", value: "Bearer \(token)")
            // A request id used again (more ticks than lines) gets its first answer again, no second unit.
            request.body = .bytes(ByteBuffer(string: #"{"quantity":1,"requestId":"\#(requestID)"}"#))
            return (request, { status, body in
                guard (200..<300).contains(status),
                      let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any],
                      let id = object["reservationId"] as? String else { return [] }
                return [id]
            })
        }
        _ = await (webhooks, events, reservationLoad)
        try await client.shutdown()
        try await recorder.write(prefix: output)
        print(await recorder.summary())
    }
}

/// Slots for requests in flight.
actor InFlight {
    let limit: Int
    var busy = 0
    init(limit: Int) { self.limit = limit }
    func take() -> Bool {
        guard busy < limit else { return false }
        busy += 1
        return true
    }
    func give() { busy -= 1 }
}

/// What the load saw, written out at the end.
actor Recorder {
    var requests: [String] = []
    var accepted: [String] = []
    var skips: [String: Int] = [:]
    var statuses: [String: [Int: Int]] = [:]

    func record(stream: String, sent: Double, done: Double, status: Int, accepted ids: [String]) {
        requests.append("\(Int64(sent * 1000)) \(Int64(done * 1000)) \(stream) \(status)")
        for id in ids { accepted.append("\(stream) \(id)") }
        statuses[stream, default: [:]][status, default: 0] += 1
    }

    func skipped(_ stream: String) { skips[stream, default: 0] += 1 }

    func write(prefix: String) throws {
        try (requests.joined(separator: "\n") + "\n").write(toFile: prefix + ".requests", atomically: true, encoding: .utf8)
        try (accepted.joined(separator: "\n") + (accepted.isEmpty ? "" : "\n")).write(toFile: prefix + ".accepted", atomically: true, encoding: .utf8)
    }

    func summary() -> String {
        statuses.keys.sorted().map { stream in
            let counts = statuses[stream, default: [:]].sorted { $0.key < $1.key }.map { "\($0.key):\($0.value)" }.joined(separator: " ")
            return "\(stream) \(counts) not-sent:\(skips[stream, default: 0])"
        }.joined(separator: "\n")
    }
}
