import Foundation
import RedisClient
import Testing

@Suite("Redis client against redis-server")
struct RedisClientTests {
    private let capScript = RedisScript("""
        local used = tonumber(redis.call('GET', KEYS[1]) or '0')
        local cap = tonumber(ARGV[1])
        local want = tonumber(ARGV[2])
        local grant = math.max(0, math.min(want, cap - used))
        if grant > 0 then redis.call('INCRBY', KEYS[1], grant) end
        redis.call('EXPIRE', KEYS[1], 86400)
        return grant
        """)

    @Test("coalesced calls: 200 concurrent callers share pipelines and each gets its own replies, in order")
    func coalescedCalls() async throws {
        let pool = try await RedisPool(url: TestEnvironment.redisURL, size: 2)
        let echo = RedisScript("return {KEYS[1], ARGV[1]}")
        let prefix = TestEnvironment.unique("test:co")
        try await withThrowingTaskGroup(of: Void.self) { group in
            for caller in 0..<200 {
                group.addTask {
                    let calls = (0..<3).map { n in (script: echo, keys: ["\(prefix):\(caller)"], arguments: ["\(n)"]) }
                    let replies = try await pool.evalSHA(calls)
                    #expect(replies.map { $0.array?.compactMap(\.string) ?? [] }
                            == (0..<3).map { ["\(prefix):\(caller)", "\($0)"] })
                }
            }
            try await group.waitForAll()
        }
        // A Lua error is that call's reply, not the batch's failure.
        let mixed = try await pool.evalSHA([(RedisScript("return redis.error_reply('NOPE')"), [], []), (echo, ["k"], ["v"])])
        guard case .error(let message)? = mixed.first else { Issue.record("expected an error reply, got \(String(describing: mixed.first))"); return }
        #expect(message.hasSuffix("NOPE"))
        #expect(mixed.last?.array?.compactMap(\.string) == ["k", "v"])
        await pool.close()
    }

    @Test("commands return typed replies; error replies are typed errors with the server's text")
    func typedReplies() async throws {
        let redis = try await RedisConnection(url: TestEnvironment.redisURL)
        let key = TestEnvironment.unique("test:k")
        #expect(try await redis.command(["SET", key, "41"]) == .status("OK"))
        #expect(try await redis.command(["INCR", key]).int == 42)
        #expect(try await redis.command(["GET", key]).string == "42")
        #expect(try await redis.command(["GET", key + ":absent"]).isNull)
        _ = try await redis.command(["RPUSH", key + ":list", "a", "b"])
        #expect(try await redis.command(["LRANGE", key + ":list", "0", "-1"]).array?.compactMap(\.string) == ["a", "b"])
        do throws(RedisError) {
            try await redis.command(["LPUSH", key, "x"])
            Issue.record("expected WRONGTYPE")
        } catch {
            #expect(error.code == .server)
            #expect(error.serverErrorPrefix == "WRONGTYPE")
        }
        // Binary-safe values and arguments with spaces and newlines.
        #expect(try await redis.command(["SET", key, "a b\r\nc"]) == .status("OK"))
        #expect(try await redis.command(["GET", key]).string == "a b\r\nc")
        try await redis.command(["DEL", key, key + ":list"])
    }

    @Test("a pipeline is one round trip and keeps each reply, errors included, in place")
    func pipeline() async throws {
        let redis = try await RedisConnection(url: TestEnvironment.redisURL)
        let key = TestEnvironment.unique("test:p")
        let replies = try await redis.pipeline([["SET", key, "1"], ["INCR", key], ["HGET", key, "f"], ["INCR", key]])
        #expect(replies.count == 4)
        #expect(replies[1] == .integer(2))
        if case .error(let message) = replies[2] { #expect(message.hasPrefix("WRONGTYPE")) } else { Issue.record("expected an error reply") }
        #expect(replies[3] == .integer(3))
        try await redis.command(["DEL", key])
    }

    @Test("EVALSHA works after SCRIPT FLUSH, singly and pipelined")
    func evalshaAfterFlush() async throws {
        let redis = try await RedisConnection(url: TestEnvironment.redisURL)
        let other = try await RedisConnection(url: TestEnvironment.redisURL)
        let key = TestEnvironment.unique("test:cap")
        #expect(try await redis.evalSHA(capScript, keys: [key], arguments: ["10", "4"]).int == 4)
        try await other.command(["SCRIPT", "FLUSH"])
        #expect(try await redis.evalSHA(capScript, keys: [key], arguments: ["10", "4"]).int == 4)
        try await other.command(["SCRIPT", "FLUSH"])
        let replies = try await redis.evalSHAPipelined((0..<5).map { _ in (capScript, [key], ["10", "4"]) })
        // 8 of 10 used: the next call gets the 2 left, then nothing: the cap holds across the reload.
        #expect(replies.map(\.int) == [2, 0, 0, 0, 0])
        try await redis.command(["DEL", key])
    }

    @Test("a Lua error comes back as a typed server error")
    func luaError() async throws {
        let redis = try await RedisConnection(url: TestEnvironment.redisURL)
        await #expect(throws: RedisError.self) {
            try await redis.evalSHA(RedisScript("return redis.call('NOSUCHCOMMAND')"), keys: [], arguments: [])
        }
    }

    @Test("the connection comes back after the server restarts")
    func reconnectAfterRestart() async throws {
        let server = try await ThrowawayRedis.start()
        let redis = try await RedisConnection(url: server.url)
        #expect(try await redis.command(["PING"]) == .status("PONG"))
        await server.stop()
        try await server.start()
        // The old socket is dead; the client notices before sending and reconnects.
        #expect(try await redis.command(["PING"]) == .status("PONG"))
        #expect(await redis.connectCount == 2)
        await server.stop()
    }

    @Test("URLs are parsed with password, port and database")
    func urls() throws {
        let c = try RedisConfiguration(url: "redis://:s%40cret@10.0.0.1:6380/3")
        #expect(c.host == "10.0.0.1")
        #expect(c.port == 6380)
        #expect(c.password == "s@cret")
        #expect(c.user == nil)
        #expect(c.database == 3)
        #expect(throws: RedisError.self) { try RedisConfiguration(url: "http://x") }
        #expect(throws: RedisError.self) { try RedisConfiguration(url: "redis://h:99999") }
    }
}

/// A redis-server of the test's own on a free port, as a child process, so restarting it disturbs no
/// other test.
final class ThrowawayRedis: @unchecked Sendable {
    let port = Int.random(in: 20_000...29_999)
    private var process: Process?
    var url: String { "redis://127.0.0.1:\(port)/0" }

    static func start() async throws -> ThrowawayRedis {
        let server = ThrowawayRedis()
        try await server.start()
        return server
    }

    func start() async throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["redis-server", "--bind", "127.0.0.1", "--port", "\(port)", "--save", "",
                             "--appendonly", "no", "--dir", NSTemporaryDirectory()]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        self.process = process
        for _ in 0..<200 {
            if let probe = try? await RedisConnection(url: url), (try? await probe.command(["PING"])) != nil { return }
            try await Task.sleep(for: .milliseconds(25))
        }
        throw RedisError(.connect, "throwaway redis-server on \(port) did not start")
    }

    /// SHUTDOWN through the protocol, then wait until the port refuses connections.
    func stop() async {
        guard process != nil else { return }
        if let admin = try? await RedisConnection(url: url) { _ = try? await admin.command(["SHUTDOWN", "NOSAVE"]) }
        for _ in 0..<200 {
            guard (try? await RedisConnection(url: url)) != nil else { break }
            try? await Task.sleep(for: .milliseconds(25))
        }
        process = nil
    }
}
