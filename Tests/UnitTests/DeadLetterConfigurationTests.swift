import Contracts
import Testing

@Suite("FANFLOW_DEAD_LETTER_AFTER")
struct DeadLetterConfigurationTests {
    let valid = [
        "FANFLOW_AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/%2F",
        "FANFLOW_REDIS_URL": "redis://127.0.0.1:6379/0",
        "FANFLOW_DATABASE_URL": "postgresql://fanflow:fanflow@127.0.0.1:5432/fanflow",
        "FANFLOW_SECRET_KEY": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    ]

    @Test("default 5, a setting in 1-100 is taken, 0 and words are refused naming the variable")
    func deadLetterAfter() throws {
        #expect(try FanFlowConfiguration.load(valid, role: .worker).deadLetterAfter == 5)
        var environment = valid
        environment["FANFLOW_DEAD_LETTER_AFTER"] = "8"
        #expect(try FanFlowConfiguration.load(environment, role: .worker).deadLetterAfter == 8)
        for bad in ["0", "101", "five", "-1"] {
            environment["FANFLOW_DEAD_LETTER_AFTER"] = bad
            do {
                _ = try FanFlowConfiguration.load(environment, role: .worker)
                Issue.record("\(bad) accepted")
            } catch {
                #expect(error.problems.map(\.variable) == ["FANFLOW_DEAD_LETTER_AFTER"])
            }
        }
    }
}
