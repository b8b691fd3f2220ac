import AMQPClient
import ArgumentParser
import Contracts
import Foundation
import Gateway
import Logging
import Loyalty
import PostgresClient
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
        subcommands: [GatewayCommand.self, WorkerCommand.self, SchedulerCommand.self, MigrateCommand.self,
                       RebuildCountersCommand.self])
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
        discussion: "Pools in this build: \(PoolName.available.map(\.rawValue).joined(separator: ", ")).")

    @Option(name: .customLong("pool"), help: "A pool and its consumer count, e.g. behavior=2 (repeatable).")
    var pools: [String] = ["behavior=1"]

    @Option(help: "Unacknowledged messages per consumer.")
    var prefetch: Int = 500

    func run() async throws {
        let specs: [PoolSpec]
        do { specs = try pools.map { try PoolSpec(parsing: $0) } } catch {
            throw ValidationError("\(error)")
        }
        let configuration = try loadConfiguration(role: .worker)
        let logger = Logger(label: "fanflow.worker")
        var amqp = try AMQPConfiguration(url: configuration.amqpURL)
        amqp.connectionName = "fanflow-worker"
        let database = PostgresPool(url: configuration.databaseURL,
                                    maximumConnections: max(2, specs.reduce(0) { $0 + $1.consumers } + 1))
        var services: [any Service] = []
        var closers: [@Sendable () async -> Void] = [{ await database.close() }]
        var points: PointsPool?
        for spec in specs {
            let handler: any BatchHandler
            switch spec.name {
            case .behavior:
                handler = EnvelopeBatchHandler(BehaviorStore(database: database), logger: logger)
            case .points:
                let pool: PointsPool
                if let existing = points {
                    pool = existing
                } else {
                    let redis = try await RedisPool(url: configuration.redisURL, size: 2)
                    pool = PointsPool(database: database, redis: redis, timeZone: configuration.timeZone)
                    points = pool
                    // Level changes leave through the outbox; one relay per process.
                    let broker = ManagedAMQPConnection(configuration: amqp, logger: logger) { connection in
                        try await connection.declare(Topology.standard)
                        try await connection.enableConfirms()
                    }
                    try await broker.start()
                    services.append(OutboxRelay(outbox: Outbox(database: database), broker: broker, logger: logger))
                    closers += [{ await broker.close() }, { await redis.close() }]
                }
                handler = EnvelopeBatchHandler(pool, logger: logger)
            case .orders, .push: throw ValidationError("pool \(spec.name.rawValue) is not part of this build yet")
            }
            for _ in 0..<spec.consumers {
                services.append(ConsumerService(amqp: amqp, queue: spec.name.queue, prefetch: prefetch,
                                                handler: handler, logger: logger))
            }
        }
        logger.notice("worker starting", metadata: ["pools": "\(pools.joined(separator: " "))"])
        try await runServices(services, logger: logger)
        for close in closers { await close() }
        logger.notice("worker stopped")
    }
}

struct SchedulerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scheduler",
        abstract: "Elect one leader among schedulers; the leader grants matured purchase points and expires points.")

    func run() async throws {
        let configuration = try loadConfiguration(role: .scheduler)
        let logger = Logger(label: "fanflow.scheduler")
        var amqp = try AMQPConfiguration(url: configuration.amqpURL)
        amqp.connectionName = "fanflow-scheduler"
        let broker = ManagedAMQPConnection(configuration: amqp, logger: logger) { connection in
            try await connection.declare(Topology.standard)
            try await connection.enableConfirms()
        }
        try await broker.start()
        let database = PostgresPool(url: configuration.databaseURL, maximumConnections: 2)
        let tasks = LeaderTasks(ledger: Ledger(database: database), rules: RuleStore(database: database), logger: logger)
        logger.notice("scheduler started")
        try await runServices([LeaderElection(databaseURL: configuration.databaseURL, logger: logger) { tasks.setLeading($0) }, tasks],
                              logger: logger)
        await database.close()
        await broker.close()
        logger.notice("scheduler stopped")
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
        logger.notice("counters rebuilt", metadata: ["raised": "\(raised)", "zone": "\(configuration.timeZone.identifier)"])
        await redis.close()
        await database.close()
    }
}
