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

    /// Every external event, once: history and every domain's writes in one transaction.
    public static let pipeline = QueueName(rawValue: "fanflow.pipeline")
    /// Retired (``Topology/retired``): the points pool's queue before the pipeline.
    public static let points = QueueName(rawValue: "fanflow.points")
    /// Retired (``Topology/retired``): the behavior store's queue (`#`) before the pipeline.
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

    /// A queue a former version bound and this one no longer does: at start every process unbinds
    /// it (when it exists), and the pipeline pool drains what is left in it, so an upgrade loses no
    /// message. Once it is empty an operator deletes it (ops/runbook.md).
    public struct RetiredQueue: Sendable {
        public let name: QueueName
        /// The patterns it was bound with on `fanflow.events`.
        public let bindings: [String]
        /// Where its messages go now: consumed by that queue's pool, and where a dead letter of it
        /// is replayed.
        public let successor: QueueName

        public init(name: QueueName, bindings: [String], successor: QueueName) {
            self.name = name
            self.bindings = bindings
            self.successor = successor
        }
    }

    public let eventsExchange: ExchangeName
    public let deadLetterExchange: ExchangeName
    public let queues: [Queue]
    public let retired: [RetiredQueue]

    public init(queues: [Queue], retired: [RetiredQueue] = [], eventsExchange: ExchangeName = .events,
                deadLetterExchange: ExchangeName = .deadLetter) {
        self.queues = queues
        self.retired = retired
        self.eventsExchange = eventsExchange
        self.deadLetterExchange = deadLetterExchange
    }

    /// The platforms' and server kinds, and the beacons: every external event, each once. The
    /// pipeline stores them all for history and shows each domain the kinds it selects.
    public static let pipelineBindings = ["wechat.#", "alipay.#", "weibo.#", "qq.#", "server.#", "h5.#"]

    /// FanFlow's topology. External events reach the pipeline once each. FanFlow's own follow-ups
    /// (`fanflow.*`) go only where they are work: orders and pushes. The push queue also binds three
    /// platform kinds (`wechat.subscribe`, `alipay.subscribe`, `wechat.templatesendjobfinish`), so
    /// those events are delivered twice, to the pipeline and to the push pool.
    public static let standard = Topology(queues: [
        Queue(name: .pipeline, bindings: pipelineBindings, deliveryLimit: 10),
        // `fanflow.orders.#`: the orders pool's own jobs (the per-minute reconcile).
        Queue(name: .orders, bindings: ["fanflow.flashsale.#", "fanflow.orders.#"], deliveryLimit: 10),
        Queue(name: .push, bindings: ["wechat.subscribe", "alipay.subscribe", "wechat.templatesendjobfinish", "fanflow.member.#",
                                      "fanflow.points.#", "fanflow.flashsale.#", "fanflow.push.#"], deliveryLimit: 10),
    ], retired: [
        RetiredQueue(name: .behavior, bindings: ["#"], successor: .pipeline),
        RetiredQueue(name: .points, bindings: ["wechat.#", "alipay.#", "weibo.#", "qq.#", "server.#", "h5.share"], successor: .pipeline),
    ])

    public func queue(_ name: QueueName) -> Queue? { queues.first { $0.name == name } }

    /// The queue a message of `name` belongs in now: itself, or a retired queue's successor.
    public func current(_ name: QueueName) -> QueueName {
        retired.first { $0.name == name }?.successor ?? name
    }
}
