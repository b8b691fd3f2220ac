/// Exponential backoff with jitter ("equal jitter": half fixed, half random), for reconnects and retries.
public struct Backoff: Sendable {
    public var initialMilliseconds: Int
    public var maximumMilliseconds: Int

    public init(initialMilliseconds: Int = 100, maximumMilliseconds: Int = 10_000) {
        self.initialMilliseconds = initialMilliseconds
        self.maximumMilliseconds = maximumMilliseconds
    }

    /// The delay before retry number `attempt` (0-based): uniformly random up to the capped
    /// exponential, so many clients that failed together do not come back together.
    public func delayMilliseconds(attempt: Int) -> Int {
        let exponential = initialMilliseconds << min(attempt, 20)
        let cap = max(1, min(maximumMilliseconds, exponential))
        return Int.random(in: (cap / 2)...cap)
    }

    /// Calls `operation` until it succeeds, sleeping between failures; `onFailure` sees each error.
    /// Stops (rethrowing) when the task is cancelled.
    public func retry<T>(isolation: isolated (any Actor)? = #isolation, _ operation: () async throws -> T,
                         onFailure: (any Error, Int) -> Void = { _, _ in }) async throws -> T {
        var attempt = 0
        while true {
            do {
                return try await operation()
            } catch {
                try Task.checkCancellation()
                onFailure(error, attempt)
                try await Task.sleep(for: .milliseconds(delayMilliseconds(attempt: attempt)))
                attempt += 1
            }
        }
    }
}
