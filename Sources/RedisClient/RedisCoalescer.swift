import Synchronization

/// Sends the script calls of many concurrent callers as one pipeline: while one round trip is in
/// flight, new calls queue up and go together in the next. Under load a request's Redis work then
/// costs a share of one write and one read instead of its own pair of system calls, on both sides.
/// With no concurrency it behaves like a plain call (a batch of one).
public final class RedisCoalescer: Sendable {
    public typealias Call = (script: RedisScript, keys: [String], arguments: [String])

    private struct Waiting: Sendable {
        let calls: [Call]
        let continuation: CheckedContinuation<[RedisReply], any Error>
    }

    private let connection: RedisConnection
    private let state = Mutex<(waiting: [Waiting], flushing: Bool)>(([], false))

    public init(connection: RedisConnection) {
        self.connection = connection
    }

    /// Replies in the order of `calls`; an error reply is a reply, a lost connection throws.
    public func evalSHA(_ calls: [Call]) async throws -> [RedisReply] {
        guard !calls.isEmpty else { return [] }
        return try await withCheckedThrowingContinuation { continuation in
            let startFlushing = state.withLock { state -> Bool in
                state.waiting.append(Waiting(calls: calls, continuation: continuation))
                if state.flushing { return false }
                state.flushing = true
                return true
            }
            if startFlushing { Task { await self.flush() } }
        }
    }

    private func flush() async {
        while true {
            let batch = state.withLock { state -> [Waiting] in
                let batch = state.waiting
                state.waiting = []
                if batch.isEmpty { state.flushing = false }
                return batch
            }
            if batch.isEmpty { return }
            do {
                let calls = batch.flatMap(\.calls)
                let replies = try await connection.evalSHAPipelined(calls)
                guard replies.count == calls.count else {
                    throw RedisError(.protocolError, "\(replies.count) replies to a pipeline of \(calls.count) calls")
                }
                var offset = 0
                for waiting in batch {
                    waiting.continuation.resume(returning: Array(replies[offset..<(offset + waiting.calls.count)]))
                    offset += waiting.calls.count
                }
            } catch {
                for waiting in batch { waiting.continuation.resume(throwing: error) }
            }
        }
    }
}
