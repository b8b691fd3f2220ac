import Foundation

/// A configuration problem found at start-up: names the variable and what it expects.
public struct ConfigurationError: Error, Sendable, CustomStringConvertible, Equatable {
    public let variable: String
    public let problem: String
    public var description: String { "\(variable): \(problem)" }
}

/// Settings shared by every FanFlow process, read from `FANFLOW_*` environment variables and
/// validated once at start. A bad or missing value stops the process with a message naming it.
public struct FanFlowConfiguration: Sendable, Equatable {
    public var amqpURL: String
    public var redisURL: String
    public var databaseURL: String
    public var httpHost: String
    public var httpPort: Int
    /// Bearer token for `/admin/v1/*`; the gateway refuses to start without one.
    public var adminToken: String?
    /// Natural days and months (caps, check-ins, periodic jobs) are counted in this zone.
    public var timeZone: TimeZone
    /// Encrypts app secrets at rest when set (32 bytes, base64).
    public var secretKey: String?
    public var logLevel: String
    /// Gateway: webhook timestamps further than this from now are refused (replay protection).
    public var webhookFreshnessSeconds: Int = 300
    /// Gateway: how long a published event id is remembered to recognize platform retries.
    public var dedupeTTLSeconds: Int = 600
    /// Gateway: beacons accepted per second per site and per client IP (0: unlimited).
    public var beaconRatePerSite: Int = 2000
    public var beaconRatePerIP: Int = 100
    /// Gateway: flash-sale reservation attempts per second per member (0: unlimited) and per client
    /// IP (0, the default: none, since H5 traffic often arrives through a few carrier proxies).
    public var flashSaleRatePerMember: Int = 5
    public var flashSaleRatePerIP: Int = 0
    /// Scheduler: port of its `/metrics` and `/health` (0: none), on ``httpHost``.
    public var schedulerPort: Int = 8090
    /// Push pool: where WeChat's APIs are (a fake platform's address in tests and demos).
    public var wechatAPIBase: String = "https://api.weixin.qq.com"
    /// Push pool: where Alipay's OpenAPI gateway is (`/gateway.do` under it).
    public var alipayAPIBase: String = "https://openapi.alipay.com"
    /// Push pool: messages per second per app (0: unlimited) and per app and day (WeChat's template quota).
    public var pushRatePerApp: Int = 50
    /// Pipeline pool and scheduler: when to publish `fanflow.points.granted` / `fanflow.points.matured`.
    public var pointsNews: PointsNews = .auto
    public var pushDailyQuota: Int = 100_000
    /// Workers: failures of a message (alone, for its content) before it is dead-lettered.
    public var deadLetterAfter: Int = 5
    /// Gateway: networks whose `X-Forwarded-For` is believed (CIDRs); empty: the peer is the client.
    public var trustedProxies: [String] = []
    /// Gateway: database lookups of app ids it does not know, per second per client (0: unlimited).
    public var appLookupRatePerIP: Int = 10
    /// Gateway: product-code verifications per minute per member and per client (0: unlimited).
    public var codeVerifyPerMinutePerMember: Int = 10
    public var codeVerifyPerMinutePerIP: Int = 60
    /// Gateway: PostgreSQL connect and statement timeouts, and how long a request waits for a pooled connection.
    public var databaseConnectTimeoutSeconds: Int = 5
    public var databaseStatementTimeoutSeconds: Int = 10
    public var databaseAcquireTimeoutMilliseconds: Int = 2_000
    /// Gateway: a connection with no request in progress is closed after `httpIdleTimeoutSeconds`;
    /// a request whose head and body are not read in full within `httpReadTimeoutSeconds` is cut.
    public var httpIdleTimeoutSeconds: Int = 60
    public var httpReadTimeoutSeconds: Int = 30
    /// Gateway: bearer token `/metrics` requires when set.
    public var metricsToken: String?
    /// Gateway: refuse plain-mode WeChat callbacks for apps that have an EncodingAESKey.
    public var wechatRequireSafeMode: Bool = false
    /// Gateway: exact origins (`https://h5.brand.example`) whose pages may call the H5 routes cross-origin.
    public var h5Origins: [String] = []

    /// Which process is starting: each needs a different set of variables.
    public enum Role: Sendable { case gateway, worker, scheduler, tool }

