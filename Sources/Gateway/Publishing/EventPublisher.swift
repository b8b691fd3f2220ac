import AMQPClient
import ClientSupport
import Contracts
import Foundation
import Logging
import RedisClient
import Runtime

/// What became of one event the gateway was asked to publish.
public enum PublishResult: Sendable, Equatable {
    /// RabbitMQ confirmed the persistent message.
    case accepted
    /// Already published and confirmed recently (a platform retry); not published again.
    case duplicate
    /// The same event is being published by another request right now; the caller should retry.
    case inFlight
    /// Not confirmed: the broker is unreachable, refused it, or did not answer in time.
    case failed(String)
}

/// Publishes envelopes to `fanflow.events` and waits for the broker's confirm, recognizing
/// platform retries by event id in Redis first.
///
/// Dedupe protocol, one Redis round trip on each side of the publish: claim the id with a token
/// (`new`, `pending` or `done`), publish, then mark it `done` for `dedupeTTL`, or release the claim
/// if the broker did not confirm, so the platform's retry publishes it. A claim left by a crashed
/// gateway expires after `claimTTL`. If Redis itself is unreachable the event is published anyway:
/// consumers are idempotent by id, and losing an event would be worse than a duplicate.
public final class EventPublisher: Sendable {
    private let broker: ManagedAMQPConnection
    private let redis: RedisPool
    private let dedupeTTLMilliseconds: Int
    private let claimTTLMilliseconds: Int
    private let metrics: GatewayMetrics
    private let logger: Logger

    /// `Resources/Lua/dedupe-claim.lua` and `dedupe-settle.lua`.
    public static let scripts = RedisScriptLibrary.load(["dedupe-claim", "dedupe-settle"], from: .module, folder: "Lua", module: "Gateway")

    /// What `dedupe-claim.lua` answers for one id.
    enum Claim: Equatable {
        /// This request holds the claim: publish, then settle.
        case new
        /// Published and confirmed before: a platform's retry.
        case done
        /// Another request is publishing it right now.
        case pending
        /// No claim was taken (Redis unreachable, or a script error reply): publish anyway, settle nothing.
        case unclaimed

        static func decode(_ reply: RedisReply) throws(RedisScriptReplyError) -> Claim {
            switch reply {
            case .error: return .unclaimed
            case .bulk, .status:
                switch reply.string {
                case "new": return .new
                case "done": return .done
                case "pending": return .pending
                default: break
                }
            default: break
            }
            throw RedisScriptReplyError(script: "dedupe-claim", reply: reply)
        }
    }

    public init(broker: ManagedAMQPConnection, redis: RedisPool, dedupeTTL: Duration, claimTTL: Duration = .seconds(30),
                metrics: GatewayMetrics, logger: Logger) {
        self.broker = broker
        self.redis = redis
        self.dedupeTTLMilliseconds = Int(dedupeTTL.components.seconds * 1000)
        self.claimTTLMilliseconds = Int(claimTTL.components.seconds * 1000)
        self.metrics = metrics
        self.logger = logger
    }

    static func dedupeKey(_ id: String) -> String { "fanflow:seen:" + id }

    public func publish(_ envelope: Envelope) async -> PublishResult {
        await publish([envelope])[0]
    }

