import AMQPClient
import Foundation
import Testing

@Suite("AMQP client against RabbitMQ")
struct AMQPClientTests {
    /// A publisher in confirm mode plus a fresh quorum queue bound to a fresh exchange.
    private func makeTopology() async throws -> (AMQPConnection, exchange: String, queue: String) {
        let publisher = try await AMQPConnection(url: TestEnvironment.amqpURL)
        try await publisher.enableConfirms()
        let exchange = TestEnvironment.unique("test.x")
        let queue = TestEnvironment.unique("test.q")
        try await publisher.declareExchange(exchange, type: "topic")
        try await publisher.declareQueue(queue, options: AMQPQueueOptions(kind: .quorum, deliveryLimit: 5))
        try await publisher.bindQueue(queue, exchange: exchange, routingKey: "#")
        return (publisher, exchange, queue)
    }

    private func cleanUp(_ connection: AMQPConnection, exchange: String, queue: String) async {
        try? await connection.deleteQueue(queue)
        try? await connection.deleteExchange(exchange)
        await connection.close()
    }

    @Test("a confirmed publish is acked and lands in the queue with its properties")
    func confirmedPublish() async throws {
        let (publisher, exchange, queue) = try await makeTopology()
        let outcome = await publisher.publish(
            exchange: exchange, routingKey: "wechat.subscribe", body: Array("hello".utf8),
            properties: AMQPProperties(messageID: "m-1", contentType: "application/json",
                                       headers: ["x-trace": .string("abc"), "attempt": .int(2)]))
        #expect(outcome == .acked)

        let consumer = try await AMQPConnection(url: TestEnvironment.amqpURL)
        let (_, deliveries) = try await consumer.consume(queue: queue, prefetch: 10)
        var iterator = deliveries.makeAsyncIterator()
        let delivery = try #require(try await iterator.next()?.first)
        #expect(delivery.body == Array("hello".utf8))
        #expect(delivery.routingKey == "wechat.subscribe")
        #expect(delivery.properties.messageID == "m-1")
        #expect(delivery.properties.contentType == "application/json")
        #expect(delivery.properties.persistent)
        #expect(delivery.properties.headers["x-trace"] == .string("abc"))
        #expect(delivery.properties.headers["attempt"] == .int(2))
        try await delivery.ack()
        await consumer.close()
        await cleanUp(publisher, exchange: exchange, queue: queue)
    }

    @Test("a publish to a missing exchange reports failure, and the connection stays usable")
    func publishToMissingExchangeFails() async throws {
        let (publisher, exchange, queue) = try await makeTopology()
        let outcome = await publisher.publish(exchange: TestEnvironment.unique("missing"), routingKey: "k",
                                              body: Array("lost?".utf8))
        guard case .failed(let error) = outcome else {
            Issue.record("expected a failure, got \(outcome)")
            return
        }
        #expect(error.code == .channelClosed)
        #expect(error.replyCode == 404)
        #expect(error.message.contains("NOT_FOUND"))
        // A fresh channel was opened: the next publish to a real exchange is confirmed.
        let next = await publisher.publish(exchange: exchange, routingKey: "k", body: Array("ok".utf8))
        #expect(next == .acked)
        #expect(try await publisher.messageCount(queue: queue) == 1)
        await cleanUp(publisher, exchange: exchange, queue: queue)
    }

    @Test("a batch publish answers each message in order, beside single publishes in flight; a bad exchange fails its batch")
    func batchPublish() async throws {
        let (publisher, exchange, queue) = try await makeTopology()
        let batch = (0..<500).map { OutgoingMessage(exchange: exchange, routingKey: "b", body: Array("m\($0)".utf8),
                                                     properties: AMQPProperties(messageID: "batch-\($0)")) }
        async let single = publisher.publish(exchange: exchange, routingKey: "s", body: Array("single".utf8))
        async let first = publisher.publish(batch)
        async let second = publisher.publish(Array(batch.prefix(10)))
        let (one, many, few) = await (single, first, second)
        #expect(one == .acked)
        #expect(many.count == 500 && many.allSatisfy { $0 == .acked })
        #expect(few.count == 10 && few.allSatisfy { $0 == .acked })
        #expect(await publisher.outstandingConfirms == 0)
        #expect(try await publisher.messageCount(queue: queue) == 511)

        let missing = await publisher.publish([OutgoingMessage(exchange: TestEnvironment.unique("missing"), routingKey: "k", body: [1])])
        guard case .failed(let error)? = missing.first else {
            Issue.record("expected a failure, got \(missing)")
            return
        }
        #expect(error.replyCode == 404)
        #expect(await publisher.publish([]) == [])
        #expect(await publisher.publish([OutgoingMessage(exchange: exchange, routingKey: "k", body: [2])]) == [.acked])
        await cleanUp(publisher, exchange: exchange, queue: queue)
    }

