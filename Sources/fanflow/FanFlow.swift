import AMQPClient
import Apps
import Audiences
import ArgumentParser
import AsyncHTTPClient
import Contracts
import DeadLetters
import FlashSales
import Foundation
import Gateway
import Jobs
import Logging
import Loyalty
import Pipeline
import Platforms
import PostgresClient
import Pushes
import RedisClient
import Runtime
import Scheduler
import ServiceLifecycle
import Storage
import Workers

@main
struct FanFlow: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fanflow",
        abstract: "FanFlow: social CRM events to points, orders and pushes, exactly once.",
        discussion: "Configuration comes from the environment:\n"
            + FanFlowConfiguration.variables.map { "  \($0.name)\n      \($0.meaning)" }.joined(separator: "\n"),
        subcommands: [GatewayCommand.self, WorkerCommand.self, SchedulerCommand.self, JobsCommand.self, MigrateCommand.self,
                       RebuildCountersCommand.self, ReconcileCommand.self, FakePlatformCommand.self,
                       DeadLetterCommand.self, SecretsCommand.self])
}

/// Loads the configuration for a role, or stops the process naming every bad variable.
func loadConfiguration(role: FanFlowConfiguration.Role) throws -> FanFlowConfiguration {
    do {
        let configuration = try FanFlowConfiguration.load(role: role)
        LoggingSetup.bootstrap(level: configuration.logLevel)
        return configuration
    } catch {
        FileHandle.standardError.write(Data("fanflow: \(error)\n".utf8))
        throw ExitCode(78) // EX_CONFIG
    }
}

/// Runs services until SIGTERM or SIGINT, then shuts them down gracefully in reverse order.
func runServices(_ services: [any Service], logger: Logger) async throws {
    let group = ServiceGroup(configuration: .init(
        services: services.map { ServiceGroupConfiguration.ServiceConfiguration(service: $0) },
        gracefulShutdownSignals: [.sigterm, .sigint],
        logger: logger))
    try await group.run()
}

struct GatewayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "gateway",
                                                    abstract: "Serve webhooks, beacons and the admin API over HTTP.")

    func run() async throws {
        let configuration = try loadConfiguration(role: .gateway)
        let logger = Logger(label: "fanflow.gateway")
        try FlashSaleScripts.check()  // a missing Lua resource stops the start, naming the file
        try EventPublisher.scripts.check()
        try PushScripts.check()       // push-stats reads its figures with them
        let gateway = try await Gateway(configuration: configuration, logger: logger)
        logger.notice("gateway listening", metadata: ["address": "http://\(configuration.httpHost):\(configuration.httpPort)"])
        try await runServices([gateway.application()], logger: logger)
        await gateway.shutdown()
        logger.notice("gateway stopped")
    }
}

