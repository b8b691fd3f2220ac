/// A failure of the AMQP client, with the broker's close reason where it gave one.
public struct AMQPError: Error, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String { case badURL, connect, connectionClosed, channelClosed, io, usage }
        private let base: Base
        private init(_ base: Base) { self.base = base }
        public static let badURL = Code(.badURL)
        /// TCP connect, login or channel open failed.
        public static let connect = Code(.connect)
        /// The broker closed the connection (``AMQPError/replyCode`` and the message say why), or it was closed locally.
        public static let connectionClosed = Code(.connectionClosed)
        /// The broker closed the channel, e.g. 404 publishing to a missing exchange, 406 on mismatched arguments.
        public static let channelClosed = Code(.channelClosed)
        /// The socket failed or a heartbeat was missed: the connection is gone.
        public static let io = Code(.io)
        /// The call was not valid on this connection (for example an ack of a delivery from an earlier channel).
        public static let usage = Code(.usage)
        public var description: String { base.rawValue }
    }

    public let code: Code
    public let message: String
    /// The AMQP reply code of a server close (404 NOT_FOUND, 406 PRECONDITION_FAILED, 320 CONNECTION_FORCED…).
    public let replyCode: Int?

    public init(_ code: Code, _ message: String, replyCode: Int? = nil) {
        self.code = code
        self.message = message
        self.replyCode = replyCode
    }

    public var description: String {
        "amqp \(code)\(replyCode.map { " \($0)" } ?? ""): \(message)"
    }
}

/// A value in an AMQP field table (message headers, queue arguments).
public indirect enum AMQPFieldValue: Sendable, Hashable {
    case string(String)
    case int(Int64)
    case bool(Bool)
    case double(Double)
    case bytes([UInt8])
    case table([String: AMQPFieldValue])
    case array([AMQPFieldValue])
    case void

    public var string: String? { if case .string(let s) = self { return s } else { return nil } }
    public var int: Int64? { if case .int(let i) = self { return i } else { return nil } }
}

/// The basic properties of a message: the ones FanFlow uses, plus free-form headers.
public struct AMQPProperties: Sendable, Hashable {
    public var messageID: String?
    public var contentType: String?
    public var contentEncoding: String?
    public var correlationID: String?
    public var replyTo: String?
    public var type: String?
    public var appID: String?
    /// Seconds since 1970, as AMQP carries it.
    public var timestamp: UInt64?
    /// Survives a broker restart when the queue is durable.
    public var persistent: Bool
    public var priority: UInt8?
    public var expirationMilliseconds: Int?
    public var headers: [String: AMQPFieldValue]

    public init(messageID: String? = nil, contentType: String? = nil, contentEncoding: String? = nil,
                correlationID: String? = nil, replyTo: String? = nil, type: String? = nil, appID: String? = nil,
                timestamp: UInt64? = nil, persistent: Bool = true, priority: UInt8? = nil,
                expirationMilliseconds: Int? = nil, headers: [String: AMQPFieldValue] = [:]) {
        self.messageID = messageID
        self.contentType = contentType
        self.contentEncoding = contentEncoding
        self.correlationID = correlationID
        self.replyTo = replyTo
        self.type = type
        self.appID = appID
        self.timestamp = timestamp
        self.persistent = persistent
        self.priority = priority
        self.expirationMilliseconds = expirationMilliseconds
        self.headers = headers
    }
}

/// What the broker said about one published message.
public enum PublishOutcome: Sendable, Equatable {
    /// The broker took responsibility for the message (persisted to the queues it routed to).
    case acked
    /// The broker refused it (for example a quorum queue without a quorum).
    case nacked
    /// No answer within the confirm timeout: the message may or may not be stored.
    case timedOut
    /// The channel or connection closed before an answer; the error says why.
    case failed(AMQPError)

    public static func == (lhs: PublishOutcome, rhs: PublishOutcome) -> Bool {
        switch (lhs, rhs) {
        case (.acked, .acked), (.nacked, .nacked), (.timedOut, .timedOut): return true
        case (.failed(let a), .failed(let b)): return a.code == b.code && a.message == b.message
        default: return false
        }
    }
}

/// How a queue is made. Quorum queues are the default: replicated, and faster than classic ones here.
public struct AMQPQueueOptions: Sendable, Hashable {
    public enum Kind: String, Sendable { case quorum, classic }
    public var kind: Kind
    public var durable: Bool
    /// After this many deliveries a message is dead-lettered (quorum queues only).
    public var deliveryLimit: Int?
    public var deadLetterExchange: String?
    public var deadLetterRoutingKey: String?
    public var extra: [String: AMQPFieldValue]

    public init(kind: Kind = .quorum, durable: Bool = true, deliveryLimit: Int? = nil,
                deadLetterExchange: String? = nil, deadLetterRoutingKey: String? = nil,
                extra: [String: AMQPFieldValue] = [:]) {
        self.kind = kind
        self.durable = durable
        self.deliveryLimit = deliveryLimit
        self.deadLetterExchange = deadLetterExchange
        self.deadLetterRoutingKey = deadLetterRoutingKey
        self.extra = extra
    }

    var arguments: [String: AMQPFieldValue] {
        var arguments = extra
        arguments["x-queue-type"] = .string(kind.rawValue)
        if let deliveryLimit { arguments["x-delivery-limit"] = .int(Int64(deliveryLimit)) }
        if let deadLetterExchange { arguments["x-dead-letter-exchange"] = .string(deadLetterExchange) }
        if let deadLetterRoutingKey { arguments["x-dead-letter-routing-key"] = .string(deadLetterRoutingKey) }
        return arguments
    }
}

/// One message received by a consumer. Settle it exactly once with ack, nack or reject.
public struct AMQPDelivery: Sendable {
    public let deliveryTag: UInt64
    public let redelivered: Bool
    public let exchange: String
    public let routingKey: String
    public let consumerTag: String
    public let properties: AMQPProperties
    public let body: [UInt8]
    let channelGeneration: Int
    let connection: AMQPConnection

    /// Acknowledges this delivery (and, with `multiple`, every earlier unacknowledged one on the channel).
    public func ack(multiple: Bool = false) async throws(AMQPError) {
        try await connection.settle(self, .ack(multiple: multiple))
    }

    /// Returns the delivery to the queue (`requeue`) or dead-letters it.
    public func nack(requeue: Bool, multiple: Bool = false) async throws(AMQPError) {
        try await connection.settle(self, .nack(multiple: multiple, requeue: requeue))
    }

    /// `x-delivery-count` as quorum queues report it: how often this message was delivered before.
    public var deliveryCount: Int {
        Int(properties.headers["x-delivery-count"]?.int ?? 0)
    }
}

enum Settlement {
    case ack(multiple: Bool)
    case nack(multiple: Bool, requeue: Bool)
}