    public static let variables: [(name: String, meaning: String)] = [
        ("FANFLOW_AMQP_URL", "amqp://user:password@host:port/vhost (required)"),
        ("FANFLOW_REDIS_URL", "redis://[:password@]host:port/db (required)"),
        ("FANFLOW_DATABASE_URL", "postgresql://user:password@host:port/database (required)"),
        ("FANFLOW_HTTP_HOST", "gateway listen address (default 127.0.0.1)"),
        ("FANFLOW_HTTP_PORT", "gateway port, 1-65535 (default 8080)"),
        ("FANFLOW_ADMIN_TOKEN", "bearer token for the admin API, at least 16 characters (gateway: required)"),
        ("FANFLOW_TIMEZONE", "IANA zone for natural days and months (default Asia/Shanghai)"),
        ("FANFLOW_SECRET_KEY", "base64 of 32 random bytes; seals app secrets, signs member tokens (gateway and worker: required)"),
        ("FANFLOW_LOG_LEVEL", "trace|debug|info|notice|warning|error|critical (default info)"),
        ("FANFLOW_WEBHOOK_FRESHNESS_SECONDS", "gateway: refuse webhook timestamps older or newer than this (default 300)"),
        ("FANFLOW_DEDUPE_TTL_SECONDS", "gateway: remember published event ids this long to drop retries (default 600)"),
        ("FANFLOW_BEACON_RATE_PER_SITE", "gateway: beacons per second per site, 0 = unlimited (default 2000)"),
        ("FANFLOW_BEACON_RATE_PER_IP", "gateway: beacons per second per client IP, 0 = unlimited (default 100)"),
        ("FANFLOW_FLASHSALE_RATE_PER_MEMBER", "gateway: flash-sale reservation attempts per second per member, 0 = unlimited (default 5)"),
        ("FANFLOW_FLASHSALE_RATE_PER_IP", "gateway: flash-sale reservation attempts per second per client IP, 0 = none (default 0)"),
        ("FANFLOW_SCHEDULER_PORT", "scheduler: port of /metrics and /health on FANFLOW_HTTP_HOST, 0 = none (default 8090)"),
        ("FANFLOW_WECHAT_API_BASE", "push pool: base URL of WeChat's APIs (default https://api.weixin.qq.com)"),
        ("FANFLOW_ALIPAY_API_BASE", "push pool: base URL of Alipay's OpenAPI gateway, /gateway.do under it (default https://openapi.alipay.com)"),
        ("FANFLOW_PUSH_RATE_PER_APP", "push pool: messages per second per app, 0 = unlimited (default 50)"),
        ("FANFLOW_PUSH_DAILY_QUOTA", "push pool: messages per app and Beijing day before deferring (default 100000)"),
        ("FANFLOW_POINTS_NEWS", "pipeline pool and scheduler: publish fanflow.points.granted/matured: auto (while an enabled push trigger listens), on or off (default auto)"),
        ("FANFLOW_DEAD_LETTER_AFTER", "workers: failures of a message, for its content, before it is dead-lettered, 1-100 (default 5)"),
        ("FANFLOW_TRUSTED_PROXIES", "gateway: comma-separated CIDRs of proxies whose X-Forwarded-For is believed (default none)"),
        ("FANFLOW_APP_LOOKUP_RATE_PER_IP", "gateway: database lookups of unknown app ids per second per client IP (IPv6: /64), 0 = unlimited (default 10)"),
        ("FANFLOW_CODE_VERIFY_PER_MINUTE_PER_MEMBER", "gateway: product-code verifications per minute per member, 0 = unlimited (default 10)"),
        ("FANFLOW_CODE_VERIFY_PER_MINUTE_PER_IP", "gateway: product-code verifications per minute per client IP, 0 = unlimited (default 60)"),
        ("FANFLOW_DB_CONNECT_TIMEOUT_SECONDS", "gateway: PostgreSQL connect timeout, 1-60 (default 5)"),
        ("FANFLOW_DB_STATEMENT_TIMEOUT_SECONDS", "gateway: PostgreSQL statement_timeout, 1-3600 (default 10)"),
        ("FANFLOW_DB_ACQUIRE_TIMEOUT_MS", "gateway: wait for a pooled database connection before answering 503 database_busy, 10-60000 (default 2000)"),
        ("FANFLOW_HTTP_IDLE_TIMEOUT_SECONDS", "gateway: close a connection idle this long, 1-3600 (default 60)"),
        ("FANFLOW_HTTP_READ_TIMEOUT_SECONDS", "gateway: cut a request not read in full within this, 1-600 (default 30)"),
        ("FANFLOW_METRICS_TOKEN", "gateway: bearer token /metrics requires, at least 16 characters (default: /metrics is open)"),
        ("FANFLOW_WECHAT_REQUIRE_SAFE_MODE", "gateway: true refuses plain-mode WeChat callbacks for apps with an EncodingAESKey (default false)"),
        ("FANFLOW_H5_ORIGINS", "gateway: comma-separated exact origins allowed to call the H5 routes cross-origin (default none)"),
    ]