    /// Publishes a batch: one pipelined claim, every publish in flight at once, one pipelined settle.
    public func publish(_ envelopes: [Envelope]) async -> [PublishResult] {
        guard !envelopes.isEmpty else { return [] }
        let token = UUID().uuidString
        let keys = envelopes.map { Self.dedupeKey($0.id) }
        var claims: [Claim]
        do {
            let claim = try Self.scripts.script("dedupe-claim")
            let replies = try await redis.evalSHA(keys.map {
                (script: claim, keys: [$0], arguments: [token, String(claimTTLMilliseconds)])
            })
            // An error reply (a script failure) claimed nothing: publish, and settle nothing.
            claims = try replies.map(Claim.decode)
        } catch let error as RedisScriptReplyError {
            // The script and this code disagree: publishing without the dedupe loses nothing (the
            // consumers are idempotent by id), so the event still goes out, loudly.
            logger.error("dedupe script gave an unexpected reply, publishing without it", metadata: ["error": "\(error)"])
            claims = Array(repeating: .unclaimed, count: envelopes.count)
        } catch {
            metrics.count(.dedupeUnavailable)
            logger.warning("dedupe store unreachable, publishing without it", metadata: ["error": "\(error)"])
            claims = Array(repeating: .unclaimed, count: envelopes.count)
        }

        var results = [PublishResult](repeating: .duplicate, count: envelopes.count)
        var toPublish: [Int] = []
        for (index, claim) in claims.enumerated() {
            switch claim {
            case .done: results[index] = .duplicate
            case .pending: results[index] = .inFlight
            case .new, .unclaimed: toPublish.append(index)
            }
        }
        if toPublish.isEmpty { return results }

        let outcomes = await send(toPublish.map { envelopes[$0] })
        var settles: [(keys: [String], arguments: [String])] = []
        for (position, index) in toPublish.enumerated() {
            results[index] = outcomes[position]
            guard claims[index] == .new else { continue }
            let done = outcomes[position] == .accepted
            settles.append(([keys[index]], [token, done ? "done" : "release", String(dedupeTTLMilliseconds)]))
        }
        if !settles.isEmpty {
            do {
                let settle = try Self.scripts.script("dedupe-settle")
                _ = try await redis.evalSHA(settles.map { (script: settle, keys: $0.keys, arguments: $0.arguments) })
            } catch {
                // The claims expire on their own; a retry inside claimTTL is answered "in flight".
                logger.warning("could not settle dedupe claims", metadata: ["error": "\(error)"])
            }
        }
        return results
    }

    private func send(_ envelopes: [Envelope]) async -> [PublishResult] {
        let connection: AMQPConnection
        do {
            connection = try await broker.current()
        } catch {
            metrics.count(.brokerUnavailable, by: envelopes.count)
            return Array(repeating: .failed("broker unavailable: \(error)"), count: envelopes.count)
        }
        let started = ContinuousClock.now
        var messages: [OutgoingMessage] = []
        var results = [PublishResult](repeating: .failed("not sent"), count: envelopes.count)
        var positions: [Int] = []
        for (index, envelope) in envelopes.enumerated() {
            do {
                messages.append(try Self.message(envelope))
                positions.append(index)
            } catch {
                results[index] = .failed("cannot encode the envelope: \(error)")
            }
        }
        // One publish call for the whole batch: one hop to the connection's thread, one wait.
        let outcomes: [PublishOutcome]
        if messages.count == 1 {
            outcomes = [await connection.publish(exchange: messages[0].exchange, routingKey: messages[0].routingKey,
                                                 body: messages[0].body, properties: messages[0].properties)]
        } else {
            outcomes = await connection.publish(messages)
        }
        for (position, outcome) in zip(positions, outcomes) { results[position] = Self.result(outcome) }
        metrics.observePublish(seconds: (ContinuousClock.now - started).seconds, count: envelopes.count,
                               failures: results.filter { $0 != .accepted }.count)
        return results
    }

    private static func message(_ envelope: Envelope) throws -> OutgoingMessage {
        let properties = AMQPProperties(messageID: envelope.id, contentType: "application/json", type: envelope.kind.rawValue,
                                        appID: "fanflow-gateway", timestamp: UInt64(max(0, envelope.receivedAt.timeIntervalSince1970)),
                                        persistent: true)
        return OutgoingMessage(exchange: ExchangeName.events.rawValue, routingKey: envelope.routingKey,
                               body: try envelope.encoded(), properties: properties)
    }

    private static func result(_ outcome: PublishOutcome) -> PublishResult {
        switch outcome {
        case .acked: return .accepted
        case .nacked: return .failed("the broker refused the message (nack)")
        case .timedOut: return .failed("the broker did not confirm in time")
        case .failed(let error): return .failed("publish failed: \(error)")
        }
    }
}
