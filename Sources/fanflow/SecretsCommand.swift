import Apps
import ArgumentParser
import Contracts
import Foundation
import Gateway
import Logging
import PostgresClient

/// `fanflow secrets seal`: seals app credentials stored before FANFLOW_SECRET_KEY was set (plain
/// JSON, which the gateway refuses to load) and reseals those sealed before sealing was bound to
/// its row (`v1:`), so every row is `v2:` and opens only under its own platform and app id.
struct SecretsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "secrets",
        abstract: "Manage app credentials at rest.",
        subcommands: [Seal.self])

    struct Seal: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Seal every unencrypted (or old-format) app credential row with FANFLOW_SECRET_KEY; safe to repeat.")

        func run() async throws {
            let configuration = try loadConfiguration(role: .tool)
            let keys: SecretKeys
            do { keys = try SecretKeys(base64: configuration.secretKey) } catch {
                FileHandle.standardError.write(Data("fanflow: \(error)\n".utf8))
                throw ExitCode(78) // EX_CONFIG
            }
            let database = PostgresPool(url: configuration.databaseURL, maximumConnections: 1)
            let report: AppRegistry.SealReport
            do {
                report = try await AppRegistry(database: database, keys: keys, logger: Logger(label: "fanflow.secrets")).sealAll()
            } catch {
                await database.close()
                throw error
            }
            await database.close()
            for name in report.sealed { print("sealed\t\(name)") }
            for name in report.failed { print("failed\t\(name)\t(cannot be opened with this FANFLOW_SECRET_KEY)") }
            print("\(report.sealed.count) sealed, \(report.alreadySealed) already sealed, \(report.failed.count) failed")
            if !report.failed.isEmpty { throw ExitCode(1) }
        }
    }
}
