import Synchronization

/// The scheduler's counters, rendered in the Prometheus text format beside the table's gauges
/// (due backlog, oldest due age, jobs by status), which are read from PostgreSQL at scrape time.
public final class JobMetrics: Sendable {
    public enum Counter: String, Sendable {
        case reclaimed = "fanflow_scheduler_leases_reclaimed_total"
        case periodicEnqueued = "fanflow_scheduler_periodic_enqueued_total"
    }

    struct RunKey: Hashable { let kind: String; let outcome: String }

    struct State {
        var runs: [RunKey: Int] = [:]
        var counters: [Counter: Int] = [:]
        var lagBuckets = [Int](repeating: 0, count: JobMetrics.bounds.count)
        var lagCount = 0
        var lagSum = 0.0
    }

    static let bounds: [Double] = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300]
    private let state = Mutex(State())

    public init() {}

    /// One run's outcome: `done`, `retried`, or `failed` (a retry on the last attempt fails).
    public func observe(kind: JobKind, outcome: JobOutcome, lastAttempt: Bool) {
        let name: String
        switch outcome {
        case .done: name = "done"
        case .retry: name = lastAttempt ? "failed" : "retried"
        case .fail: name = "failed"
        }
        state.withLock { $0.runs[RunKey(kind: kind.rawValue, outcome: name), default: 0] += 1 }
    }

    /// From a job's due time to the start of its run.
    public func observeLag(seconds: Double) {
        state.withLock {
            if let bucket = Self.bounds.firstIndex(where: { seconds <= $0 }) { $0.lagBuckets[bucket] += 1 }
            $0.lagCount += 1
            $0.lagSum += seconds
        }
    }

    public func count(_ counter: Counter, by amount: Int = 1) {
        state.withLock { $0.counters[counter, default: 0] += amount }
    }

    public func runs(kind: String, outcome: String) -> Int {
        state.withLock { $0.runs[RunKey(kind: kind, outcome: outcome)] ?? 0 }
    }

    public func render(stats: JobStore.Stats?, leading: Bool) -> String {
        let s = state.withLock { $0 }
        var out = ""
        out += "# HELP fanflow_scheduler_runs_total Job runs by kind and outcome.\n# TYPE fanflow_scheduler_runs_total counter\n"
        for (key, value) in s.runs.sorted(by: { ($0.key.kind, $0.key.outcome) < ($1.key.kind, $1.key.outcome) }) {
            out += "fanflow_scheduler_runs_total{kind=\"\(key.kind)\",outcome=\"\(key.outcome)\"} \(value)\n"
        }
        for counter in [Counter.reclaimed, .periodicEnqueued] {
            out += "# TYPE \(counter.rawValue) counter\n\(counter.rawValue) \(s.counters[counter] ?? 0)\n"
        }
        out += "# HELP fanflow_scheduler_lag_seconds From a job's due time to the start of its run.\n"
        out += "# TYPE fanflow_scheduler_lag_seconds histogram\n"
        var cumulative = 0
        for (bound, count) in zip(Self.bounds, s.lagBuckets) {
            cumulative += count
            out += "fanflow_scheduler_lag_seconds_bucket{le=\"\(bound)\"} \(cumulative)\n"
        }
        out += "fanflow_scheduler_lag_seconds_bucket{le=\"+Inf\"} \(s.lagCount)\n"
        out += "fanflow_scheduler_lag_seconds_sum \(s.lagSum)\nfanflow_scheduler_lag_seconds_count \(s.lagCount)\n"
        out += "# TYPE fanflow_scheduler_leader gauge\nfanflow_scheduler_leader \(leading ? 1 : 0)\n"
        if let stats {
            out += "# HELP fanflow_jobs_due_backlog Scheduled jobs whose due time has come.\n# TYPE fanflow_jobs_due_backlog gauge\n"
            out += "fanflow_jobs_due_backlog \(stats.dueBacklog)\n"
            out += "# HELP fanflow_jobs_oldest_due_age_seconds How long the earliest due job has waited.\n"
            out += "# TYPE fanflow_jobs_oldest_due_age_seconds gauge\nfanflow_jobs_oldest_due_age_seconds \(stats.oldestDueSeconds)\n"
            out += "# TYPE fanflow_jobs gauge\n"
            for status in JobStatus.allCases {
                out += "fanflow_jobs{status=\"\(status.rawValue)\"} \(stats.byStatus[status] ?? 0)\n"
            }
        }
        return out
    }
}
