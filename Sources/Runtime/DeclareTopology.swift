import AMQPClient
import Contracts

extension AMQPConnection {
    /// Declares FanFlow's exchanges, work queues, their dead-letter queues and bindings.
    ///
    /// Idempotent: every process runs it at start, so whichever comes first creates the topology
    /// and the rest confirm it. A work queue sends a message it gave up on (delivery limit reached,
    /// or rejected as poison) to `fanflow.dead-letter` with its own name as routing key, which lands
    /// in `<queue>.dead` for a person to inspect and replay.
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
    }
}
