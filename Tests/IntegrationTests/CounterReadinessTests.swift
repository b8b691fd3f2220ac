import AMQPClient
import Contracts
import Foundation
import Logging
import Loyalty
import RedisClient
import Runtime
import Testing
@testable import Workers

/// Redis losing its data while the points pool runs. These tests delete the readiness marker, so
/// they run in a Redis database of their own (13: no other test or bench uses it) and one at a time;
/// they never flush it, they delete the marker and their own members' keys.
@Suite("Counter readiness: after Redis lost its data the pool rebuilds the counters before deciding", .serialized)
struct CounterReadinessTests {
    static func ownRedis() async throws -> RedisPool {
        let shared = TestEnvironment.redisURL
        var url = shared
        if let scheme = shared.range(of: "://"), let slash = shared[scheme.upperBound...].firstIndex(of: "/") {
            url = String(shared[..<slash])
        }
        return try await RedisPool(url: url + "/13", size: 2)
    }

    /// What a FLUSHDB does to one member: the marker and every key under the member's hash tag go.
    static func lose(_ member: Int64, in redis: RedisPool) async throws {
        var cursor = "0"
        var keys: [String] = []
        repeat {
            let reply = try await redis.connection.command(["SCAN", cursor, "MATCH", "fanflow:{m:\(member)}:*", "COUNT", "1000"])
            let parts = try #require(reply.array)
            cursor = try #require(parts[0].string)
            keys += (parts[1].array ?? []).compactMap(\.string)
        } while cursor != "0"
        #expect(!keys.isEmpty)
        try await redis.connection.command(["DEL", CounterReadiness.markerKey] + keys)
    }

    static func now() -> String { ISO8601DateFormatter().string(from: Date()) }

    @Test("a member capped at 15 a day with 12 granted, counters lost: further events end at exactly 15, never 18")
    func rebuildBeforeDeciding() async throws {
        let h = try await PointsHarness.open()
        let redis = try await Self.ownRedis()
        let kind = h.kind("checkin")
        let rule = PointsRule(code: "\(h.prefix)-day", kinds: [kind], points: 3, growth: 0,
                              caps: .init(daily: .init(points: 15)), reason: "daily check-in")
        let pool = h.pool(.init(rules: [rule], levels: .standard), redis: redis)
        try await CounterReadiness.markReady(redis)
        try await pool.process((0..<4).map { h.event("a\($0)", kind, openid: "o1", at: Self.now()) })
        let member = try #require(try await h.member("o1"))
        #expect(member.points == 12)

        try await Self.lose(member.id, in: redis)
        // Six more events at 3 points each: 18 over an empty counter, 3 under the truth.
        try await pool.process((0..<3).map { h.event("b\($0)", kind, openid: "o1", at: Self.now()) })
        try await pool.process((3..<6).map { h.event("b\($0)", kind, openid: "o1", at: Self.now()) })
        #expect(try await h.member("o1")?.points == 15)
        let day = PeriodCalendar(timeZone: h.timeZone).periods(of: Date()).day
        let counter = PointsDecider.counterKey(member: member.id, rule: rule.code, measure: "p", period: "d" + day)
        #expect(try await redis.connection.command(["GET", counter]).int == 15)
        #expect(try await !redis.connection.command(["GET", CounterReadiness.markerKey]).isNull)
        #expect(try await redis.connection.command(["EXISTS", CounterReadiness.lockKey]).int == 0)
        await redis.close()
        await h.close()
    }

    @Test("with the marker missing and another worker holding the rebuild lock, the pool holds the batch until the marker appears")
    func holdsWhileAnotherRebuilds() async throws {
        let h = try await PointsHarness.open()
        let redis = try await Self.ownRedis()
        let kind = h.kind("post")
        let program = RuleBook.Program(rules: [PointsRule(code: "\(h.prefix)-post", kinds: [kind], points: 3, growth: 0,
                                                          caps: .init(daily: .init(points: 15)), reason: "post")],
                                       levels: .standard)
        try await redis.connection.command(["DEL", CounterReadiness.markerKey])
        try await redis.connection.command(["SET", CounterReadiness.lockKey, "someone-else", "PX", "60000"])

        // The error is an outage: held with backoff, never dead-lettered.
        let pool = h.pool(program, redis: redis)
        await #expect(throws: CountersNotReady.self) { try await pool.process([h.event("direct", kind, openid: "o1", at: Self.now())]) }
        do {
            try await pool.process([h.event("direct", kind, openid: "o1", at: Self.now())])
        } catch {
            #expect(!ConsumerFailure.classify(error).countsAgainstMessages)
        }

        var amqp = try AMQPConfiguration(url: TestEnvironment.amqpURL)
        amqp.connectionName = "test-readiness"
        let consumer = ConsumerService(amqp: amqp, queue: h.queue, prefetch: 16,
                                       handler: EnvelopeBatchHandler(pool, logger: Logger(label: "test.readiness")),
                                       logger: Logger(label: "test.readiness"))
        let worker = Task { try await consumer.run() }
        try await h.publish((0..<2).map { h.event("e\($0)", kind, openid: "o1", at: Self.now()) })
        try await Task.sleep(for: .seconds(2))
        #expect(try await h.ledgerCount() == 0)
        #expect(try await h.publisher.messageCount(queue: h.queue.deadLetter.rawValue) == 0)

        // The other worker finishes its rebuild.
        try await CounterReadiness.markReady(redis)
        try await redis.connection.command(["DEL", CounterReadiness.lockKey])
        try await h.waitUntil { try await h.ledgerCount() >= 2 }
        try await h.stop([worker])
        #expect(try await h.ledgerCount() == 2)
        #expect(try await h.member("o1")?.points == 6)
        await redis.close()
        await h.close()
    }
}
