import AMQPClient
import Contracts

extension AMQPConnection {
    /// Declares FanFlow's exchanges, work queues, their dead-letter queues and bindings.
    ///
    /// Idempotent: every process runs it at start, so whichever comes first creates the topology
    /// and the rest confirm it. A work queue sends a message it gave up on (delivery limit reached,
    /// or rejected as poison) to `fanflow.dead-letter` with its own name as routing key, which lands
    /// in `<queue>.dead` for a person to inspect and replay.
    ///
    /// A retired queue (``Topology/retired``) that still exists is unbound from `fanflow.events`, so
    /// no new message reaches it; what it holds is left for the pipeline pool to drain. A process
    /// of the former version declaring its own topology binds it again, so during a rolling upgrade
    /// events may still land there (and are drained, idempotently) until the last such process is
    /// gone and one of this version has started since.
    public func declare(_ topology: Topology) throws(AMQPError) {
        try declareExchange(topology.eventsExchange.rawValue, type: "topic")
        try declareExchange(topology.deadLetterExchange.rawValue, type: "direct")
        for queue in topology.queues {
            let dead = queue.name.deadLetter.rawValue
            try declareQueue(dead, options: AMQPQueueOptions(kind: .quorum))
            try bindQueue(dead, exchange: topology.deadLetterExchange.rawValue, routingKey: queue.name.rawValue)
            try declareQueue(queue.name.rawValue, options: AMQPQueueOptions(
                kind: .quorum, deliveryLimit: queue.deliveryLimit,
                deadLetterExchange: topology.deadLetterExchange.rawValue,
                deadLetterRoutingKey: queue.name.rawValue))
            for pattern in queue.bindings {
                try bindQueue(queue.name.rawValue, exchange: topology.eventsExchange.rawValue, routingKey: pattern)
            }
        }
        for retired in topology.retired {
            // Absent on an install that never ran the former version, or once an operator deleted it.
            guard try queueStatus(retired.name.rawValue) != nil else { continue }
            for pattern in retired.bindings {
                try unbindQueue(retired.name.rawValue, exchange: topology.eventsExchange.rawValue, routingKey: pattern)
            }
        }
    }
}
