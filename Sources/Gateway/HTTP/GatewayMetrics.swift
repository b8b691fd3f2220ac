import Pushes
import Synchronization

/// The gateway's counters, rendered in the Prometheus text format at `/metrics`.
///
/// One small lock-protected table: a request touches it once or twice, which costs far less than
/// the publish it waits for.
public final class GatewayMetrics: Sendable {
    public enum Counter: String, Sendable {
        case brokerUnavailable = "fanflow_gateway_broker_unavailable_total"
        case dedupeUnavailable = "fanflow_gateway_dedupe_unavailable_total"
        case beaconsRateLimited = "fanflow_gateway_beacons_rate_limited_total"
        /// Plain-mode WeChat callbacks taken without the replay check (Redis unreachable).
        case replayCheckUnavailable = "fanflow_gateway_replay_check_unavailable_total"
    }

    struct RequestKey: Hashable { let route: String; let status: Int }

    struct State {
        var requests: [RequestKey: Int] = [:]
        var errors: [String: Int] = [:]
        var counters: [Counter: Int] = [:]
        var events: [String: Int] = [:]
        var publishBuckets = [Int](repeating: 0, count: GatewayMetrics.bounds.count)
        var publishCount = 0
        var publishSum = 0.0
        var publishFailures = 0
    }

    static let bounds: [Double] = [0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5]
    private let state = Mutex(State())

    public init() {}

    public func request(route: String, status: Int, errorCode: String? = nil) {
        state.withLock {
            $0.requests[RequestKey(route: route, status: status), default: 0] += 1
            if let errorCode { $0.errors[errorCode, default: 0] += 1 }
        }
    }

    public func count(_ counter: Counter, by amount: Int = 1) {
        state.withLock { $0.counters[counter, default: 0] += amount }
    }

    /// Events by outcome (accepted, duplicate, in_flight, failed, rejected).
    public func events(_ outcome: String, by amount: Int = 1) {
        state.withLock { $0.events[outcome, default: 0] += amount }
    }

    /// One batch's confirm wait, counted once per message.
    public func observePublish(seconds: Double, count: Int, failures: Int) {
        state.withLock {
            if let bucket = Self.bounds.firstIndex(where: { seconds <= $0 }) { $0.publishBuckets[bucket] += count }
            $0.publishCount += count
            $0.publishSum += seconds * Double(count)
            $0.publishFailures += failures
        }
    }

    public func render(confirmsOutstanding: Int) -> String {
        let s = state.withLock { $0 }
        var out = ""
        out += "# HELP fanflow_gateway_requests_total HTTP requests by route and status.\n"
        out += "# TYPE fanflow_gateway_requests_total counter\n"
        for (key, value) in s.requests.sorted(by: { ($0.key.route, $0.key.status) < ($1.key.route, $1.key.status) }) {
            out += "fanflow_gateway_requests_total{route=\"\(key.route)\",status=\"\(key.status)\"} \(value)\n"
        }
        out += "# HELP fanflow_gateway_errors_total Refused requests by error code.\n"
        out += "# TYPE fanflow_gateway_errors_total counter\n"
        for (code, value) in s.errors.sorted(by: { $0.key < $1.key }) {
            out += "fanflow_gateway_errors_total{code=\"\(code)\"} \(value)\n"
        }
        out += "# HELP fanflow_gateway_events_total Events by outcome.\n"
        out += "# TYPE fanflow_gateway_events_total counter\n"
        for (outcome, value) in s.events.sorted(by: { $0.key < $1.key }) {
            out += "fanflow_gateway_events_total{outcome=\"\(outcome)\"} \(value)\n"
        }
        for counter in [Counter.brokerUnavailable, .dedupeUnavailable, .beaconsRateLimited, .replayCheckUnavailable] {
            out += "# TYPE \(counter.rawValue) counter\n\(counter.rawValue) \(s.counters[counter] ?? 0)\n"
        }
        out += "# HELP fanflow_gateway_publish_seconds Time from publish to the broker's confirm.\n"
        out += "# TYPE fanflow_gateway_publish_seconds histogram\n"
        var cumulative = 0
        for (index, bound) in Self.bounds.enumerated() {
            cumulative += s.publishBuckets[index]
            out += "fanflow_gateway_publish_seconds_bucket{le=\"\(bound)\"} \(cumulative)\n"
        }
        out += "fanflow_gateway_publish_seconds_bucket{le=\"+Inf\"} \(s.publishCount)\n"
        out += "fanflow_gateway_publish_seconds_sum \(s.publishSum)\n"
        out += "fanflow_gateway_publish_seconds_count \(s.publishCount)\n"
        out += "# TYPE fanflow_gateway_publish_failures_total counter\nfanflow_gateway_publish_failures_total \(s.publishFailures)\n"
        out += "# HELP fanflow_gateway_confirms_outstanding Published messages awaiting the broker's confirm.\n"
        out += "# TYPE fanflow_gateway_confirms_outstanding gauge\nfanflow_gateway_confirms_outstanding \(confirmsOutstanding)\n"
        return out
    }

    /// Every push worker's figures for today (Beijing day), per app, as gauges: they restart at the
    /// day's start, as the platforms' quotas do.
    public static func render(pushes: [PushStats.AppDay]) -> String {
        func label(_ text: String) -> String {
            text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
        }
        var out = "# HELP fanflow_push_outcomes_today Push outcomes today by app (sent, unsubscribed, user_block, refused, deferred, retried, dead).\n"
        out += "# TYPE fanflow_push_outcomes_today gauge\n"
        for app in pushes {
            for (outcome, count) in app.outcomes.sorted(by: { $0.key < $1.key }) {
                out += "fanflow_push_outcomes_today{app=\"\(label(app.app))\",outcome=\"\(label(outcome))\"} \(count)\n"
            }
        }
        out += "# HELP fanflow_push_quota_left Messages an app may still send today.\n# TYPE fanflow_push_quota_left gauge\n"
        for app in pushes { out += "fanflow_push_quota_left{app=\"\(label(app.app))\"} \(app.quotaLeft)\n" }
        out += "# HELP fanflow_push_forced_token_refreshes_today Forced access-token refreshes today (WeChat allows 20 a day).\n"
        out += "# TYPE fanflow_push_forced_token_refreshes_today gauge\n"
        for app in pushes { out += "fanflow_push_forced_token_refreshes_today{app=\"\(label(app.app))\"} \(app.forcedRefreshes)\n" }
        return out
    }
}
