@preconcurrency import Crypto
import ArgumentParser
import Contracts
import Foundation

/// Pre-signed `/v1/events` requests for `scripts/bench points`: batches of business events in the
/// mix a loyalty program sees (posts, comments, shares to moments, check-ins, deliveries), for a
/// population of members, each event distinct so none is taken for a retry. One line per request:
/// `timestamp<TAB>signature<TAB>body`.
struct PointsRequests: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "points-requests", abstract: "Write pre-signed /v1/events requests for wrk.")

    @Option(help: "The server app id registered at the gateway.") var app: String
    @Option(help: "The server app's secret.") var secret: String
    @Option(help: "The WeChat app the members belong to.") var memberApp: String = "wx-bench"
    @Option(help: "How many distinct members.") var members: Int = 20_000
    @Option(help: "How many requests.") var count: Int = 2_000
    @Option(help: "Events per request.") var batch: Int = 100
    @Option(help: "A tag that makes this run's event ids its own.") var run: String
    @Option(help: "Output file.") var output: String

    func run() async throws {
        let key = SymmetricKey(data: Array(secret.utf8))
        let timestamp = String(Int(Date().timeIntervalSince1970))
        // Events of the last hour, in the past so the gateway takes them, spread over members.
        let now = Date()
        var out = ""
        out.reserveCapacity(count * batch * 190)
        var n = 0
        for _ in 0..<count {
            var events: [String] = []
            events.reserveCapacity(batch)
            for _ in 0..<batch {
                let member = (n &* 7919) % members
                let time = RFC3339.format(now.addingTimeInterval(-Double(n % 3600) - 60))
                let (kind, attributes): (String, String)
                switch n % 10 {
                case 0, 1, 2: (kind, attributes) = ("community.post", #"{"postId":"p\#(n)"}"#)
                case 3, 4: (kind, attributes) = ("community.comment", #"{"postId":"p\#(n)"}"#)
                case 5, 6: (kind, attributes) = ("community.share", #"{"postId":"p\#(n)","channel":"moments"}"#)
                case 7, 8: (kind, attributes) = ("member.checkin", "{}")
                default: (kind, attributes) = ("mall.order_delivered", #"{"orderId":"o\#(n)","amount":\#(1000 + n % 50_000)}"#)
                }
                events.append(#"{"id":"\#(run)-\#(n)","kind":"\#(kind)","member":{"platform":"wechat","app":"\#(memberApp)","openid":"m\#(member)"},"occurredAt":"\#(time)","attributes":\#(attributes)}"#)
                n += 1
            }
            let body = #"{"events":[\#(events.joined(separator: ","))]}"#
            let mac = HMAC<SHA256>.authenticationCode(for: Array((timestamp + "." + body).utf8), using: key)
            out += timestamp + "\tsha256=" + mac.map { String(format: "%02x", $0) }.joined() + "\t" + body + "\n"
        }
        try out.write(toFile: output, atomically: false, encoding: .utf8)
    }
}