struct WorkerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Consume work queues with pools of consumers.",
        discussion: "Pools in this build: \(PoolName.listed).")

    @Option(name: .customLong("pool"), help: "A pool and its consumer count, e.g. pipeline=2 (repeatable).")
    var pools: [String] = ["pipeline=1"]

    @Option(help: "Unacknowledged messages per consumer.")
    var prefetch: Int = 500

    // 60 s outlasts the longest batch measured (a push batch paced over 30 s); a worker killed while
    // holding jobs leaves them this long before another worker takes them.
    @Option(help: "How long a claimed batch of the pools' jobs is leased, in seconds (5-3600).")
    var jobLeaseSeconds: Int = 60

    func validate() throws {
        guard (5...3600).contains(jobLeaseSeconds) else { throw ValidationError("--job-lease-seconds must be 5-3600") }
    }

    func run() async throws {
        let specs: [PoolSpec]
        do { specs = try pools.map { try PoolSpec(parsing: $0) } } catch {
            throw ValidationError("\(error)")
        }
        let configuration = try loadConfiguration(role: .worker)
        let logger = Logger(label: "fanflow.worker")
        for warning in specs.compactMap(\.deprecation) { logger.warning("\(warning)") }
        var amqp = try AMQPConfiguration(url: configuration.amqpURL)
        amqp.connectionName = "fanflow-worker"
        // A push consumer has many sends in flight at once (its whole batch), each claiming and
        // recording its push: it gets more connections than a pool writing one transaction a batch,
        // and as many again for its job runner, whose batch of sends is as wide.
        let connections = specs.reduce(0) { $0 + $1.consumers * ($1.name == .push ? 16 : 1) } + 1
        let database = PostgresPool(url: configuration.databaseURL, maximumConnections: max(2, connections))
        var services: [any Service] = []
        var closers: [@Sendable () async -> Void] = [{ await database.close() }]
        var pipeline: EnvelopeBatchHandler<Pipeline>?
        for spec in specs {
            let handler: any BatchHandler
            switch spec.name {
            case .pipeline, .behavior, .points:
                if let existing = pipeline {
                    handler = existing
                } else {
                    try LoyaltyScripts.check()  // a missing Lua resource stops the start, naming the file
                    let redis = try await RedisPool(url: configuration.redisURL, size: 2)
                    let loyalty = LoyaltyService(database: database, redis: redis, timeZone: configuration.timeZone,
                                                 pointsNews: configuration.pointsNews.policy(pushes: PushStore(database: database)),
                                                 mergeParticipants: [AudienceMerge(), ProfileAttributeMerge()])
                    let pipelineRun = Pipeline.standard(database: database, loyalty: loyalty, audiences: AudienceService(database: database))
                    let made = EnvelopeBatchHandler(pipelineRun, logger: logger,
                                                    deadLetterAfter: configuration.deadLetterAfter)
                    pipeline = made
                    handler = made
                    // Points news and level changes leave through the outbox; one relay per process.
                    let broker = ManagedAMQPConnection(configuration: amqp, logger: logger) { connection in
                        try await connection.declare(Topology.standard)
                        try await connection.enableConfirms()
                    }
                    try await broker.start()
                    services.append(OutboxRelay(outbox: Outbox(database: database), broker: broker, logger: logger))
                    // What a former version left in the queues the pipeline replaced, handled once.
                    let keepers = DeadLetterStore(database: database)
                    services += RetiredQueueDrain.services(amqp: amqp, prefetch: prefetch, handler: made, keeper: { queue in
                        DeadLetterKeeper(store: keepers, workQueue: queue, logger: logger)
                    }, logger: logger)
                    closers += [{ await broker.close() }, { await redis.close() }]
                    // Maturing grants, the points expiry sweep, tag-rule backfills and tag expiry run here, from the jobs table.
                    var jobs = PoolJobs(pool: .pipeline, handlers: LoyaltyJobs.handlers(
                        ledger: Ledger(database: database, news: configuration.pointsNews.policy(pushes: PushStore(database: database))),
                        rules: RuleStore(database: database)).merging(AudienceJobs.handlers(database: database)) { first, _ in first })
                    jobs.lease = .seconds(jobLeaseSeconds)
                    services += jobs.services(store: JobStore(database: database), logger: logger).map { $0 as any Service }
                    logger.info("running job kinds", metadata: ["pool": "pipeline", "kinds": "\(jobs.kinds.map(\.rawValue).joined(separator: ","))"])
                }
            case .orders:
                try FlashSaleScripts.check()
                let redis = try await RedisPool(url: configuration.redisURL, size: 1)
                closers.append({ await redis.close() })
                let service = FlashSaleService(store: FlashSaleStore(database: database), stock: FlashSaleStock(redis: redis), logger: logger)
                handler = EnvelopeBatchHandler(OrdersPool(service: service), logger: logger, deadLetterAfter: configuration.deadLetterAfter)
                // Expiries, campaign loads and the reconcile run here, from the jobs table.
                var jobs = PoolJobs(pool: .orders, handlers: service.jobHandlers)
                jobs.lease = .seconds(jobLeaseSeconds)
                services += jobs.services(store: JobStore(database: database), logger: logger).map { $0 as any Service }
                logger.info("running job kinds", metadata: ["pool": "orders", "kinds": "\(jobs.kinds.map(\.rawValue).joined(separator: ","))"])
            case .push:
                try PushScripts.check()
                try PlatformScripts.check()
                let redis = try await RedisPool(url: configuration.redisURL, size: 2)
                closers.append({ await redis.close() })
                let service = try pushService(configuration: configuration, database: database, redis: redis, logger: logger)
                handler = EnvelopeBatchHandler(PushPool(service: service, logger: logger), logger: logger,
                                               deadLetterAfter: configuration.deadLetterAfter)
                // Push jobs (retries, broadcast batches and their sends, payment reminders) run here,
                // a runner per consumer with a batch as wide as a consumer's prefetch, not through the
                // scheduler and the broker.
                let jobs = PushPool.jobs(service, runners: spec.consumers, limit: prefetch)
                services += jobs.services(store: JobStore(database: database), logger: logger).map { $0 as any Service }
                logger.info("running job kinds", metadata: ["pool": "\(spec.name.rawValue)", "kinds": "\(jobs.kinds.map(\.rawValue).joined(separator: ","))",
                                                            "runners": "\(jobs.runners)", "batch": "\(jobs.batchSize)"])
            }
            for _ in 0..<spec.consumers {
                services.append(ConsumerService(amqp: amqp, queue: spec.name.queue, prefetch: prefetch,
                                                handler: handler, logger: logger))
            }
        }
        // Every worker keeps every queue's dead letters (stored for `fanflow dlq`), whichever pools it runs.
        services += DeadLetterKeeper.services(amqp: amqp, store: DeadLetterStore(database: database), logger: logger)
        logger.notice("worker starting", metadata: ["pools": "\(pools.joined(separator: " "))"])
        try await runServices(services, logger: logger)
        for close in closers { await close() }
        logger.notice("worker stopped")
    }
}

