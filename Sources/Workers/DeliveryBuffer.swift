import AMQPClient
import Synchronization

/// Collects the consumer stream's per-read batches while the handler is busy, so the handler's
/// next batch is everything that arrived meanwhile (up to the prefetch window): under load one
/// transaction and one ack per few hundred deliveries instead of per socket read.
final class DeliveryBuffer: Sendable {
    private struct State {
        var items: [AMQPDelivery] = []
        var waiter: CheckedContinuation<[AMQPDelivery]?, any Error>?
        var finished = false
        var failure: (any Error)?
    }

    private let state = Mutex(State())

    /// Feeds the buffer from `stream` until it ends; run it in a task of its own.
    func fill(from stream: AsyncThrowingStream<[AMQPDelivery], any Error>) async {
        do {
            for try await batch in stream { append(batch) }
            finish(nil)
        } catch {
            finish(error)
        }
    }

    private func append(_ batch: [AMQPDelivery]) {
        let waiter = state.withLock { state -> CheckedContinuation<[AMQPDelivery]?, any Error>? in
            if let waiter = state.waiter {
                state.waiter = nil
                return waiter
            }
            state.items += batch
            return nil
        }
        waiter?.resume(returning: batch)
    }

    private func finish(_ error: (any Error)?) {
        let waiter = state.withLock { state -> CheckedContinuation<[AMQPDelivery]?, any Error>? in
            state.finished = true
            state.failure = error
            defer { state.waiter = nil }
            return state.waiter
        }
        if let error { waiter?.resume(throwing: error) } else { waiter?.resume(returning: nil) }
    }

    /// Everything buffered, waiting for the next delivery if there is none; nil once the stream
    /// ended and the buffer is empty.
    func next() async throws -> [AMQPDelivery]? {
        try await withCheckedThrowingContinuation { continuation in
            let answer = state.withLock { state -> Result<[AMQPDelivery]?, any Error>? in
                if !state.items.isEmpty {
                    defer { state.items = [] }
                    return .success(state.items)
                }
                if state.finished { return state.failure.map { .failure($0) } ?? .success(nil) }
                state.waiter = continuation
                return nil
            }
            if let answer { continuation.resume(with: answer) }
        }
    }
}
