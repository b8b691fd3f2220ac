import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1

/// Plain HTTP calls outside the timed phase: the admin API, `/metrics`, the broker's management
/// API, the fake platform's stats.
enum Web {
    struct Answer {
        let status: Int
        let body: [UInt8]
        var text: String { String(decoding: body, as: UTF8.self) }
        func json() throws -> Any { try JSONSerialization.jsonObject(with: Data(body)) }
    }

    /// A URL with `user:password@` becomes the URL without it and a Basic authorization header.
    static func split(_ url: String) -> (url: String, headers: [(String, String)]) {
        guard var components = URLComponents(string: url), let user = components.user else { return (url, []) }
        let credentials = Data("\(user):\(components.password ?? "")".utf8).base64EncodedString()
        components.user = nil
        components.password = nil
        return (components.string ?? url, [("Authorization", "Basic \(credentials)")])
    }

    static func call(_ method: HTTPMethod, _ url: String, headers: [(String, String)] = [], body: String? = nil,
                     timeout: Int64 = 30) async throws -> Answer {
        let (plain, auth) = split(url)
        var request = HTTPClientRequest(url: plain)
        request.method = method
        for (name, value) in auth + headers { request.headers.add(name: name, value: value) }
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: body))
        }
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(timeout))
        let bytes = try await response.body.collect(upTo: 64 << 20)
        return Answer(status: Int(response.status.code), body: Array(bytes.readableBytesView))
    }

    /// A call that must succeed (2xx): the admin setup of a figure.
    @discardableResult
    static func must(_ method: HTTPMethod, _ url: String, headers: [(String, String)] = [], body: String? = nil) async throws -> Answer {
        let answer = try await call(method, url, headers: headers, body: body)
        guard (200..<300).contains(answer.status) else {
            throw BenchError("\(method) \(url) answered \(answer.status): \(answer.text.prefix(300))")
        }
        return answer
    }

    /// A counter from Prometheus text: the sample whose name and labels are exactly `series`.
    static func metric(_ text: String, _ series: String) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(series) {
            let rest = line.dropFirst(series.count)
            guard rest.first == " " else { continue }
            return Double(rest.split(separator: " ").first ?? "")
        }
        return nil
    }

    /// Events the gateway published (broker-confirmed) so far.
    static func acceptedEvents(gateway: String) async throws -> Int {
        let text = try await must(.GET, "\(gateway)/metrics").text
        // No sample yet means nothing accepted since the gateway started.
        return Int(metric(text, #"fanflow_gateway_events_total{outcome="accepted"}"#) ?? 0)
    }
}

/// RabbitMQ's management API for one vhost: queue depths and delivery counts.
struct Broker {
    let management: String
    let vhost: String

    init(vhost: String) throws {
        management = try environment("FANFLOW_AMQP_MANAGEMENT_URL")
        self.vhost = vhost
    }

    struct QueueStats {
        var name: String
        var messages: Int
        var deliverGet: Int
        var published: Int
        var redelivered: Int
    }

    var vhostPath: String { vhost.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-_."))) ?? vhost }

    func queues() async throws -> [QueueStats] {
        let answer = try await Web.must(.GET, "\(management)/api/queues/\(vhostPath)?columns=name,messages,message_stats")
        guard let list = try answer.json() as? [[String: Any]] else { throw BenchError("the management API's queue list is not a list") }
        return try list.map { queue in
            guard let name = queue["name"] as? String else { throw BenchError("a queue without a name in the management API") }
            let stats = queue["message_stats"] as? [String: Any] ?? [:]
            func int(_ object: [String: Any], _ key: String) -> Int { (object[key] as? NSNumber)?.intValue ?? 0 }
            return QueueStats(name: name, messages: int(queue, "messages"), deliverGet: int(stats, "deliver_get"),
                              published: int(stats, "publish"), redelivered: int(stats, "redeliver"))
        }
    }

    struct Totals: Codable, Equatable {
        var deliverGet = 0
        var published = 0
        var redelivered = 0
    }

    /// Delivery totals over the vhost's queues once the management API's figures stop moving: it
    /// refreshes them every 5 s (collect_statistics_interval), so a read right after the load
    /// would miss the last deliveries. Two equal reads 2.5 s apart, at least 6 s after `since`.
    func settledTotals(since: Double) async throws -> Totals {
        let wait = 6 - (now() - since)
        if wait > 0 { try await Task.sleep(for: .milliseconds(Int(wait * 1000))) }
        var last = try await totals()
        for _ in 0..<20 {
            try await Task.sleep(for: .milliseconds(2500))
            let next = try await totals()
            if next == last { return next }
            last = next
        }
        return last
    }

    func totals() async throws -> Totals {
        var out = Totals()
        for queue in try await queues() {
            out.deliverGet += queue.deliverGet
            out.published += queue.published
            out.redelivered += queue.redelivered
        }
        return out
    }

    func purge(_ queue: String) async throws {
        let answer = try await Web.call(.DELETE, "\(management)/api/queues/\(vhostPath)/\(queue)/contents")
        // A queue that does not exist (the topology changed) has nothing to purge.
        guard (200..<300).contains(answer.status) || answer.status == 404 else {
            throw BenchError("purging \(queue) answered \(answer.status): \(answer.text.prefix(200))")
        }
    }
}