    @Test("many publishes in flight are each confirmed, then consumed and acked in batches")
    func manyInFlight() async throws {
        let (publisher, exchange, queue) = try await makeTopology()
        let count = 3_000
        let outcomes = await withTaskGroup(of: PublishOutcome.self, returning: [PublishOutcome].self) { group in
            for index in 0..<count {
                group.addTask {
                    await publisher.publish(exchange: exchange, routingKey: "bulk", body: Array("m\(index)".utf8),
                                            properties: AMQPProperties(messageID: "id-\(index)"))
                }
            }
            return await group.reduce(into: []) { $0.append($1) }
        }
        #expect(outcomes.count == count)
        #expect(outcomes.allSatisfy { $0 == .acked })
        #expect(await publisher.outstandingConfirms == 0)

        let consumer = try await AMQPConnection(url: TestEnvironment.amqpURL)
        let (_, deliveries) = try await consumer.consume(queue: queue, prefetch: 200)
        var seen = Set<String>()
        var batches = 0
        for try await batch in deliveries {
            batches += 1
            for delivery in batch { seen.insert(delivery.properties.messageID ?? "") }
            try await batch.last?.ack(multiple: true)
            if seen.count == count { break }
        }
        #expect(batches < count) // frames read together arrive together
        #expect(seen.count == count)
        await consumer.close()
        await cleanUp(publisher, exchange: exchange, queue: queue)
    }

    @Test("an unacked message is redelivered after the consumer's connection drops")
    func redeliveryAfterConnectionLoss() async throws {
        let (publisher, exchange, queue) = try await makeTopology()
        #expect(await publisher.publish(exchange: exchange, routingKey: "k", body: Array("once".utf8),
                                        properties: AMQPProperties(messageID: "redeliver-me")) == .acked)

        let first = try await AMQPConnection(url: TestEnvironment.amqpURL)
        let (_, firstDeliveries) = try await first.consume(queue: queue, prefetch: 1)
        var firstIterator = firstDeliveries.makeAsyncIterator()
        let taken = try #require(try await firstIterator.next()?.first)
        #expect(taken.properties.messageID == "redeliver-me")
        #expect(!taken.redelivered)
        await first.abort() // no ack, no close handshake: as if the worker crashed
        await #expect(throws: AMQPError.self) { try await taken.ack() }

        let second = try await AMQPConnection(url: TestEnvironment.amqpURL)
        let (_, secondDeliveries) = try await second.consume(queue: queue, prefetch: 1)
        var secondIterator = secondDeliveries.makeAsyncIterator()
        let again = try #require(try await secondIterator.next()?.first)
        #expect(again.properties.messageID == "redeliver-me")
        #expect(again.redelivered)
        #expect(again.deliveryCount == 1)
        try await again.ack()
        await second.close()
        await cleanUp(publisher, exchange: exchange, queue: queue)
    }

    @Test("redeclaring a queue with other arguments fails with the broker's reason; the channel recovers")
    func preconditionFailedIsTyped() async throws {
        let (publisher, exchange, queue) = try await makeTopology()
        await #expect {
            try await publisher.declareQueue(queue, options: AMQPQueueOptions(kind: .classic))
        } throws: { error in
            guard let error = error as? AMQPError else { return false }
            return error.code == .channelClosed && error.replyCode == 406
        }
        #expect(await publisher.publish(exchange: exchange, routingKey: "k", body: [1]) == .acked)
        await cleanUp(publisher, exchange: exchange, queue: queue)
    }

    @Test("a bad password is refused with the broker's reason")
    func badCredentials() async throws {
        var configuration = try AMQPConfiguration(url: TestEnvironment.amqpURL)
        configuration.password = "wrong"
        await #expect(throws: AMQPError.self) { try await AMQPConnection(configuration: configuration) }
    }
}
