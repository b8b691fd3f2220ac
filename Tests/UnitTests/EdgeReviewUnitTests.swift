import Contracts
@testable import Gateway
import Testing

@Suite("Gateway edges: one parser per rule")
struct EdgeReviewUnitTests {
    let valid = [
        "FANFLOW_AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/%2F",
        "FANFLOW_REDIS_URL": "redis://127.0.0.1:6379/0",
        "FANFLOW_DATABASE_URL": "postgresql://fanflow:secret@127.0.0.1:5432/fanflow",
        "FANFLOW_ADMIN_TOKEN": "0123456789abcdef0123",
        "FANFLOW_SECRET_KEY": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    ]

    @Test("FANFLOW_TRUSTED_PROXIES: what configuration accepts, the gateway uses; an IPv4-mapped network with a prefix over 32 is refused")
    func proxiesOneParser() throws {
        var environment = valid
        environment["FANFLOW_TRUSTED_PROXIES"] = "10.0.0.0/8, 2001:db8::/32, ::ffff:192.0.2.0/24, 127.0.0.1"
        let configuration = try FanFlowConfiguration.load(environment, role: .gateway)
        #expect(configuration.trustedProxies.count == 4)
        #expect(configuration.trustedProxies.allSatisfy { CIDR($0) != nil })
        for bad in ["::ffff:10.0.0.0/104", "10.0.0.0/33", "2001:db8::/129", "10.0.0.0/", "example.com/8"] {
            environment["FANFLOW_TRUSTED_PROXIES"] = bad
            do {
                _ = try FanFlowConfiguration.load(environment, role: .gateway)
                Issue.record("\(bad) accepted")
            } catch {
                #expect(error.problems.map(\.variable) == ["FANFLOW_TRUSTED_PROXIES"], "\(bad)")
            }
        }
    }

    @Test("one app-id rule: what the admin API registers is what webhook paths, /v1/events and payment notifications look up")
    func appIDShape() {
        for good in ["wx1234567890abcdef", "2021000117650139", "brand_site-1.prod", String(repeating: "a", count: 64)] {
            #expect(AppIDShape.isValid(good), "\(good)")
        }
        for bad in ["", String(repeating: "a", count: 65), "a b", "a\u{0}b", "a/b", "a!b", "应用"] {
            #expect(!AppIDShape.isValid(bad), "\(bad)")
        }
    }

    @Test("WeChat seconds and Weibo milliseconds are fixed in length; other channels take either")
    func freshnessUnits() throws {
        let window = FreshnessWindow(seconds: 300)
        let now = 1_765_000_000.0
        try window.check("1765000000", now: now, unit: .seconds)
        try window.check("1765000000424", now: now, unit: .milliseconds)
        try window.check("1765000000424", now: now)
        try window.check("1765000000", now: now)
        for (text, unit) in [("1765000000424", FreshnessWindow.Unit.seconds), ("1765000000", .milliseconds),
                             ("+765000000", .seconds), ("01765000000", .seconds), ("17650000004240", .milliseconds)] {
            #expect(throws: GatewayError.self, "\(text)") { try window.check(text, now: now, unit: unit) }
        }
    }
}
