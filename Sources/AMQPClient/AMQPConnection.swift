import CRabbitMQ
import ClientSupport
#if canImport(Glibc)
import Glibc
#endif

/// One AMQP 0-9-1 connection with one channel, on its own thread.
///
/// rabbitmq-c is blocking and not thread-safe, so the connection's state lives in this actor, whose
/// executor is a dedicated ``IOThread``. While no call is running the thread sleeps in `poll(2)` on
/// the socket and reads whatever the broker sends: publisher confirms, deliveries, heartbeats and
/// close notices. Use one connection to publish and another to consume, as RabbitMQ advises
/// (a publisher throttled by flow control must not stall acks).
///
/// When the broker closes the channel (for example 404 on a publish to a missing exchange), every
/// unconfirmed publish fails with the broker's reason and a new channel is opened. When the
/// connection is lost, everything outstanding fails and the connection stays closed: reconnecting
/// is the caller's policy (see ``AMQPConnection/connect(_:backoff:onFailure:)``).
public actor AMQPConnection {
    private let thread: IOThread
    public nonisolated var unownedExecutor: UnownedSerialExecutor { thread.asUnownedSerialExecutor() }

    public let configuration: AMQPConfiguration
    /// Touched only by the actor's methods (on its thread) and by `deinit`, when no other reference exists.
    /// (`isolated deinit` would keep it checked, but trips the Swift 6.3 optimizer across modules.)
    nonisolated(unsafe) private var connection: amqp_connection_state_t?
    private let channel: amqp_channel_t = 1
    /// Incremented whenever the channel is re-opened: delivery tags of an older channel are void.
    private var channelGeneration = 0
    private var closedReason: AMQPError?
    private var confirmMode = false
    private var confirms = ConfirmTracker<ConfirmWaiter>()
    private var consumers: [String: AsyncThrowingStream<[AMQPDelivery], any Error>.Continuation] = [:]
    /// Deliveries completed during the current pump, handed to their consumers together at its end.
    /// Nearly always one consumer per connection: a short list beats hashing the tag per message.
    private var completed: [(tag: String, deliveries: [AMQPDelivery])] = []
    private var lastConsumerTag = RepeatedString()
    private var lastExchange = RepeatedString()
    private var lastRoutingKey = RepeatedString()
    private var incoming: IncomingMessage?
    /// True while publishes made by the current batch of jobs wait in a corked socket.
    private var corked = false
    /// True while the broker has blocked this connection (resource alarm).
    public private(set) var isBlocked = false

    /// A message whose method frame arrived; its header and body frames follow.
    private struct IncomingMessage {
        var isReturn: Bool
        var deliveryTag: UInt64 = 0
        var redelivered = false
        var exchange = ""
        var routingKey = ""
        var consumerTag = ""
        var properties = AMQPProperties()
        var bodySize: Int?
        var body: [UInt8] = []
    }

    /// Connects, logs in and opens the channel.
    public init(configuration: AMQPConfiguration) async throws {
        self.configuration = configuration
        self.thread = IOThread(name: "amqp")
        try open()
    }

    /// Throws ``AMQPError``. (Untyped: a typed-throws async initializer of an actor with a custom executor
    /// trips the Swift 6.3 optimizer, "circular reference", in modules that call it.)
    public init(url: String) async throws {
        try await self.init(configuration: AMQPConfiguration(url: url))
    }

    /// Connects, retrying with backoff until it succeeds or the task is cancelled.
    public static func connect(_ configuration: AMQPConfiguration, backoff: Backoff = Backoff(),
                               onFailure: (any Error, Int) -> Void = { _, _ in }) async throws -> AMQPConnection {
        try await backoff.retry({ try await AMQPConnection(configuration: configuration) }, onFailure: onFailure)
    }

    deinit {
        if let connection {
            amqp_destroy_connection(connection)
        }
        thread.stopWhenIdle()
    }

    /// Nil while the connection is usable; otherwise why it closed.
    public var closeReason: AMQPError? { closedReason }
    public var isOpen: Bool { closedReason == nil && connection != nil }
    /// Publishes not yet confirmed.
    public var outstandingConfirms: Int { confirms.outstanding }

    // MARK: - Topology

    public func declareExchange(_ name: String, type: String = "topic", durable: Bool = true) throws(AMQPError) {
        let conn = try usable()
        let arena = CArena()
        defer { withExtendedLifetime(arena) {} } // rabbitmq-c reads its memory during the call
        _ = amqp_exchange_declare(conn, channel, arena.bytes(name), arena.bytes(type), 0, durable ? 1 : 0, 0, 0,
                                  amqp_empty_table)
        try checkRPC("exchange.declare \(name)")
    }

    /// Declares a queue; answers the messages ready in it and its consumers.
    @discardableResult
    public func declareQueue(_ name: String, options: AMQPQueueOptions = AMQPQueueOptions())
        throws(AMQPError) -> (messages: Int, consumers: Int) {
        let conn = try usable()
        let arena = CArena()
        defer { withExtendedLifetime(arena) {} } // rabbitmq-c reads its memory during the call
        let ok = amqp_queue_declare(conn, channel, arena.bytes(name), 0, options.durable ? 1 : 0, 0, 0,
                                    arena.table(options.arguments))
        try checkRPC("queue.declare \(name)")
        guard let ok else { return (0, 0) }
        return (Int(ok.pointee.message_count), Int(ok.pointee.consumer_count))
    }

    /// The messages ready in a queue (a passive declare: fails with 404 if it does not exist).
    public func messageCount(queue name: String) throws(AMQPError) -> Int {
        let conn = try usable()
        let arena = CArena()
        defer { withExtendedLifetime(arena) {} } // rabbitmq-c reads its memory during the call
        let ok = amqp_queue_declare(conn, channel, arena.bytes(name), 1, 0, 0, 0, amqp_empty_table)
        try checkRPC("queue.declare passive \(name)")
        return ok.map { Int($0.pointee.message_count) } ?? 0
    }

    public func bindQueue(_ queue: String, exchange: String, routingKey: String) throws(AMQPError) {
        let conn = try usable()
        let arena = CArena()
        defer { withExtendedLifetime(arena) {} } // rabbitmq-c reads its memory during the call
        _ = amqp_queue_bind(conn, channel, arena.bytes(queue), arena.bytes(exchange), arena.bytes(routingKey),
                            amqp_empty_table)
        try checkRPC("queue.bind \(queue) to \(exchange) \(routingKey)")
    }

    /// Removes a binding. Unbinding one that does not exist is no error; a queue that does not
    /// exist is (404, and the channel is re-opened).
    public func unbindQueue(_ queue: String, exchange: String, routingKey: String) throws(AMQPError) {
        let conn = try usable()
        let arena = CArena()
        defer { withExtendedLifetime(arena) {} } // rabbitmq-c reads its memory during the call
        _ = amqp_queue_unbind(conn, channel, arena.bytes(queue), arena.bytes(exchange), arena.bytes(routingKey),
                              amqp_empty_table)
        try checkRPC("queue.unbind \(queue) from \(exchange) \(routingKey)")
    }

    /// A queue's ready messages and consumers, or nil when it does not exist (a passive declare:
    /// the broker's 404 closes the channel, which is re-opened before this returns).
    public func queueStatus(_ name: String) throws(AMQPError) -> (messages: Int, consumers: Int)? {
        let conn = try usable()
        let arena = CArena()
        defer { withExtendedLifetime(arena) {} } // rabbitmq-c reads its memory during the call
        let ok = amqp_queue_declare(conn, channel, arena.bytes(name), 1, 0, 0, 0, amqp_empty_table)
        do {
            try checkRPC("queue.declare passive \(name)")
        } catch where error.replyCode == 404 {
            return nil
        }
        return ok.map { (Int($0.pointee.message_count), Int($0.pointee.consumer_count)) } ?? (0, 0)
    }

    public func deleteQueue(_ name: String) throws(AMQPError) {
        let conn = try usable()
        let arena = CArena()
        defer { withExtendedLifetime(arena) {} } // rabbitmq-c reads its memory during the call
        _ = amqp_queue_delete(conn, channel, arena.bytes(name), 0, 0)
        try checkRPC("queue.delete \(name)")
    }

    public func deleteExchange(_ name: String) throws(AMQPError) {
        let conn = try usable()
        let arena = CArena()
        defer { withExtendedLifetime(arena) {} } // rabbitmq-c reads its memory during the call
        _ = amqp_exchange_delete(conn, channel, arena.bytes(name), 0)
        try checkRPC("exchange.delete \(name)")
    }

    // MARK: - Publishing

    /// Puts the channel in confirm mode. Every later publish is answered ack, nack or timeout.
    public func enableConfirms() throws(AMQPError) {
        let conn = try usable()
        _ = amqp_confirm_select(conn, channel)
        try checkRPC("confirm.select")
        confirmMode = true
    }

    /// Publishes one message and, in confirm mode, waits for the broker's answer. Many publishes may
    /// be in flight at once from concurrent callers; each learns its own outcome.
    public func publish(exchange: String, routingKey: String, body: [UInt8],
                        properties: AMQPProperties = AMQPProperties(), mandatory: Bool = false) async -> PublishOutcome {
        if let error = send(exchange: exchange, routingKey: routingKey, body: body, properties: properties,
                            mandatory: mandatory) {
            return .failed(error)
        }
        guard confirmMode else { return .acked }
        let deadline = Self.nowNanoseconds() + UInt64(configuration.confirmTimeoutMilliseconds) * 1_000_000
        return await withCheckedContinuation { continuation in
            confirms.register(.single(continuation), deadline: deadline)
        }
    }

    /// Publishes a batch in one turn on the connection's thread and, in confirm mode, waits once
    /// for all of the broker's answers; outcomes come back in the batch's order.
    public func publish(_ messages: [OutgoingMessage], mandatory: Bool = false) async -> [PublishOutcome] {
        var outcomes = [PublishOutcome?](repeating: nil, count: messages.count)
        var sent: [Int] = []
        sent.reserveCapacity(messages.count)
        for (index, message) in messages.enumerated() {
            if let error = send(exchange: message.exchange, routingKey: message.routingKey, body: message.body,
                                properties: message.properties, mandatory: mandatory) {
                outcomes[index] = .failed(error)
            } else {
                sent.append(index)
            }
        }
        if let closedReason, !sent.isEmpty {
            // Lost part-way: the tracker was reset, so nobody would answer these; they are unknown.
            for index in sent { outcomes[index] = .failed(closedReason) }
        } else if confirmMode, !sent.isEmpty {
            let deadline = Self.nowNanoseconds() + UInt64(configuration.confirmTimeoutMilliseconds) * 1_000_000
            // Registered in the order sent, in the same turn: the broker numbers them the same way.
            let confirmed = await withCheckedContinuation { continuation in
                let batch = BatchConfirms(count: sent.count, continuation: continuation)
                for slot in sent.indices { confirms.register(.batch(batch, slot), deadline: deadline) }
            }
            for (slot, index) in sent.enumerated() { outcomes[index] = confirmed[slot] }
        }
        return outcomes.map { $0 ?? .acked }
    }

    private func send(exchange: String, routingKey: String, body: [UInt8], properties: AMQPProperties,
                      mandatory: Bool) -> AMQPError? {
        let conn: amqp_connection_state_t
        do { conn = try usable(publishing: true) } catch { return error }
        let arena = CArena()
        defer { withExtendedLifetime(arena) {} } // rabbitmq-c reads its memory during the call
        if !corked {
            corked = true
            _ = fanflow_set_cork(amqp_get_sockfd(conn), 1)
        }
        var props = arena.properties(properties)
        let exchangeBytes = arena.bytes(exchange)
        let routingKeyBytes = arena.bytes(routingKey)
        let channel = self.channel
        let status = body.withUnsafeBytes { raw in
            amqp_basic_publish(conn, channel, exchangeBytes, routingKeyBytes, mandatory ? 1 : 0, 0, &props,
                               amqp_bytes_t(len: raw.count, bytes: UnsafeMutableRawPointer(mutating: raw.baseAddress)))
        }
        guard status == AMQP_STATUS_OK.rawValue else {
            let error = AMQPError(.io, "publish failed: \(String(cString: amqp_error_string2(status)))")
            lose(error)
            return error
        }
        return nil
    }

    // MARK: - Consuming

    /// Starts a consumer with manual acknowledgement. Deliveries arrive in batches: all those one read
    /// of the socket completed, so a pool can write one transaction and send one `ack(multiple:)` per
    /// batch without timers. At most `prefetch` deliveries are unacknowledged at a time, which
    /// bounds the stream's buffer. The stream ends with an error if the channel or connection
    /// closes, and normally after ``cancel(consumerTag:)``.
    public func consume(queue: String, prefetch: Int, consumerTag: String = "")
        throws(AMQPError) -> (tag: String, deliveries: AsyncThrowingStream<[AMQPDelivery], any Error>) {
        let conn = try usable()
        _ = amqp_basic_qos(conn, channel, 0, UInt16(clamping: prefetch), 0)
        try checkRPC("basic.qos")
        let arena = CArena()
        defer { withExtendedLifetime(arena) {} } // rabbitmq-c reads its memory during the call
        let ok = amqp_basic_consume(conn, channel, arena.bytes(queue), arena.bytes(consumerTag), 0, 0, 0,
                                    amqp_empty_table)
        try checkRPC("basic.consume \(queue)")
        guard let ok else { throw AMQPError(.connect, "basic.consume answered without a consumer tag") }
        let tag = CValue.string(ok.pointee.consumer_tag)
        let (stream, continuation) = AsyncThrowingStream<[AMQPDelivery], any Error>.makeStream()
        consumers[tag] = continuation
        return (tag, stream)
    }

    /// Stops a consumer: no new deliveries; those already received can still be settled.
    public func cancel(consumerTag: String) throws(AMQPError) {
        guard let continuation = consumers.removeValue(forKey: consumerTag) else { return }
        continuation.finish()
        let conn = try usable()
        let arena = CArena()
        defer { withExtendedLifetime(arena) {} } // rabbitmq-c reads its memory during the call
        _ = amqp_basic_cancel(conn, channel, arena.bytes(consumerTag))
        try checkRPC("basic.cancel")
    }

    func settle(_ delivery: AMQPDelivery, _ settlement: Settlement) throws(AMQPError) {
        let conn = try usable()
        guard delivery.channelGeneration == channelGeneration else {
            throw AMQPError(.usage, "delivery \(delivery.deliveryTag) came on a channel that has since closed; the broker redelivers it")
        }
        let status: Int32
        switch settlement {
        case .ack(let multiple):
            status = amqp_basic_ack(conn, channel, delivery.deliveryTag, multiple ? 1 : 0)
        case .nack(let multiple, let requeue):
            status = amqp_basic_nack(conn, channel, delivery.deliveryTag, multiple ? 1 : 0, requeue ? 1 : 0)
        }
        if status != AMQP_STATUS_OK.rawValue {
            let error = AMQPError(.io, "settle failed: \(String(cString: amqp_error_string2(status)))")
            lose(error)
            throw error
        }
    }

    // MARK: - Closing

    /// Closes the channel and connection politely. Unacknowledged deliveries return to their queues;
    /// unconfirmed publishes fail.
    public func close() {
        uncork()
        guard let conn = connection else { return }
        if closedReason == nil {
            _ = amqp_channel_close(conn, channel, AMQP_REPLY_SUCCESS)
            _ = amqp_connection_close(conn, AMQP_REPLY_SUCCESS)
        }
        finish(AMQPError(.connectionClosed, "closed by the client"))
        thread.setPollSource(nil)
        amqp_destroy_connection(conn)
        connection = nil
    }

    /// Drops the TCP connection without the closing handshake, as a crash or a cut cable would.
    /// Tests use it to prove redelivery.
    public func abort() {
        guard let conn = connection else { return }
        shutdown(amqp_get_sockfd(conn), Int32(SHUT_RDWR))
        lose(AMQPError(.io, "aborted by the client"))
    }

    // MARK: - Connection plumbing

    private func open() throws(AMQPError) {
        guard let conn = amqp_new_connection() else { throw AMQPError(.connect, "out of memory") }
        guard let socket = amqp_tcp_socket_new(conn) else {
            amqp_destroy_connection(conn)
            throw AMQPError(.connect, "could not create a socket")
        }
        var timeout = timeval(tv_sec: configuration.connectTimeoutMilliseconds / 1000,
                              tv_usec: (configuration.connectTimeoutMilliseconds % 1000) * 1000)
        let status = amqp_socket_open_noblock(socket, configuration.host, Int32(configuration.port), &timeout)
        guard status == AMQP_STATUS_OK.rawValue else {
            amqp_destroy_connection(conn)
            throw AMQPError(.connect, "\(configuration.host):\(configuration.port): \(String(cString: amqp_error_string2(status)))")
        }
        let login = fanflow_amqp_login_plain(conn, configuration.virtualHost, 0, 131_072,
                                             Int32(configuration.heartbeatSeconds), configuration.user,
                                             configuration.password)
        if login.reply_type != AMQP_RESPONSE_NORMAL {
            let error = Self.describe(login, context: "login to \(configuration.host):\(configuration.port)")
            amqp_destroy_connection(conn)
            throw AMQPError(.connect, error.message, replyCode: error.replyCode)
        }
        connection = conn
        do {
            try openChannel()
        } catch {
            amqp_destroy_connection(conn)
            connection = nil
            throw AMQPError(.connect, error.message, replyCode: error.replyCode)
        }
        _ = fanflow_set_send_timeout(amqp_get_sockfd(conn), configuration.sendTimeoutMilliseconds)
        _ = fanflow_set_no_delay(amqp_get_sockfd(conn))
        let wait = configuration.heartbeatSeconds > 0 ? min(100, configuration.heartbeatSeconds * 250) : 100
        thread.setPollSource(IOThread.PollSource(
            fd: amqp_get_sockfd(conn),
            maxWaitMilliseconds: Int32(wait),
            // Weak: the thread must not keep a dropped connection alive, nor touch one being freed.
            hasBufferedInput: { [weak self] in
                self?.assumeIsolated { connection in connection.hasBufferedInput() } ?? false
            },
            service: { [weak self] in
                self?.assumeIsolated { connection in connection.pump() }
            },
            afterJobs: { [weak self] in
                self?.assumeIsolated { connection in connection.uncork() }
            }))
    }

    private func openChannel() throws(AMQPError) {
        guard let conn = connection else { throw AMQPError(.connectionClosed, "not connected") }
        _ = amqp_channel_open(conn, channel)
        try checkRPC("channel.open")
        channelGeneration += 1
        if confirmMode {
            _ = amqp_confirm_select(conn, channel)
            try checkRPC("confirm.select")
        }
    }

    /// Sends what the last batch of publishes left in the corked socket.
    private func uncork() {
        guard corked, let connection else { return }
        corked = false
        _ = fanflow_set_cork(amqp_get_sockfd(connection), 0)
    }

    /// The connection, for a call about to write. Anything but a publish first releases the cork:
    /// an RPC, an ack or a close must leave at once.
    private func usable(publishing: Bool = false) throws(AMQPError) -> amqp_connection_state_t {
        if let closedReason { throw closedReason }
        guard let connection else { throw AMQPError(.connectionClosed, "not connected") }
        if !publishing { uncork() }
        return connection
    }

    private func hasBufferedInput() -> Bool {
        guard let connection else { return false }
        return amqp_frames_enqueued(connection) != 0 || amqp_data_in_buffer(connection) != 0
    }

    /// Reads every frame that is already available, without blocking, and checks confirm deadlines.
    /// A bounded number per call, so queued callers are not starved by a flood of deliveries.
    private func pump() {
        guard let conn = connection, closedReason == nil else { return }
        for _ in 0..<4096 {
            var frame = amqp_frame_t()
            var noWait = timeval(tv_sec: 0, tv_usec: 0)
            let status = amqp_simple_wait_frame_noblock(conn, &frame, &noWait)
            if status == AMQP_STATUS_TIMEOUT.rawValue { break }
            guard status == AMQP_STATUS_OK.rawValue else {
                lose(AMQPError(.io, "connection lost: \(String(cString: amqp_error_string2(status)))"))
                return
            }
            handle(frame)
            if closedReason != nil { return }
        }
        if incoming == nil { amqp_maybe_release_buffers(conn) }
        for (tag, batch) in completed { consumers[tag]?.yield(batch) }
        completed.removeAll(keepingCapacity: true)
        for waiter in confirms.expire(now: Self.nowNanoseconds()) { waiter.resume(returning: .timedOut) }
    }

    private func handle(_ frame: amqp_frame_t) {
        switch Int32(frame.frame_type) {
        case AMQP_FRAME_METHOD:
            handleMethod(frame.payload.method)
        case AMQP_FRAME_HEADER:
            guard incoming != nil else { return }
            let size = Int(frame.payload.properties.body_size)
            incoming?.bodySize = size
            incoming?.body.reserveCapacity(size)
            if let decoded = frame.payload.properties.decoded {
                incoming?.properties = CValue.properties(decoded.assumingMemoryBound(to: amqp_basic_properties_t.self).pointee)
            }
            completeIfWhole()
        case AMQP_FRAME_BODY:
            guard incoming != nil else { return }
            let fragment = frame.payload.body_fragment
            if fragment.len > 0, let bytes = fragment.bytes {
                incoming?.body.append(contentsOf: UnsafeRawBufferPointer(start: bytes, count: fragment.len))
            }
            completeIfWhole()
        default:
            break // heartbeats are answered inside rabbitmq-c
        }
    }

    private func handleMethod(_ method: amqp_method_t) {
        switch method.id {
        case FANFLOW_BASIC_ACK:
            let ack = method.decoded.assumingMemoryBound(to: amqp_basic_ack_t.self).pointee
            for waiter in confirms.answer(tag: ack.delivery_tag, multiple: ack.multiple != 0) {
                waiter.resume(returning: .acked)
            }
        case FANFLOW_BASIC_NACK:
            let nack = method.decoded.assumingMemoryBound(to: amqp_basic_nack_t.self).pointee
            for waiter in confirms.answer(tag: nack.delivery_tag, multiple: nack.multiple != 0) {
                waiter.resume(returning: .nacked)
            }
        case FANFLOW_BASIC_DELIVER:
            let deliver = method.decoded.assumingMemoryBound(to: amqp_basic_deliver_t.self).pointee
            incoming = IncomingMessage(isReturn: false, deliveryTag: deliver.delivery_tag,
                                       redelivered: deliver.redelivered != 0,
                                       exchange: lastExchange.read(deliver.exchange),
                                       routingKey: lastRoutingKey.read(deliver.routing_key),
                                       consumerTag: lastConsumerTag.read(deliver.consumer_tag))
        case FANFLOW_BASIC_RETURN:
            // A mandatory message nobody could take; its content frames follow and are dropped.
            // The broker still confirms it, so callers that need routing guarantees bind queues first.
            incoming = IncomingMessage(isReturn: true)
        case FANFLOW_BASIC_CANCEL:
            let cancel = method.decoded.assumingMemoryBound(to: amqp_basic_cancel_t.self).pointee
            let tag = CValue.string(cancel.consumer_tag)
            consumers.removeValue(forKey: tag)?.finish(throwing: AMQPError(.channelClosed, "the broker cancelled consumer \(tag) (queue deleted?)"))
        case FANFLOW_CHANNEL_CLOSE:
            let close = method.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
            channelClosedByBroker(AMQPError(.channelClosed, CValue.string(close.reply_text), replyCode: Int(close.reply_code)))
        case FANFLOW_CONNECTION_CLOSE:
            let close = method.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
            if let conn = connection {
                var ok = amqp_connection_close_ok_t()
                _ = amqp_send_method(conn, 0, FANFLOW_CONNECTION_CLOSE_OK, &ok)
            }
            lose(AMQPError(.connectionClosed, CValue.string(close.reply_text), replyCode: Int(close.reply_code)))
        case FANFLOW_CONNECTION_BLOCKED:
            isBlocked = true
        case FANFLOW_CONNECTION_UNBLOCKED:
            isBlocked = false
        default:
            break
        }
    }

    private func completeIfWhole() {
        guard let message = incoming, let size = message.bodySize, message.body.count >= size else { return }
        incoming = nil
        guard !message.isReturn else { return }
        let delivery = AMQPDelivery(deliveryTag: message.deliveryTag, redelivered: message.redelivered,
                                    exchange: message.exchange, routingKey: message.routingKey,
                                    consumerTag: message.consumerTag, properties: message.properties,
                                    body: message.body, channelGeneration: channelGeneration, connection: self)
        if let index = completed.lastIndex(where: { $0.tag == message.consumerTag }) {
            completed[index].deliveries.append(delivery)
        } else if consumers[message.consumerTag] != nil {
            completed.append((message.consumerTag, [delivery]))
        }
    }

    /// The broker closed the channel: fail what was waiting on it, acknowledge the close, and open a
    /// fresh channel so the connection stays usable.
    private func channelClosedByBroker(_ error: AMQPError) {
        guard let conn = connection else { return }
        var ok = amqp_channel_close_ok_t()
        _ = amqp_send_method(conn, channel, FANFLOW_CHANNEL_CLOSE_OK, &ok)
        for waiter in confirms.reset() { waiter.resume(returning: .failed(error)) }
        for consumer in consumers.values { consumer.finish(throwing: error) }
        consumers.removeAll()
        completed.removeAll()
        incoming = nil
        do {
            try openChannel()
        } catch let reopen {
            lose(reopen)
        }
    }

    /// Checks the reply of the synchronous call just made. A server exception closes the channel
    /// (re-opened here) or the connection, and is thrown with the broker's reason.
    private func checkRPC(_ what: String) throws(AMQPError) {
        guard let conn = connection else { throw AMQPError(.connectionClosed, "not connected") }
        let reply = amqp_get_rpc_reply(conn)
        guard reply.reply_type != AMQP_RESPONSE_NORMAL else { return }
        let error = Self.describe(reply, context: what)
        if reply.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION, reply.reply.id == FANFLOW_CHANNEL_CLOSE {
            channelClosedByBroker(error)
        } else {
            if reply.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION, reply.reply.id == FANFLOW_CONNECTION_CLOSE {
                var ok = amqp_connection_close_ok_t()
                _ = amqp_send_method(conn, 0, FANFLOW_CONNECTION_CLOSE_OK, &ok)
            }
            lose(error)
        }
        throw error
    }

    /// The connection is gone: everything waiting learns why, and later calls fail fast.
    private func lose(_ error: AMQPError) {
        guard closedReason == nil else { return }
        finish(error)
        thread.setPollSource(nil)
    }

    private func finish(_ error: AMQPError) {
        closedReason = error
        completed.removeAll()
        for waiter in confirms.reset() { waiter.resume(returning: .failed(error)) }
        for consumer in consumers.values { consumer.finish(throwing: error) }
        consumers.removeAll()
        incoming = nil
    }

    private static func describe(_ reply: amqp_rpc_reply_t, context: String) -> AMQPError {
        switch reply.reply_type {
        case AMQP_RESPONSE_SERVER_EXCEPTION:
            if reply.reply.id == FANFLOW_CHANNEL_CLOSE {
                let close = reply.reply.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
                return AMQPError(.channelClosed, "\(context): \(CValue.string(close.reply_text))", replyCode: Int(close.reply_code))
            }
            if reply.reply.id == FANFLOW_CONNECTION_CLOSE {
                let close = reply.reply.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
                return AMQPError(.connectionClosed, "\(context): \(CValue.string(close.reply_text))", replyCode: Int(close.reply_code))
            }
            return AMQPError(.connectionClosed, "\(context): unexpected server method \(reply.reply.id)")
        case AMQP_RESPONSE_LIBRARY_EXCEPTION:
            return AMQPError(.io, "\(context): \(String(cString: amqp_error_string2(reply.library_error)))")
        default:
            return AMQPError(.io, "\(context): no reply")
        }
    }

    private static func nowNanoseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    }
}
