@testable import ClientSupport
import Contracts
import Foundation
@testable import Gateway
import Testing

@Suite("Configuration: the gateway's edge")
struct EdgeConfigurationTests {
    let valid = [
        "FANFLOW_AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/%2F",
        "FANFLOW_REDIS_URL": "redis://127.0.0.1:6379/0",
        "FANFLOW_DATABASE_URL": "postgresql://fanflow:secret@127.0.0.1:5432/fanflow",
        "FANFLOW_ADMIN_TOKEN": "0123456789abcdef0123",
        "FANFLOW_SECRET_KEY": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    ]

    @Test("the gateway and every worker (the push pool opens sealed secrets) refuse to start without FANFLOW_SECRET_KEY, naming it; scheduler and tools do not need it")
    func secretKeyRequired() throws {
        var environment = valid
        environment["FANFLOW_SECRET_KEY"] = nil
        for role in [FanFlowConfiguration.Role.gateway, .worker] {
            do {
                _ = try FanFlowConfiguration.load(environment, role: role)
                Issue.record("expected \(role) to refuse")
            } catch {
                #expect(error.problems.map(\.variable) == ["FANFLOW_SECRET_KEY"])
                #expect(error.description.contains("FANFLOW_SECRET_KEY: missing"))
            }
        }
        _ = try FanFlowConfiguration.load(environment, role: .scheduler)
        _ = try FanFlowConfiguration.load(environment, role: .tool)
    }

    @Test("edge settings: defaults, values, and refusals naming the variable")
    func edgeSettings() throws {
        var configuration = try FanFlowConfiguration.load(valid, role: .gateway)
        #expect(configuration.trustedProxies.isEmpty && configuration.h5Origins.isEmpty && configuration.metricsToken == nil)
        #expect(configuration.databaseAcquireTimeoutMilliseconds == 2_000 && configuration.httpReadTimeoutSeconds == 30)
        var environment = valid
        environment["FANFLOW_TRUSTED_PROXIES"] = "10.0.0.0/8, 2001:db8::/32,127.0.0.1"
        environment["FANFLOW_H5_ORIGINS"] = "https://h5.brand.example,http://localhost:3000"
        environment["FANFLOW_WECHAT_REQUIRE_SAFE_MODE"] = "true"
        configuration = try FanFlowConfiguration.load(environment, role: .gateway)
        #expect(configuration.trustedProxies == ["10.0.0.0/8", "2001:db8::/32", "127.0.0.1"])
        #expect(configuration.h5Origins == ["https://h5.brand.example", "http://localhost:3000"])
        #expect(configuration.wechatRequireSafeMode)
        environment["FANFLOW_TRUSTED_PROXIES"] = "10.0.0.0/33"
        environment["FANFLOW_H5_ORIGINS"] = "https://h5.brand.example/path"
        environment["FANFLOW_METRICS_TOKEN"] = "short"
        environment["FANFLOW_HTTP_READ_TIMEOUT_SECONDS"] = "0"
        do {
            _ = try FanFlowConfiguration.load(environment, role: .gateway)
            Issue.record("expected problems")
        } catch {
            #expect(Set(error.problems.map(\.variable)) == ["FANFLOW_TRUSTED_PROXIES", "FANFLOW_H5_ORIGINS", "FANFLOW_METRICS_TOKEN",
                                                            "FANFLOW_HTTP_READ_TIMEOUT_SECONDS"])
        }
    }
}

@Suite("Client addresses, trusted proxies and token buckets")
struct ClientAddressTests {
    @Test("IPv6 clients are limited by their /64; IPv4 and IPv4-mapped by the address")
    func limitKeys() throws {
        #expect(try #require(IPAddress("2001:db8:1:2:aaaa::1")).limitKey == "2001:db8:1:2::/64")
        #expect(try #require(IPAddress("2001:db8:1:2:bbbb:cccc:dddd:eeee")).limitKey == "2001:db8:1:2::/64")
        #expect(try #require(IPAddress("2001:db8:1:3::1")).limitKey == "2001:db8:1:3::/64")
        #expect(try #require(IPAddress("203.0.113.9")).limitKey == "203.0.113.9")
        #expect(try #require(IPAddress("::ffff:203.0.113.9")).limitKey == "203.0.113.9")
        #expect(IPAddress("not an address") == nil && IPAddress("1.2.3.256") == nil)
    }

    @Test("X-Forwarded-For is believed only from a trusted peer, and only up to the rightmost untrusted hop")
    func forwardedFor() throws {
        let proxies = TrustedProxies(networks: ["10.0.0.0/8", "2001:db8:ffff::/48"].compactMap { CIDR($0) })
        let proxy = try #require(IPAddress("10.1.2.3"))
        let stranger = try #require(IPAddress("198.51.100.7"))
        // Not from a proxy: the header is the client's own claim and ignored.
        #expect(proxies.client(peer: stranger, forwardedFor: ["203.0.113.1"]) == stranger)
        // From a proxy: the rightmost hop that is not a proxy; what the client wrote left of it is ignored.
        #expect(proxies.client(peer: proxy, forwardedFor: ["1.1.1.1, 203.0.113.5, 10.9.9.9"])?.description == "203.0.113.5")
        #expect(proxies.client(peer: proxy, forwardedFor: ["1.1.1.1", "203.0.113.5"])?.description == "203.0.113.5")
        // Only proxies in the chain: the leftmost of them.
        #expect(proxies.client(peer: proxy, forwardedFor: ["10.0.0.1"])?.description == "10.0.0.1")
        // No header from a proxy: the proxy itself.
        #expect(proxies.client(peer: proxy, forwardedFor: []) == proxy)
        // Garbage stops the walk at the last address a proxy vouched for.
        #expect(proxies.client(peer: proxy, forwardedFor: ["203.0.113.5, nonsense"]) == proxy)
        // Without trusted proxies, never.
        #expect(TrustedProxies(networks: []).client(peer: proxy, forwardedFor: ["203.0.113.5"]) == proxy)
        #expect(CIDR("2001:db8:ffff::/48")?.contains(try #require(IPAddress("2001:db8:ffff:1::9"))) == true)
        #expect(CIDR("2001:db8:ffff::/48")?.contains(try #require(IPAddress("2001:db8:fffe::9"))) == false)
    }

    @Test("token buckets: a pair is taken all or nothing, limits hold per key across shards")
    func buckets() {
        let buckets = TokenBuckets()
        let limit = TokenBuckets.Limit(rate: 0.001, capacity: 3)
        var allowed = 0
        for _ in 0..<10 where buckets.take(("a", limit), ("b", limit)) == .allowed { allowed += 1 }
        #expect(allowed == 3)
        // "a" is empty: taking with a fresh second key refuses and leaves the fresh bucket full.
        #expect(buckets.take(("a", limit), ("c", limit)) == .firstLimited)
        #expect(buckets.take(("c", limit), cost: 3) == .allowed)
        #expect(buckets.take(("d", limit), ("a", limit)) == .secondLimited)
        // Many keys spread over the shards, each with its own bucket.
        for n in 0..<200 { #expect(buckets.take(("k\(n)", limit), cost: 3) == .allowed) }
        for n in 0..<200 { #expect(buckets.take(("k\(n)", limit)) == .firstLimited) }
        #expect(TokenBuckets.Limit.perSecond(0) == nil && TokenBuckets.Limit.perMinute(0) == nil)
    }
}
