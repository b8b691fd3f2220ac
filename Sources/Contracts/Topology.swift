/// A RabbitMQ exchange FanFlow uses. Wire names are fixed here, once.
public struct ExchangeName: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    public var description: String { rawValue }

    /// Every normalized event, routing key `<platform>.<kind>` (topic).
    public static let events = ExchangeName(rawValue: "fanflow.events")
    /// Where work queues send what they give up on; routing key = the queue's name (direct).
    public static let deadLetter = ExchangeName(rawValue: "fanflow.dead-letter")
}

/// A work queue, consumed by one worker pool.
public struct QueueName: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    public var description: String { rawValue }

    public static let points = QueueName(rawValue: "fanflow.points")
    public static let behavior = QueueName(rawValue: "fanflow.behavior")
    public static let orders = QueueName(rawValue: "fanflow.orders")
    public static let push = QueueName(rawValue: "fanflow.push")

    /// Where this queue's poison messages wait for a person: `<queue>.dead`.
    public var deadLetter: QueueName { QueueName(rawValue: rawValue + ".dead") }
}

/// The queues, exchanges and bindings every process declares at start (declaring is idempotent,
/// so whichever process starts first creates them and the others confirm them).
public struct Topology: Sendable {
    public struct Queue: Sendable {
        public let name: QueueName
        /// Topic patterns on `fanflow.events`.
        public let bindings: [String]
        /// Deliveries before a message is dead-lettered: a poison message must not loop forever.
        public let deliveryLimit: Int

        public init(name: QueueName, bindings: [String], deliveryLimit: Int) {
            self.name = name
            self.bindings = bindings
            self.deliveryLimit = deliveryLimit
        }
    }

    public let eventsExchange = ExchangeName.events
    public let deadLetterExchange = ExchangeName.deadLetter
    public let queues: [Queue]

    public init(queues: [Queue]) { self.queues = queues }

    /// FanFlow's topology. Beacons (`h5.*`) are high-volume page analytics: they go to the
    /// behavior store, and only the share (`h5.share`) also to the points pool (a member-token
    /// beacon can earn on it); page views, dwell and clicks never reach the points or push pools,
    /// so page analytics cannot crowd out points.
    public static let standard = Topology(queues: [
        Queue(name: .behavior, bindings: ["#"], deliveryLimit: 10),
        Queue(name: .points, bindings: ["wechat.#", "alipay.#", "weibo.#", "qq.#", "server.#", "h5.share"], deliveryLimit: 10),
        // `fanflow.orders.#`: the orders pool's own jobs (the per-minute reconcile), bound by no other
        // pool's queue but behavior's `#` (the behavior store skips them).
        Queue(name: .orders, bindings: ["fanflow.flashsale.#", "fanflow.orders.#"], deliveryLimit: 10),
        Queue(name: .push, bindings: ["wechat.subscribe", "alipay.subscribe", "wechat.templatesendjobfinish", "fanflow.member.#",
                                      "fanflow.points.#", "fanflow.flashsale.#", "fanflow.push.#"], deliveryLimit: 10),
    ])

    public func queue(_ name: QueueName) -> Queue? { queues.first { $0.name == name } }
}
