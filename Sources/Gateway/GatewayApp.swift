import AMQPClient
import Apps
import ClientSupport
import Contracts
import Foundation
import Hummingbird
import Logging
import NIOCore
import PostgresClient
import Pushes
import RedisClient
import Runtime
import ServiceLifecycle
import Synchronization

/// The HTTP front door: platform webhooks, the brand's server events, H5 beacons and the admin API.
/// Every accepted event is answered only after RabbitMQ confirmed it.
public struct Gateway: Sendable {
    public let configuration: FanFlowConfiguration
    public let broker: ManagedAMQPConnection
    public let redis: RedisPool
    public let database: PostgresPool
    public let apps: AppRegistry
    public let publisher: EventPublisher
    public let metrics: GatewayMetrics
    let beaconLimits: BeaconLimits
    let flashSaleIPLimits: BeaconLimits
    let memberTokens: MemberTokens
    let freshness: FreshnessWindow
    let proxies: TrustedProxies
    /// Product-code verifications per member and per client (enumeration is the risk they bound).
    let codeLimits: CodeVerifyLimits
    let replays: WeChatReplayGuard
    /// `/metrics`' dead-letter depth, read from PostgreSQL at most every 15 s.
    let deadLetterDepth: DeadLetterDepthCache
    let logger: Logger

    public init(configuration: FanFlowConfiguration, logger: Logger) async throws {
        self.configuration = configuration
        self.logger = logger
        var amqp = try AMQPConfiguration(url: configuration.amqpURL)
        amqp.connectionName = "fanflow-gateway"
        // Platforms retry after 5 s (QQ wants an answer within 3 s): a confirm that has not come in
        // 2 s is answered as an error, so the platform retries instead of believing a false success.
        amqp.confirmTimeoutMilliseconds = 2_000
        amqp.sendTimeoutMilliseconds = 2_000
        broker = ManagedAMQPConnection(configuration: amqp, logger: logger) { connection in
            try await connection.declare(Topology.standard)
            try await connection.enableConfirms()
        }
        // Two connections whose calls are coalesced into pipelines: enough to keep Redis busy.
        redis = try await RedisPool(url: configuration.redisURL, size: 2)
        // A request waits for a pooled connection at most FANFLOW_DB_ACQUIRE_TIMEOUT_MS (2 s by
        // default: platforms retry after 5 s), then is answered 503 database_busy.
        database = PostgresPool(url: configuration.databaseURL, maximumConnections: 8,
                                timeouts: PostgresTimeouts(connectSeconds: configuration.databaseConnectTimeoutSeconds,
                                                           statementMilliseconds: configuration.databaseStatementTimeoutSeconds * 1000),
                                acquireTimeout: .milliseconds(configuration.databaseAcquireTimeoutMilliseconds))
        metrics = GatewayMetrics()
        deadLetterDepth = DeadLetterDepthCache(database: database)
        let keys = try SecretKeys(base64: configuration.secretKey)
        apps = AppRegistry(database: database, keys: keys, lookupRatePerIP: configuration.appLookupRatePerIP, logger: logger)
        publisher = EventPublisher(broker: broker, redis: redis, dedupeTTL: .seconds(configuration.dedupeTTLSeconds),
                                   metrics: metrics, logger: logger)
        beaconLimits = BeaconLimits(perSite: configuration.beaconRatePerSite, perIP: configuration.beaconRatePerIP)
        flashSaleIPLimits = BeaconLimits(perSite: 0, perIP: configuration.flashSaleRatePerIP)
        freshness = FreshnessWindow(seconds: configuration.webhookFreshnessSeconds)
        memberTokens = keys.memberTokens
        proxies = TrustedProxies(networks: configuration.trustedProxies.compactMap { CIDR($0) })
        codeLimits = CodeVerifyLimits(perMember: configuration.codeVerifyPerMinutePerMember, perIP: configuration.codeVerifyPerMinutePerIP)
        replays = WeChatReplayGuard(redis: redis, window: configuration.webhookFreshnessSeconds)
        _ = Self.sdk  // read the bundled sdk.js now, not on the first request's thread
        try await broker.start()
    }

