@testable import Gateway
import Synchronization
import Testing

/// `/metrics` reads the dead-letter depth from PostgreSQL: these pin that requests share it.
struct DeadLetterDepthCacheTests {
    struct Down: Error {}

    final class Source: Sendable {
        let reads = Mutex(0)
        let failing = Mutex(false)
        let value = Mutex(["fanflow.behavior": 1])

        func read() async throws -> [String: Int] {
            reads.withLock { $0 += 1 }
            try await Task.sleep(for: .milliseconds(50))  // a query in flight while others arrive
            if failing.withLock({ $0 }) { throw Down() }
            return value.withLock { $0 }
        }
    }

    @Test("100 concurrent scrapes make one query; within maxAge none; after it one; a failed read keeps the last figure")
    func oneQueryAtATime() async throws {
        let source = Source()
        // A long maxAge, aged by hand with expire(): a 300 ms one ran out while 100 tasks started on a
        // loaded machine (a full-suite run), and the "within maxAge" step then read again.
        let cache = DeadLetterDepthCache(maxAge: .seconds(60)) { try await source.read() }
        let figures = await withTaskGroup(of: [String: Int]?.self) { group in
            for _ in 0..<100 { group.addTask { await cache.depth() } }
            return await group.reduce(into: []) { $0.append($1) }
        }
        #expect(source.reads.withLock { $0 } == 1)
        #expect(figures.allSatisfy { $0 == ["fanflow.behavior": 1] })

        source.value.withLock { $0 = ["fanflow.behavior": 2] }
        #expect(await cache.depth() == ["fanflow.behavior": 1])
        #expect(source.reads.withLock { $0 } == 1)

        cache.expire()
        #expect(await cache.depth() == ["fanflow.behavior": 2])
        #expect(source.reads.withLock { $0 } == 2)

        source.failing.withLock { $0 = true }
        cache.expire()
        #expect(await cache.depth() == ["fanflow.behavior": 2], "the database down: the last figure stays")
        #expect(await cache.depth() == ["fanflow.behavior": 2])
        #expect(source.reads.withLock { $0 } == 3, "a failed read is not retried before maxAge")
    }

    @Test("before any successful read there is no figure (the gauge renders only its help lines)")
    func nothingYet() async {
        let source = Source()
        source.failing.withLock { $0 = true }
        let cache = DeadLetterDepthCache(maxAge: .seconds(15)) { try await source.read() }
        #expect(await cache.depth() == nil)
    }
}