    public init(amqpURL: String, redisURL: String, databaseURL: String, httpHost: String = "127.0.0.1",
                httpPort: Int = 8080, adminToken: String? = nil, timeZone: TimeZone,
                secretKey: String? = nil, logLevel: String = "info") {
        self.amqpURL = amqpURL
        self.redisURL = redisURL
        self.databaseURL = databaseURL
        self.httpHost = httpHost
        self.httpPort = httpPort
        self.adminToken = adminToken
        self.timeZone = timeZone
        self.secretKey = secretKey
        self.logLevel = logLevel
    }

    /// Reads and validates the environment; reports every problem at once, not just the first.
    public static func load(_ environment: [String: String] = ProcessInfo.processInfo.environment,
                            role: Role) throws(ConfigurationErrors) -> FanFlowConfiguration {
        var problems: [ConfigurationError] = []
        func value(_ name: String) -> String? {
            guard let raw = environment[name]?.trimmingCharacters(in: .whitespaces), !raw.isEmpty else { return nil }
            return raw
        }
        func url(_ name: String, schemes: [String], example: String) -> String {
            guard let text = value(name) else {
                problems.append(ConfigurationError(variable: name, problem: "missing; expected a URL like \(example)"))
                return ""
            }
            guard schemes.contains(where: { text.hasPrefix($0 + "://") }) else {
                problems.append(ConfigurationError(variable: name, problem: "expected a URL like \(example), got \(redacted(text))"))
                return ""
            }
            return text
        }

        let amqp = url("FANFLOW_AMQP_URL", schemes: ["amqp"], example: "amqp://guest:guest@127.0.0.1:5672/%2F")
        let redis = url("FANFLOW_REDIS_URL", schemes: ["redis"], example: "redis://127.0.0.1:6379/0")
        let database = url("FANFLOW_DATABASE_URL", schemes: ["postgresql", "postgres"],
                           example: "postgresql://fanflow:secret@127.0.0.1:5432/fanflow")

        let host = value("FANFLOW_HTTP_HOST") ?? "127.0.0.1"
        var port = 8080
        if let text = value("FANFLOW_HTTP_PORT") {
            if let number = Int(text), (1...65535).contains(number) { port = number } else {
                problems.append(ConfigurationError(variable: "FANFLOW_HTTP_PORT", problem: "expected a port 1-65535, got \(text)"))
            }
        }

        let token = value("FANFLOW_ADMIN_TOKEN")
        if let token, token.count < 16 {
            problems.append(ConfigurationError(variable: "FANFLOW_ADMIN_TOKEN", problem: "must be at least 16 characters"))
        } else if token == nil, role == .gateway {
            problems.append(ConfigurationError(variable: "FANFLOW_ADMIN_TOKEN",
                                               problem: "missing; the admin API needs a bearer token of at least 16 characters"))
        }

        let zoneName = value("FANFLOW_TIMEZONE") ?? "Asia/Shanghai"
        let zone = TimeZone(identifier: zoneName)
        if zone == nil {
            problems.append(ConfigurationError(variable: "FANFLOW_TIMEZONE", problem: "unknown time zone \(zoneName); expected an IANA name like Asia/Shanghai"))
        }

        let secret = value("FANFLOW_SECRET_KEY")
        if let secret, Data(base64Encoded: secret)?.count != 32 {
            problems.append(ConfigurationError(variable: "FANFLOW_SECRET_KEY", problem: "expected base64 of exactly 32 bytes (openssl rand -base64 32)"))
        } else if secret == nil, role == .gateway {
            problems.append(ConfigurationError(variable: "FANFLOW_SECRET_KEY",
                                               problem: "missing; the gateway seals app secrets and signs member tokens with it: base64 of 32 random bytes (openssl rand -base64 32)"))
        } else if secret == nil, role == .worker {
            // Every worker, not only one listing a push pool: the push pool opens sealed app
            // secrets with it, and a worker that found it missing only when starting that pool
            // exited 1, which scripts/run restarts forever; refused here it exits 78 naming it.
            problems.append(ConfigurationError(variable: "FANFLOW_SECRET_KEY",
                                               problem: "missing; workers (the push pool) open sealed app secrets with it: the gateway's key, base64 of 32 bytes"))
        }

        let level = value("FANFLOW_LOG_LEVEL")?.lowercased() ?? "info"
        if !["trace", "debug", "info", "notice", "warning", "error", "critical"].contains(level) {
            problems.append(ConfigurationError(variable: "FANFLOW_LOG_LEVEL", problem: "expected trace, debug, info, notice, warning, error or critical, got \(level)"))
        }

        func integer(_ name: String, default fallback: Int, range: ClosedRange<Int>) -> Int {
            guard let text = value(name) else { return fallback }
            guard let number = Int(text), range.contains(number) else {
                problems.append(ConfigurationError(variable: name, problem: "expected an integer \(range.lowerBound)-\(range.upperBound), got \(text)"))
                return fallback
            }
            return number
        }
        let freshness = integer("FANFLOW_WEBHOOK_FRESHNESS_SECONDS", default: 300, range: 10...86_400)
        let dedupe = integer("FANFLOW_DEDUPE_TTL_SECONDS", default: 600, range: 10...604_800)
        let perSite = integer("FANFLOW_BEACON_RATE_PER_SITE", default: 2000, range: 0...10_000_000)
        let perIP = integer("FANFLOW_BEACON_RATE_PER_IP", default: 100, range: 0...10_000_000)
        let schedulerPort = integer("FANFLOW_SCHEDULER_PORT", default: 8090, range: 0...65535)
        let flashPerMember = integer("FANFLOW_FLASHSALE_RATE_PER_MEMBER", default: 5, range: 0...1_000_000)
        let flashPerIP = integer("FANFLOW_FLASHSALE_RATE_PER_IP", default: 0, range: 0...10_000_000)
        let pushRate = integer("FANFLOW_PUSH_RATE_PER_APP", default: 50, range: 0...100_000)
        let pushQuota = integer("FANFLOW_PUSH_DAILY_QUOTA", default: 100_000, range: 1...100_000_000)
        let deadLetterAfter = integer("FANFLOW_DEAD_LETTER_AFTER", default: 5, range: 1...100)
        func baseURL(_ variable: String, default fallback: String) -> String {
            let url = value(variable) ?? fallback
            if !(url.hasPrefix("http://") || url.hasPrefix("https://")) {
                problems.append(ConfigurationError(variable: variable, problem: "expected an http(s) URL, got \(url)"))
            }
            return url
        }
        let newsText = value("FANFLOW_POINTS_NEWS")?.lowercased() ?? "auto"
        let news = PointsNews(rawValue: newsText)
        if news == nil {
            problems.append(ConfigurationError(variable: "FANFLOW_POINTS_NEWS", problem: "expected auto, on or off, got \(newsText)"))
        }
        let wechatBase = baseURL("FANFLOW_WECHAT_API_BASE", default: "https://api.weixin.qq.com")
        let (edge, edgeProblems) = EdgeSettings.load(value: value, integer: { integer($0, default: $1, range: $2) })
        problems += edgeProblems
        let alipayBase = baseURL("FANFLOW_ALIPAY_API_BASE", default: "https://openapi.alipay.com")

        guard problems.isEmpty, let zone else { throw ConfigurationErrors(problems: problems) }
        var configuration = FanFlowConfiguration(amqpURL: amqp, redisURL: redis, databaseURL: database, httpHost: host,
                                                 httpPort: port, adminToken: token, timeZone: zone, secretKey: secret,
                                                 logLevel: level)
        configuration.webhookFreshnessSeconds = freshness
        configuration.dedupeTTLSeconds = dedupe
        configuration.beaconRatePerSite = perSite
        configuration.beaconRatePerIP = perIP
        configuration.schedulerPort = schedulerPort
        configuration.flashSaleRatePerMember = flashPerMember
        configuration.flashSaleRatePerIP = flashPerIP
        configuration.pushRatePerApp = pushRate
        configuration.pushDailyQuota = pushQuota
        configuration.wechatAPIBase = wechatBase
        configuration.alipayAPIBase = alipayBase
        configuration.pointsNews = news ?? .auto
        configuration.deadLetterAfter = deadLetterAfter
        edge.apply(to: &configuration)
        return configuration
    }

    /// A URL with its password replaced, for messages and logs.
    public static func redacted(_ url: String) -> String {
        guard let schemeEnd = url.range(of: "://"), let at = url[schemeEnd.upperBound...].lastIndex(of: "@") else {
            return url
        }
        let credentials = url[schemeEnd.upperBound..<at]
        guard let colon = credentials.firstIndex(of: ":") else { return url }
        return String(url[..<url.index(after: colon)]) + "***" + String(url[at...])
    }
}

/// All configuration problems found, one line each.
public struct ConfigurationErrors: Error, Sendable, CustomStringConvertible {
    public let problems: [ConfigurationError]
    public var description: String {
        "invalid configuration:\n" + problems.map { "  \($0)" }.joined(separator: "\n")
    }
}

/// When the pipeline pool and the scheduler publish points news (`FANFLOW_POINTS_NEWS`). Each is one
/// more broker message per grant, and the broker is what runs out first, so by default they are
/// published only while something listens.
public enum PointsNews: String, Sendable, Equatable {
    /// While an enabled push trigger names the event.
    case auto
    /// Always (the brand's own systems consume `fanflow.events`).
    case on
    case off
}