    /// The HTTP application, a `Service` that stops accepting connections on graceful shutdown.
    /// Every connection is bounded in time: idle ones close after FANFLOW_HTTP_IDLE_TIMEOUT_SECONDS
    /// (Hummingbird's idle timeout), and a request not read in full within
    /// FANFLOW_HTTP_READ_TIMEOUT_SECONDS is cut (``RequestReadTimeoutHandler``).
    public func application() -> some ApplicationProtocol {
        let readTimeout = TimeAmount.seconds(Int64(configuration.httpReadTimeoutSeconds))
        return Application(router: router(),
                           server: .http1(configuration: .init(
                               additionalChannelHandlers: [RequestReadTimeoutHandler(timeout: readTimeout)],
                               idleTimeout: .seconds(Int64(configuration.httpIdleTimeoutSeconds)))),
                           configuration: .init(address: .hostname(configuration.httpHost, port: configuration.httpPort),
                                                serverName: "fanflow-gateway"),
                           logger: logger)
    }

    func router() -> Router<GatewayRequestContext> {
        let router = Router(context: GatewayRequestContext.self)
        router.add(middleware: RequestMetricsMiddleware(metrics: metrics))
        router.add(middleware: EdgeMiddleware(proxies: proxies))
        // H5 pages on the brand's own domains call the beacon and member-token routes with a
        // bearer token (no cookies): those routes answer CORS for FANFLOW_H5_ORIGINS, no others do.
        router.add(middleware: H5CORSMiddleware(origins: Set(configuration.h5Origins)))
        let metricsToken = configuration.metricsToken.map(BearerToken.init)
        router.get("/health") { _, _ in Response.json(["status": "ok"]) }
        router.get("/ready") { _, _ in await readiness() }
        router.get("/metrics") { request, _ in
            if let metricsToken {
                guard let presented = BearerToken.presented(request) else {
                    throw GatewayError.unauthorized(.missingToken, "Authorization: Bearer <metrics token> is required")
                }
                guard metricsToken.accepts(presented) else { throw GatewayError.unauthorized(.badToken, "the metrics token is not valid") }
            }
            let outstanding = await (try? broker.current())?.outstandingConfirms ?? 0
            // Push figures are every push worker's, from Redis; without Redis the gateway's own still render.
            let pushes = (try? await PushStats(redis: redis).today(dailyQuota: configuration.pushDailyQuota))?.apps ?? []
            return Response.text(metrics.render(confirmsOutstanding: outstanding) + GatewayMetrics.render(pushes: pushes)
                                 + (await deadLetterMetrics()),
                                 contentType: "text/plain; version=0.0.4")
        }
        addWeChatRoutes(router)
        addAlipayRoutes(router)
        addWeiboRoutes(router)
        addQQRoutes(router)
        addServerEventRoutes(router)
        addBeaconRoutes(router)
        addMemberActionRoutes(router)
        addFlashSaleRoutes(router)
        addPaymentRoutes(router)
        addAdminRoutes(router)
        return router
    }

    /// Closes the gateway's connections after the HTTP server stopped.
    public func shutdown() async {
        await broker.close()
        await redis.close()
        await database.close()
    }

    /// The registered app a webhook's path names (`/{platform}/{appId}`), or 404.
    func pathApp(_ platform: AppPlatform, _ context: GatewayRequestContext) async throws(GatewayError) -> RegisteredApp {
        try await apps.gatewayApp(platform, context.parameters.get("appId") ?? "", client: context.clientIP)
    }

    /// Publishes one webhook's event; anything but a confirm (or a recognized retry) is an error
    /// the platform will retry.
    func publishWebhookEvent(_ envelope: Envelope) async throws(GatewayError) {
        let result = await publisher.publish(envelope)
        metrics.events(result.outcomeName)
        switch result {
        case .accepted, .duplicate: return
        case .inFlight:
            throw GatewayError.unavailable(.inFlight, "the same event is being published by another request; retry")
        case .failed(let why):
            throw GatewayError.unavailable(.publishUnconfirmed, "the event was not confirmed by the broker; retry", detail: "\(why)")
        }
    }

