#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Synchronization

/// A serial executor backed by one dedicated OS thread.
///
/// The C clients (rabbitmq-c, hiredis, libpq) block in `read`/`write`/`poll`. Swift's cooperative pool
/// has one thread per core (two here), so a blocking call there stalls every task in the process.
/// Each connection therefore lives in an actor whose `unownedExecutor` is one of these threads:
/// the actor's methods may block freely, and only they touch the C handle. The handle itself is
/// `nonisolated(unsafe)` so a plain `deinit` can free it (an `isolated deinit` trips the Swift 6.3
/// optimizer across modules): the thread rule is kept by the actor's methods, not proved by the compiler.
///
/// A connection that must also react to its socket while no caller is waiting (AMQP confirms,
/// deliveries, heartbeats) installs a ``PollSource``: the thread then sleeps in `poll(2)` on both
/// its wake-up pipe and the socket, and calls the source when the socket has data.
public final class IOThread: SerialExecutor, @unchecked Sendable {
    /// Something the thread watches while no jobs are queued. Set and used on the thread only.
    public struct PollSource {
        public var fd: Int32
        /// True when the C library already buffered input, so `poll` would not see it.
        public var hasBufferedInput: () -> Bool
        /// Reads and dispatches what is available without blocking.
        public var service: () -> Void
        /// Longest sleep, so timers (confirm deadlines, heartbeats) are checked even without traffic.
        public var maxWaitMilliseconds: Int32
        /// Runs after each batch of jobs: lets writes made by those jobs leave together.
        public var afterJobs: () -> Void

        public init(fd: Int32, maxWaitMilliseconds: Int32,
                    hasBufferedInput: @escaping () -> Bool, service: @escaping () -> Void,
                    afterJobs: @escaping () -> Void = {}) {
            self.fd = fd
            self.maxWaitMilliseconds = maxWaitMilliseconds
            self.hasBufferedInput = hasBufferedInput
            self.service = service
            self.afterJobs = afterJobs
        }
    }

    private struct Queue: ~Copyable {
        var jobs: [UnownedJob] = []
        var sleeping = false
        var stopping = false
    }

    private let queue = Mutex(Queue())
    /// A self-pipe: a write wakes the thread from `poll`. (Glibc's Swift module has no eventfd.)
    private let wakeRead: Int32
    private let wakeWrite: Int32
    private let threadID = Mutex<pthread_t?>(nil)
    /// Confined to the thread: only jobs running on it (or the loop itself) read or write it.
    private var pollSource: PollSource?

    public let name: String

    public init(name: String) {
        self.name = name
        var fds: [Int32] = [-1, -1]
        precondition(pipe(&fds) == 0, "pipe failed: errno \(errno)")
        for fd in fds {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        self.wakeRead = fds[0]
        self.wakeWrite = fds[1]
        let thread = Thread { [self] in self.runLoop() }
        thread.name = name
        thread.stackSize = 1 << 20
        thread.start()
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let unowned = UnownedJob(job)
        let mustWake = queue.withLock { q -> Bool in
            q.jobs.append(unowned)
            let wasSleeping = q.sleeping
            q.sleeping = false
            return wasSleeping
        }
        if mustWake { wake() }
    }

    public func asUnownedSerialExecutor() -> UnownedSerialExecutor {
        UnownedSerialExecutor(ordinary: self)
    }

    public func checkIsolated() {
        precondition(isCurrentThread, "expected to run on IOThread \(name)")
    }

    /// True on the dedicated thread.
    public var isCurrentThread: Bool {
        guard let id = threadID.withLock({ $0 }) else { return false }
        return pthread_equal(id, pthread_self()) != 0
    }

    /// Installs or removes the poll source. Call from a job running on this thread.
    public func setPollSource(_ source: PollSource?) {
        checkIsolated()
        pollSource = source
    }

    /// Lets the thread finish the jobs already queued, then exit. The owner calls it from `deinit`.
    public func stopWhenIdle() {
        queue.withLock { $0.stopping = true }
        wake()
    }

    private func wake() {
        var byte: UInt8 = 1
        _ = write(wakeWrite, &byte, 1)
    }

    private func drainWake() {
        var sink = [UInt8](repeating: 0, count: 64)
        while read(wakeRead, &sink, sink.count) == sink.count {}
    }

    private func runLoop() {
        threadID.withLock { $0 = pthread_self() }
        let executor = asUnownedSerialExecutor()
        while true {
            let (jobs, stopping) = queue.withLock { q -> ([UnownedJob], Bool) in
                let jobs = q.jobs
                q.jobs.removeAll(keepingCapacity: true)
                if jobs.isEmpty { q.sleeping = true }
                return (jobs, q.stopping)
            }
            for job in jobs { job.runSynchronously(on: executor) }
            // The owner is gone: its socket may already be closed, so it is not polled again.
            if stopping { if jobs.isEmpty { break } else { continue } }
            if !jobs.isEmpty {
                if let source = pollSource {
                    source.afterJobs()
                    // Under a steady stream of jobs the socket must still be read (acks free the callers).
                    if source.hasBufferedInput() || waitReadable(source.fd, 0) { source.service() }
                }
                continue
            }
            sleep()
        }
        pollSource = nil
        close(wakeRead)
        close(wakeWrite)
    }

    /// Sleeps until a job is enqueued, or the poll source has input or its timer is due.
    private func sleep() {
        guard let source = pollSource else {
            var fds = [pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
            _ = poll(&fds, 1, -1)
            drainWake()
            return
        }
        if source.hasBufferedInput() {
            queue.withLock { $0.sleeping = false }
            source.service()
            return
        }
        var fds = [pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: source.fd, events: Int16(POLLIN), revents: 0)]
        _ = poll(&fds, 2, source.maxWaitMilliseconds)
        if fds[0].revents != 0 { drainWake() }
        // Timers are checked on every wake-up, readable or not.
        source.service()
    }

    private func waitReadable(_ fd: Int32, _ timeout: Int32) -> Bool {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&pfd, 1, timeout) > 0
    }
}