struct SchedulerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scheduler",
        abstract: "Run due jobs (delayed and periodic) from PostgreSQL; one leader enqueues the periodic ones.",
        discussion: "Any number may run at once: due jobs are claimed with SKIP LOCKED under a lease, so none runs twice "
            + "at a time, and a scheduler that dies leaves its jobs to be claimed again when the lease ends.")

    @Option(help: "Due jobs claimed per batch.")
    var batchSize: Int = 500

    @Option(help: "Seconds a claimed batch is leased; a dead scheduler's jobs wait this long to run again.")
    var leaseSeconds: Int = 60

    @Option(help: "Milliseconds an idle scheduler waits before looking for due jobs again.")
    var pollMilliseconds: Int = 200

    func validate() throws {
        guard (1...10_000).contains(batchSize) else { throw ValidationError("--batch-size must be 1-10000") }
        guard (5...86_400).contains(leaseSeconds) else { throw ValidationError("--lease-seconds must be 5-86400") }
        guard (10...60_000).contains(pollMilliseconds) else { throw ValidationError("--poll-milliseconds must be 10-60000") }
    }

    func run() async throws {
        let configuration = try loadConfiguration(role: .scheduler)
        let logger = Logger(label: "fanflow.scheduler")
        let database = PostgresPool(url: configuration.databaseURL, maximumConnections: 4)
        let store = JobStore(database: database)
        let metrics = JobMetrics()
        let zone = configuration.timeZone
        let periodic = PeriodicEnqueuer(database: database,
                                        jobs: try LoyaltyJobs.periodic(timeZone: zone) + AudienceJobs.periodic(timeZone: zone) + MaintenanceJobs.periodic(timeZone: zone)
                                            + FlashSaleStore.periodic(timeZone: zone),
                                        metrics: metrics, logger: logger)
        var runnerConfiguration = JobRunner.Configuration()
        runnerConfiguration.batchSize = batchSize
        runnerConfiguration.lease = .seconds(leaseSeconds)
        runnerConfiguration.pollInterval = .milliseconds(pollMilliseconds)
        // The scheduler turns schedules into jobs while it leads and runs only its own upkeep: every
        // other kind runs in the worker pool that owns it (loyalty: pipeline, flash sales: orders,
        // pushes: push), straight from the jobs table, so no job travels through the broker.
        let handlers = MaintenanceJobs.handlers(store: store)
        let runner = JobRunner(store: store, handlers: handlers, configuration: runnerConfiguration, metrics: metrics, logger: logger)
        var services: [any Service] = [
            LeaderElection(databaseURL: configuration.databaseURL, logger: logger) { periodic.setLeading($0) }, periodic, runner,
        ]
        if configuration.schedulerPort > 0 {
            services.append(SchedulerHTTP.application(host: configuration.httpHost, port: configuration.schedulerPort, store: store,
                                                      metrics: metrics, periodic: periodic, logger: logger))
        }
        logger.notice("scheduler started", metadata: ["owner": "\(runnerConfiguration.owner)",
                                                      "kinds": "\(handlers.keys.map(\.rawValue).sorted().joined(separator: ","))"])
        try await runServices(services, logger: logger)
        await database.close()
        logger.notice("scheduler stopped")
    }
}

