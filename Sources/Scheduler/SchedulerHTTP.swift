import Hummingbird
import Jobs
import Logging

/// What the scheduler process serves for operators and Prometheus: `/health` and `/metrics`
/// (runs by outcome, lag, due backlog, oldest due age, jobs by status, whether it leads).
public enum SchedulerHTTP {
    public static func application(host: String, port: Int, store: JobStore, metrics: JobMetrics,
                                   periodic: PeriodicEnqueuer, logger: Logger) -> some ApplicationProtocol {
        let router = Router()
        router.get("/health") { _, _ in
            Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: #"{"status":"ok"}"#)))
        }
        router.get("/metrics") { _, _ in
            // The table's gauges are read at scrape time; a scrape during an outage still answers the counters.
            let stats = try? await store.stats()
            let text = metrics.render(stats: stats, leading: periodic.isLeading)
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                            body: .init(byteBuffer: ByteBuffer(string: text)))
        }
        return Application(router: router, configuration: .init(address: .hostname(host, port: port), serverName: "fanflow-scheduler"),
                           logger: logger)
    }
}
