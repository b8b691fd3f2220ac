import Contracts
import Foundation
import Gateway
import Hummingbird
import HummingbirdTesting
import Logging
import Testing

@Suite("Gateway process")
struct GatewayProcessTests {
    private func configuration(databaseURL: String = TestEnvironment.databaseURL) throws -> FanFlowConfiguration {
        try FanFlowConfiguration.load([
            "FANFLOW_AMQP_URL": TestEnvironment.amqpURL,
            "FANFLOW_REDIS_URL": TestEnvironment.redisURL,
            "FANFLOW_DATABASE_URL": databaseURL,
            "FANFLOW_ADMIN_TOKEN": "test-token-0123456789",
            "FANFLOW_SECRET_KEY": GatewayHarness.secretKey,
            
        ].compactMapValues { $0 }, role: .gateway)
    }

    @Test("over real HTTP: /health answers, /ready probes broker, Redis and database")
    func healthAndReady() async throws {
        let gateway = try await Gateway(configuration: try configuration(), logger: Logger(label: "test.gateway"))
        try await gateway.application().test(.live) { client in
            try await client.execute(uri: "/health", method: .get) { response in
                #expect(response.status == .ok)
                #expect(String(buffer: response.body) == #"{"status":"ok"}"#)
            }
            try await client.execute(uri: "/ready", method: .get) { response in
                #expect(response.status == .ok)
                let body = try JSONSerialization.jsonObject(with: Data(buffer: response.body)) as? [String: Any]
                #expect(body?["status"] as? String == "ready")
                #expect(body?["checks"] as? [String: String] == ["broker": "ok", "redis": "ok", "database": "ok"])
            }
            try await client.execute(uri: "/nowhere", method: .get) { response in
                #expect(response.status == .notFound)
            }
        }
        await gateway.shutdown()
    }

    @Test("/ready answers 503 and names the dependency that failed")
    func notReady() async throws {
        let unreachable = "postgresql://fanflow:fanflow@127.0.0.1:1/fanflow?connect_timeout=1"
        let gateway = try await Gateway(configuration: try configuration(databaseURL: unreachable),
                                        logger: Logger(label: "test.gateway"))
        try await gateway.application().test(.live) { client in
            try await client.execute(uri: "/ready", method: .get) { response in
                #expect(response.status == .serviceUnavailable)
                let body = try JSONSerialization.jsonObject(with: Data(buffer: response.body)) as? [String: Any]
                #expect(body?["status"] as? String == "not_ready")
                let checks = body?["checks"] as? [String: String]
                #expect(checks?["broker"] == "ok")
                #expect(checks?["redis"] == "ok")
                #expect(checks?["database"]?.contains("postgres connect") == true)
            }
        }
        await gateway.shutdown()
    }
}
