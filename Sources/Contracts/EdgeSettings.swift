import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The gateway's edge settings (proxies, limits, timeouts, CORS, metrics), read apart from the
/// rest of the configuration so their parsing stays in one place.
struct EdgeSettings {
    var trustedProxies: [String] = []
    var appLookupRatePerIP = 10
    var codeVerifyPerMember = 10
    var codeVerifyPerIP = 60
    var connectTimeout = 5
    var statementTimeout = 10
    var acquireTimeout = 2_000
    var idleTimeout = 60
    var readTimeout = 30
    var metricsToken: String?
    var requireSafeMode = false
    var h5Origins: [String] = []

    /// The settings and the problems found in them (`integer` reports its own).
    static func load(value: (String) -> String?, integer: (String, Int, ClosedRange<Int>) -> Int)
        -> (settings: EdgeSettings, problems: [ConfigurationError]) {
        var settings = EdgeSettings()
        var problems: [ConfigurationError] = []
        if let text = value("FANFLOW_TRUSTED_PROXIES") {
            for entry in text.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !entry.isEmpty {
                // The gateway's own parser (``CIDR``): what passes here is what the gateway uses
                // (`::ffff:10.0.0.0/104` is an IPv4 network with a prefix over 32: refused).
                if CIDR(entry) != nil { settings.trustedProxies.append(entry) } else {
                    problems.append(ConfigurationError(variable: "FANFLOW_TRUSTED_PROXIES",
                                                       problem: "expected comma-separated CIDRs like 10.0.0.0/8,2001:db8::/32, got \(entry)"))
                }
            }
        }
        settings.appLookupRatePerIP = integer("FANFLOW_APP_LOOKUP_RATE_PER_IP", 10, 0...1_000_000)
        settings.codeVerifyPerMember = integer("FANFLOW_CODE_VERIFY_PER_MINUTE_PER_MEMBER", 10, 0...1_000_000)
        settings.codeVerifyPerIP = integer("FANFLOW_CODE_VERIFY_PER_MINUTE_PER_IP", 60, 0...1_000_000)
        settings.connectTimeout = integer("FANFLOW_DB_CONNECT_TIMEOUT_SECONDS", 5, 1...60)
        settings.statementTimeout = integer("FANFLOW_DB_STATEMENT_TIMEOUT_SECONDS", 10, 1...3600)
        settings.acquireTimeout = integer("FANFLOW_DB_ACQUIRE_TIMEOUT_MS", 2_000, 10...60_000)
        settings.idleTimeout = integer("FANFLOW_HTTP_IDLE_TIMEOUT_SECONDS", 60, 1...3600)
        settings.readTimeout = integer("FANFLOW_HTTP_READ_TIMEOUT_SECONDS", 30, 1...600)
        if let token = value("FANFLOW_METRICS_TOKEN") {
            if token.count < 16 {
                problems.append(ConfigurationError(variable: "FANFLOW_METRICS_TOKEN", problem: "must be at least 16 characters"))
            } else {
                settings.metricsToken = token
            }
        }
        if let text = value("FANFLOW_WECHAT_REQUIRE_SAFE_MODE")?.lowercased() {
            switch text {
            case "true", "1", "yes", "on": settings.requireSafeMode = true
            case "false", "0", "no", "off": settings.requireSafeMode = false
            default:
                problems.append(ConfigurationError(variable: "FANFLOW_WECHAT_REQUIRE_SAFE_MODE", problem: "expected true or false, got \(text)"))
            }
        }
        if let text = value("FANFLOW_H5_ORIGINS") {
            for entry in text.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !entry.isEmpty {
                if isOrigin(entry) { settings.h5Origins.append(entry) } else {
                    problems.append(ConfigurationError(variable: "FANFLOW_H5_ORIGINS",
                                                       problem: "expected exact origins like https://h5.brand.example (scheme, host, optional port; no path), got \(entry)"))
                }
            }
        }
        return (settings, problems)
    }

    func apply(to configuration: inout FanFlowConfiguration) {
        configuration.trustedProxies = trustedProxies
        configuration.appLookupRatePerIP = appLookupRatePerIP
        configuration.codeVerifyPerMinutePerMember = codeVerifyPerMember
        configuration.codeVerifyPerMinutePerIP = codeVerifyPerIP
        configuration.databaseConnectTimeoutSeconds = connectTimeout
        configuration.databaseStatementTimeoutSeconds = statementTimeout
        configuration.databaseAcquireTimeoutMilliseconds = acquireTimeout
        configuration.httpIdleTimeoutSeconds = idleTimeout
        configuration.httpReadTimeoutSeconds = readTimeout
        configuration.metricsToken = metricsToken
        configuration.wechatRequireSafeMode = requireSafeMode
        configuration.h5Origins = h5Origins
    }

    /// `scheme://host[:port]` exactly as a browser sends `Origin`.
    static func isOrigin(_ text: String) -> Bool {
        guard let components = URLComponents(string: text), let scheme = components.scheme, ["http", "https"].contains(scheme),
              let host = components.host, !host.isEmpty, components.path.isEmpty, components.query == nil,
              components.fragment == nil, components.user == nil else { return false }
        return true
    }
}