struct JobsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "jobs",
        abstract: "Look at and act on scheduled jobs.",
        subcommands: [List.self, Show.self, Retry.self, Cancel.self])

    static func withStore<T>(_ body: (JobStore) async throws -> T) async throws -> T {
        let configuration = try loadConfiguration(role: .tool)
        let database = PostgresPool(url: configuration.databaseURL, maximumConnections: 1)
        do {
            let result = try await body(JobStore(database: database))
            await database.close()
            return result
        } catch {
            await database.close()
            throw error
        }
    }

    static func line(_ job: Job) -> String {
        let error = job.lastError.map { "  \($0.prefix(80))" } ?? ""
        return "\(job.id)\t\(job.status.rawValue)\t\(job.kind)\tdue \(RFC3339.format(job.dueAt))\tattempts \(job.attempts)/\(job.maxAttempts)\(error)"
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Jobs, newest first: id, status, kind, due time, attempts, last error.")
        @Option(help: "scheduled, running, done, failed or cancelled.") var status: String?
        @Option(help: "Only this kind.") var kind: String?
        @Option(help: "At most this many.") var limit: Int = 50

        func run() async throws {
            let wanted: JobStatus?
            if let status {
                guard let parsed = JobStatus(rawValue: status) else {
                    throw ValidationError("--status must be one of \(JobStatus.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                wanted = parsed
            } else {
                wanted = nil
            }
            let jobs = try await JobsCommand.withStore { try await $0.list(status: wanted, kind: kind, limit: limit) }
            for job in jobs { print(JobsCommand.line(job)) }
            if jobs.isEmpty { print("no jobs") }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "One job as JSON, with its payload and last error.")
        @Argument(help: "The job's id.") var id: Int64

        func run() async throws {
            guard let job = try await JobsCommand.withStore({ try await $0.job(id: id) }) else {
                FileHandle.standardError.write(Data("fanflow: no job \(id)\n".utf8))
                throw ExitCode(1)
            }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            print(String(decoding: try encoder.encode(job.json), as: UTF8.self))
        }
    }

    struct Retry: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Run a failed or cancelled job again now, with fresh attempts.")
        @Argument(help: "The job's id.") var id: Int64

        func run() async throws {
            guard try await JobsCommand.withStore({ try await $0.retry(id: id) }) else {
                FileHandle.standardError.write(Data("fanflow: job \(id) does not exist or is not failed or cancelled\n".utf8))
                throw ExitCode(1)
            }
            print("job \(id) scheduled to run now")
        }
    }

    struct Cancel: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Cancel a job that has not started, by id or by unique key.")
        @Argument(help: "The job's id.") var id: Int64?
        @Option(help: "The job's unique key instead of its id.") var key: String?

        func validate() throws {
            guard (id == nil) != (key == nil) else { throw ValidationError("give a job id or --key, not both") }
        }

        func run() async throws {
            let cancelled = try await JobsCommand.withStore { store in
                if let id { return try await store.cancel(id: id) }
                return try await store.cancel(uniqueKey: key ?? "")
            }
            guard cancelled else {
                FileHandle.standardError.write(Data("fanflow: no scheduled or failed job \(id.map(String.init) ?? key ?? "")\n".utf8))
                throw ExitCode(1)
            }
            print("cancelled")
        }
    }
}

struct MigrateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Apply pending database migrations (safe to run twice, and from two processes at once).")

    func run() async throws {
        let configuration = try loadConfiguration(role: .tool)
        let logger = Logger(label: "fanflow.migrate")
        let connection = try await PostgresConnection(url: configuration.databaseURL)
        let applied = try await Migrator(migrations: try Migration.bundled(), logger: logger).run(on: connection)
        logger.notice(applied.isEmpty ? "schema is current" : "migrations applied",
                      metadata: ["applied": "\(applied)"])
        await connection.close()
    }
}

