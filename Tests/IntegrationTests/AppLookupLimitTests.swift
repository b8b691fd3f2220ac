import Apps
import Foundation
import Logging
import PostgresClient
import Testing

@Suite("App registry: the unknown-id lookup limit")
struct AppLookupLimitTests {
    @Test("64 concurrent first requests for a registered app from one client share one query and none is refused; unknown ids still are")
    func coldStart() async throws {
        try await ScratchDatabase.with { database, _ in try await Self.coldStart(database) }
    }

    static func coldStart(_ database: PostgresPool) async throws {
        let keys = try SecretKeys(base64: GatewayHarness.secretKey)
        let logger = Logger(label: "test.apps")
        let appID = TestEnvironment.unique("site")
        let writer = AppRegistry(database: database, keys: keys, logger: logger)
        _ = try await writer.put(.server, appID, try AppCredentials.decode(platform: .server, json: Array(#"{"secret":"0123456789abcdef0123456789abcdef"}"#.utf8)))
        // A fresh registry: nothing cached, 2 lookups of unknown ids a second per client.
        let registry = AppRegistry(database: database, keys: keys, lookupRatePerIP: 2, logger: logger)
        let refused = await withTaskGroup(of: Bool.self) { group in
            for _ in 0..<64 {
                group.addTask {
                    do { _ = try await registry.app(.server, appID, client: "192.0.2.7"); return false } catch { return true }
                }
            }
            var count = 0
            for await wasRefused in group where wasRefused { count += 1 }
            return count
        }
        #expect(refused == 0)
        // Unknown ids, one after another from one client: past the burst (2 a second, 4 at once) they are refused.
        var outcomes: [String] = []
        for index in 0..<8 {
            do { _ = try await registry.app(.server, "\(appID)-nope-\(index)", client: "192.0.2.8") } catch {
                if case .rateLimited = error { outcomes.append("limited") } else { outcomes.append("unknown") }
            }
        }
        #expect(outcomes.contains("limited") && outcomes.prefix(4).allSatisfy { $0 == "unknown" }, "\(outcomes)")
        _ = try await writer.delete(.server, appID)
    }
}
