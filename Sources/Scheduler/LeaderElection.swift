import Logging
import PostgresClient
import ServiceLifecycle

/// One leader among several scheduler processes, by a PostgreSQL session advisory lock.
///
/// The lock lives as long as the session that took it: if the leader dies or its connection
/// drops, PostgreSQL releases it and another process takes over within one `retryInterval`.
/// The leader checks its session every interval, so it also notices losing it.
public struct LeaderElection: Service {
    /// "FanFlowL" in ASCII; distinct from the migration lock.
    public static let lockKey: Int64 = 0x46_61_6E_46_6C_6F_77_4C
    let databaseURL: String
    let retryInterval: Duration
    let logger: Logger
    let onChange: @Sendable (Bool) async -> Void

    public init(databaseURL: String, retryInterval: Duration = .seconds(5), logger: Logger,
                onChange: @escaping @Sendable (Bool) async -> Void = { _ in }) {
        self.databaseURL = databaseURL
        self.retryInterval = retryInterval
        self.logger = logger
        self.onChange = onChange
    }

    public func run() async throws {
        var connection: PostgresConnection?
        var leading = false
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            do {
                if connection == nil { connection = try await PostgresConnection(url: databaseURL) }
                guard let session = connection else { continue }
                if leading {
                    _ = try await session.query("SELECT 1")
                } else if try await session.query("SELECT pg_try_advisory_lock($1) AS taken", [Self.lockKey])[0].bool("taken") == true {
                    leading = true
                    logger.notice("this scheduler is now the leader")
                    await onChange(true)
                }
            } catch {
                logger.error("leader election: database unreachable", metadata: ["error": "\(error)"])
                await connection?.close()
                connection = nil
                if leading {
                    leading = false
                    logger.warning("leadership lost with the database session")
                    await onChange(false)
                }
            }
            // Wakes at once on graceful shutdown instead of finishing the interval.
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: retryInterval) }
        }
        if leading {
            _ = try? await connection?.query("SELECT pg_advisory_unlock($1)", [Self.lockKey])
            await onChange(false)
            logger.notice("leadership released")
        }
        await connection?.close()
    }
}
