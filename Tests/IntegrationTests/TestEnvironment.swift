import Foundation
import Testing

/// The servers started by `scripts/services up`; `scripts/test` exports their URLs.
enum TestEnvironment {
    static func url(_ variable: String) -> String {
        guard let value = ProcessInfo.processInfo.environment[variable], !value.isEmpty else {
            Issue.record("\(variable) is not set: run the tests through scripts/test (it starts the servers)")
            return "unset://\(variable)"
        }
        return value
    }

    static var amqpURL: String { url("FANFLOW_AMQP_URL") }
    static var redisURL: String { url("FANFLOW_REDIS_URL") }
    static var databaseURL: String { url("FANFLOW_DATABASE_URL") }

    /// A name no other test uses, so tests can run in parallel against shared servers.
    static func unique(_ prefix: String) -> String {
        "\(prefix)-\(UUID().uuidString.prefix(8).lowercased())"
    }
}
