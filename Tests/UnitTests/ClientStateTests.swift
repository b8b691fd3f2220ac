@testable import AMQPClient
import ClientSupport
import Testing

@Suite("Confirm tracking and backoff")
struct ClientStateTests {
    @Test("single and multiple acks answer exactly the messages they cover")
    func acks() {
        var tracker = ConfirmTracker<Int>()
        for n in 1...6 { #expect(tracker.register(n, deadline: 100) == UInt64(n)) }
        #expect(tracker.answer(tag: 2, multiple: false) == [2])
        #expect(tracker.answer(tag: 4, multiple: true).sorted() == [1, 3, 4])
        #expect(tracker.answer(tag: 4, multiple: true).isEmpty)
        #expect(tracker.answer(tag: 99, multiple: false).isEmpty)
        #expect(tracker.outstanding == 2)
    }

    @Test("deadlines expire the oldest first and leave later ones waiting")
    func expiry() {
        var tracker = ConfirmTracker<Int>()
        tracker.register(1, deadline: 10)
        tracker.register(2, deadline: 20)
        tracker.register(3, deadline: 30)
        _ = tracker.answer(tag: 1, multiple: false)
        #expect(tracker.expire(now: 25) == [2])
        #expect(tracker.answer(tag: 2, multiple: false).isEmpty) // a late ack of an expired message is ignored
        #expect(tracker.outstanding == 1)
    }

    @Test("a reset hands back every waiter and numbering starts again at 1")
    func reset() {
        var tracker = ConfirmTracker<Int>()
        for n in 1...3 { tracker.register(n, deadline: 0) }
        _ = tracker.answer(tag: 1, multiple: false)
        #expect(tracker.reset().sorted() == [2, 3])
        #expect(tracker.register(9, deadline: 0) == 1)
    }

    @Test("a long run of acks keeps memory bounded")
    func compaction() {
        var tracker = ConfirmTracker<Int>()
        for n in 1...20_000 {
            tracker.register(n, deadline: 0)
            if n % 100 == 0 { _ = tracker.answer(tag: UInt64(n), multiple: true) }
        }
        #expect(tracker.outstanding == 0)
    }

    @Test("backoff grows, is capped, and jitters within half to full")
    func backoff() {
        let backoff = Backoff(initialMilliseconds: 100, maximumMilliseconds: 1_000)
        for attempt in 0..<30 {
            let delay = backoff.delayMilliseconds(attempt: attempt)
            let cap = min(1_000, 100 << min(attempt, 20))
            #expect(delay >= cap / 2 && delay <= cap)
        }
    }
}