    /// Each dependency probed with a deadline, so `/ready` answers even when one of them hangs.
    func readiness() async -> Response {
        async let brokerCheck = probe { _ = try await broker.current() }
        async let cache = probe { _ = try await redis.connection.command(["PING"]) }
        async let store = probe { _ = try await database.query("SELECT 1") }
        let checks = await ["broker": brokerCheck, "redis": cache, "database": store]
        let ready = checks.values.allSatisfy { $0 == "ok" }
        return Response.json(ReadyStatus(status: ready ? "ready" : "not_ready", checks: checks),
                             status: ready ? .ok : .serviceUnavailable)
    }

    /// Resolves with whichever comes first, the check or the deadline. A blocking client call cannot
    /// be cancelled, so the check is left to finish on its own instead of being awaited.
    private func probe(_ check: @escaping @Sendable () async throws -> Void) async -> String {
        let answered = FirstAnswer()
        return await withCheckedContinuation { continuation in
            Task {
                let outcome: String
                do { try await check(); outcome = "ok" } catch {
                    // The body names the dependency and the kind of failure; the server's own text goes to the log.
                    logger.warning("readiness check failed", metadata: ["error": "\(error)"])
                    outcome = switch error {
                    case let error as PostgresError: "postgres \(error.code) failed"
                    case let error as RedisError: "redis \(error.code) failed"
                    case is PostgresPoolBusy: "postgres pool busy"
                    default: "failed"
                    }
                }
                if answered.claim() { continuation.resume(returning: outcome) }
            }
            Task {
                try? await Task.sleep(for: .seconds(2))
                if answered.claim() { continuation.resume(returning: "timed out after 2 s") }
            }
        }
    }
}

/// The request context: Hummingbird's core storage plus the client's address (for per-IP limits).
public struct GatewayRequestContext: RequestContext, RemoteAddressRequestContext {
    public var coreContext: CoreRequestContextStorage
    public let remoteAddress: SocketAddress?
    /// The client's address: the peer's, or the one trusted proxies forwarded (``EdgeMiddleware``).
    /// Per-client limits count IPv6 clients by their /64 (``IPAddress/limitKey``).
    var clientIP: String

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remoteAddress = source.channel.remoteAddress
        clientIP = switch remoteAddress {
        case .v4(let address): address.host
        case .v6(let address): address.host
        default: "unknown"
        }
    }

    /// Bodies are collected with explicit per-route limits; this is the outer bound.
    public var maxUploadSize: Int { 16 * 1024 * 1024 }
}

/// Counts every request by route and status, and refusals by their error code.
struct RequestMetricsMiddleware: RouterMiddleware {
    typealias Context = GatewayRequestContext
    let metrics: GatewayMetrics

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            let response = try await next(request, context)
            metrics.request(route: context.endpointPath ?? "unmatched", status: Int(response.status.code))
            return response
        } catch let error as GatewayError {
            metrics.request(route: context.endpointPath ?? "unmatched", status: Int(error.status.code), errorCode: error.code.rawValue)
            throw error
        } catch let error as any HTTPResponseError {
            metrics.request(route: context.endpointPath ?? "unmatched", status: Int(error.status.code), errorCode: "http")
            throw error
        } catch {
            metrics.request(route: context.endpointPath ?? "unmatched", status: 500, errorCode: "internal")
            throw error
        }
    }
}

extension PublishResult {
    var outcomeName: String {
        switch self {
        case .accepted: "accepted"
        case .duplicate: "duplicate"
        case .inFlight: "in_flight"
        case .failed: "failed"
        }
    }
}

/// True for the first caller only.
final class FirstAnswer: Sendable {
    private let taken = Mutex(false)
    func claim() -> Bool { taken.withLock { was in defer { was = true }; return !was } }
}

struct ReadyStatus: Codable {
    let status: String
    let checks: [String: String]
}
