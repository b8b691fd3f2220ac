/// Matches publisher confirms to the messages they confirm.
///
/// After `confirm.select` the broker numbers a channel's publishes 1, 2, 3… and answers with
/// `basic.ack`/`basic.nack` carrying that number; `multiple` covers every number up to it.
/// rabbitmq-c does not track this, so this value type does, with no I/O: the connection feeds it
/// frames and resumes whatever waiters it hands back.
///
/// Deadlines never decrease in publish order (one timeout per connection), so expiry only ever
/// looks at the oldest waiters.
public struct ConfirmTracker<Waiter> {
    public private(set) var nextSequence: UInt64 = 1
    private var waiting: [UInt64: (waiter: Waiter, deadline: UInt64)] = [:]
    /// Sequence numbers in publish order; entries already answered are skipped lazily.
    private var order: [UInt64] = []
    private var head = 0

    public init() {}

    public var outstanding: Int { waiting.count }

    /// Records the next publish and returns its sequence number.
    @discardableResult
    public mutating func register(_ waiter: Waiter, deadline: UInt64) -> UInt64 {
        let sequence = nextSequence
        nextSequence += 1
        waiting[sequence] = (waiter, deadline)
        order.append(sequence)
        return sequence
    }

    /// The waiters answered by a `basic.ack`/`basic.nack` with this delivery tag.
    public mutating func answer(tag: UInt64, multiple: Bool) -> [Waiter] {
        guard multiple else {
            return waiting.removeValue(forKey: tag).map { [$0.waiter] } ?? []
        }
        var answered: [Waiter] = []
        while head < order.count, order[head] <= tag {
            if let entry = waiting.removeValue(forKey: order[head]) { answered.append(entry.waiter) }
            head += 1
        }
        compact()
        return answered
    }

    /// The waiters whose deadline passed by `now`.
    public mutating func expire(now: UInt64) -> [Waiter] {
        var expired: [Waiter] = []
        while head < order.count {
            let sequence = order[head]
            guard let entry = waiting[sequence] else { head += 1; continue }
            guard entry.deadline <= now else { break }
            waiting.removeValue(forKey: sequence)
            expired.append(entry.waiter)
            head += 1
        }
        compact()
        return expired
    }

    /// Every waiter, for a channel that closed; numbering starts again at 1 on the next channel.
    public mutating func reset() -> [Waiter] {
        let all = order[head...].compactMap { waiting[$0]?.waiter }
        waiting.removeAll()
        order.removeAll()
        head = 0
        nextSequence = 1
        return all
    }

    private mutating func compact() {
        if head > 4096, head * 2 > order.count {
            order.removeFirst(head)
            head = 0
        }
    }
}