struct RebuildCountersCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rebuild-counters",
        abstract: "Recompute today's, this week's and this month's cap counters in Redis from the ledger.",
        discussion: "For a Redis that lost its data. Counters are only raised to what the ledger proves, never lowered, "
            + "so it is safe while workers run.")

    func run() async throws {
        let configuration = try loadConfiguration(role: .tool)
        let logger = Logger(label: "fanflow.rebuild-counters")
        let database = PostgresPool(url: configuration.databaseURL, maximumConnections: 1)
        let redis = try await RedisPool(url: configuration.redisURL, size: 1)
        let rules = try await RuleStore(database: database).list()
        let raised = try await CounterRebuild(database: database, redis: redis, calendar: PeriodCalendar(timeZone: configuration.timeZone))
            .run(now: Date(), rules: rules)
        try await CounterReadiness.markReady(redis) // the pipeline decides again (see CounterReadiness)
        logger.notice("counters rebuilt", metadata: ["raised": "\(raised)", "zone": "\(configuration.timeZone.identifier)"])
        await redis.close()
        await database.close()
    }
}

struct ReconcileCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "reconcile", abstract: "Compare live state with the books.",
                                                    subcommands: [FlashSaleReconcile.self])

    struct FlashSaleReconcile: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "flash-sale",
            abstract: "Report a flash sale's units (initial = remaining + reserved + paid) in PostgreSQL and Redis; repair Redis.",
            discussion: "Unconfirmed holds older than 2 minutes with no order go back first (reclaimed). "
                + "Redis is rebuilt from PostgreSQL at once when it lost the sale. When both hold it and disagree, "
                + "--repair rebuilds it: use that once the orders queue is drained, since reservations on their way to "
                + "the orders pool are in Redis before they are in PostgreSQL. Exits 1 while the two disagree.")

        @Argument(help: "The flash sale's id.") var id: String
        @Flag(help: "Rebuild Redis from PostgreSQL even though Redis still holds the sale.") var repair = false

        func run() async throws {
            let configuration = try loadConfiguration(role: .tool)
            let database = PostgresPool(url: configuration.databaseURL, maximumConnections: 1)
            let redis = try await RedisPool(url: configuration.redisURL, size: 1)
            let report: Reconciler.Report
            do {
                report = try await Reconciler(store: FlashSaleStore(database: database), stock: FlashSaleStock(redis: redis))
                    .reconcile(id, repair: repair)
            } catch Reconciler.Problem.unknownSale(let id) {
                await redis.close()
                await database.close()
                FileHandle.standardError.write(Data("fanflow: no flash sale \(id)\n".utf8))
                throw ExitCode(1)
            }
            await redis.close()
            await database.close()
            let json: [String: JSONValue] = ["saleId": .string(id), "postgres": report.postgres.json,
                                             "redisBefore": report.redisBefore?.json ?? .null, "redis": report.redisAfter?.json ?? .null,
                                             "repaired": .bool(report.repaired), "agree": .bool(report.agree),
                                             "reclaimed": .integer(Int64(report.reclaimed))]
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(json), as: UTF8.self))
            if !report.agree { throw ExitCode(1) }
        }
    }
}

/// The push service as `fanflow worker --pool push=N` runs it: WeChat's and Alipay's APIs (or the
/// fake) through AsyncHTTPClient, app secrets and keys from the registered apps, WeChat tokens
/// shared through Redis.
func pushService(configuration: FanFlowConfiguration, database: PostgresPool, redis: RedisPool, logger: Logger) throws -> PushService {
    // App secrets are sealed with a key derived from FANFLOW_SECRET_KEY: the push pool needs it too.
    let apps = AppRegistry(database: database, keys: try SecretKeys(base64: configuration.secretKey), logger: logger)
    let client = WeChatClient(http: HTTPClient.shared, base: configuration.wechatAPIBase)
    let broker = AccessTokenBroker(redis: redis, client: client, secrets: { app in
        guard case .wechat(let credentials)? = try await apps.fetch(.wechat, app)?.credentials else { return nil }
        return credentials.appSecret
    }, logger: logger)
    let alipayKeys = AlipayKeyring { app in
        guard case .alipay(let credentials)? = try await apps.fetch(.alipay, app)?.credentials else { return nil }
        return try AlipayCrypto(alipayPublicKey: credentials.alipayPublicKey, appPrivateKey: credentials.appPrivateKey)
    }
    let sender = PushSender(client: client, broker: broker, alipay: AlipayClient(http: HTTPClient.shared, base: configuration.alipayAPIBase),
                            alipayKeys: alipayKeys)
    return PushPool.service(database: database, sender: sender,
                            pace: PushPace(redis: redis, ratePerSecond: configuration.pushRatePerApp, dailyQuota: configuration.pushDailyQuota),
                            logger: logger)
}
