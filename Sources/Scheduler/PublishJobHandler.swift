import AMQPClient
import Contracts
import Foundation
import Jobs
import Runtime

/// Hands jobs to a worker pool instead of running them here: each job is published, confirmed, to
/// `fanflow.events` as an envelope of platform `fanflow` whose kind is the job's kind (so
/// `flashsale.expire` routes as `fanflow.flashsale.expire` to the orders queue). The envelope id
/// is `fanflow:job:<id>`, the same on every attempt, so the consuming pool drops a republished job;
/// the payload becomes its attributes, and a payload `app` its app.
/// A job counts as done once the broker confirmed it; an unconfirmed one is retried with backoff.
public struct PublishJobHandler: JobHandler {
    let broker: ManagedAMQPConnection

    public init(broker: ManagedAMQPConnection) { self.broker = broker }

    /// What is published for `job` (``Jobs/Job/envelope(receivedAt:)``).
    public static func envelope(for job: Job, now: Date = Date()) -> Envelope { job.envelope(receivedAt: now) }

    public func run(_ jobs: [Job]) async -> [JobOutcome] {
        let connection: AMQPConnection
        do { connection = try await broker.current() } catch {
            return jobs.map { _ in .retry(error: "broker unavailable: \(error)") }
        }
        var messages: [OutgoingMessage] = []
        for job in jobs {
            let envelope = Self.envelope(for: job)
            guard let body = try? envelope.encoded() else { return jobs.map { _ in .fail(error: "the job could not be encoded") } }
            messages.append(OutgoingMessage(exchange: ExchangeName.events.rawValue, routingKey: envelope.routingKey, body: body,
                                            properties: AMQPProperties(messageID: envelope.id, contentType: "application/json",
                                                                       appID: "fanflow-scheduler", persistent: true)))
        }
        let outcomes = await connection.publish(messages)
        return outcomes.map { outcome in
            outcome == .acked ? .done : .retry(error: "publish not confirmed: \(outcome)")
        }
    }
}
