import AMQPClient
import ArgumentParser
import Contracts
import DeadLetters
import Foundation
import PostgresClient

/// `fanflow dlq list|show|replay|drop`: the dead letters the keepers stored, per queue, with the
/// reason; replay sends the original bytes back to their queue (confirmed, safe to repeat).
struct DeadLetterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dlq",
        abstract: "Look at, replay and drop dead letters (messages a work queue gave up on).",
        subcommands: [List.self, Show.self, Replay.self, Drop.self])

    static func withStore<T>(_ body: (DeadLetterStore, FanFlowConfiguration) async throws -> T) async throws -> T {
        let configuration = try loadConfiguration(role: .tool)
        let database = PostgresPool(url: configuration.databaseURL, maximumConnections: 1)
        do {
            let result = try await body(DeadLetterStore(database: database), configuration)
            await database.close()
            return result
        } catch {
            await database.close()
            throw error
        }
    }

    static func line(_ letter: DeadLetter) -> String {
        "\(letter.id)\t\(letter.status.rawValue)\t\(letter.queue)\t\(letter.messageID)\tattempts \(letter.attempts)"
            + "\tlast \(RFC3339.format(letter.lastFailure))\t\(letter.reason.prefix(100))"
    }

    static func print(_ letter: DeadLetter, withEnvelope: Bool) {
        Swift.print(String(decoding: JSONValue.object(letter.json(withEnvelope: withEnvelope)).jsonBytes, as: UTF8.self))
    }

    static func missing(_ id: Int64) -> ExitCode {
        FileHandle.standardError.write(Data("fanflow: no dead letter \(id)\n".utf8))
        return ExitCode(1)
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Dead letters, newest first: id, status, queue, message id, attempts, last failure, reason.")
        @Option(help: "Only this work queue, e.g. fanflow.points.") var queue: String?
        @Option(help: "open (default), replayed, dropped or all.") var status: String = "open"
        @Option(help: "At most this many (1-1000).") var limit: Int = 50

        func validate() throws {
            guard (1...1_000).contains(limit) else { throw ValidationError("--limit must be 1-1000") }
            guard status == "all" || DeadLetterStatus(rawValue: status) != nil else {
                throw ValidationError("--status must be one of open, replayed, dropped, all")
            }
        }

        func run() async throws {
            let wanted = status == "all" ? nil : DeadLetterStatus(rawValue: status)
            let (letters, depth) = try await DeadLetterCommand.withStore { store, _ in
                (try await store.list(queue: queue, status: wanted, limit: limit, before: nil), try await store.depth())
            }
            for letter in letters { Swift.print(DeadLetterCommand.line(letter)) }
            if letters.isEmpty { Swift.print("no dead letters") }
            for (name, count) in depth.sorted(by: { $0.key < $1.key }) where queue == nil || name == queue {
                Swift.print("open in \(name): \(count)")
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "One dead letter as JSON, with its reason and original envelope.")
        @Argument(help: "The dead letter's id.") var id: Int64

        func run() async throws {
            guard let letter = try await DeadLetterCommand.withStore({ store, _ in try await store.get(id) }) else {
                throw DeadLetterCommand.missing(id)
            }
            DeadLetterCommand.print(letter, withEnvelope: true)
        }
    }

    struct Replay: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Publish the original message again to the queue it died in (same message id; safe to repeat).",
            discussion: "Fix the cause first: a message replayed into the same failure is dead-lettered again.")
        @Argument(help: "The dead letter's id.") var id: Int64

        func run() async throws {
            let outcome = try await DeadLetterCommand.withStore { store, configuration in
                var amqp = try AMQPConfiguration(url: configuration.amqpURL)
                amqp.connectionName = "fanflow-dlq"
                let connection = try await AMQPConnection(configuration: amqp)
                do {
                    try await connection.enableConfirms()
                    let outcome = try await store.replay(id, via: ConnectionRepublisher(connection: connection))
                    await connection.close()
                    return outcome
                } catch {
                    await connection.close()
                    throw error
                }
            }
            switch outcome {
            case .replayed(let letter):
                Swift.print("replayed \(letter.id) to \(letter.queue) (\(letter.replayedCount) time(s) so far)")
            case .notFound:
                throw DeadLetterCommand.missing(id)
            case .dropped:
                FileHandle.standardError.write(Data("fanflow: dead letter \(id) was dropped; it is not replayed\n".utf8))
                throw ExitCode(1)
            case .unconfirmed:
                FileHandle.standardError.write(Data("fanflow: the broker did not confirm the replay; nothing was marked, try again\n".utf8))
                throw ExitCode(1)
            }
        }
    }

    struct Drop: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Give a dead letter up: it stays readable, and leaves the depth.")
        @Argument(help: "The dead letter's id.") var id: Int64

        func run() async throws {
            switch try await DeadLetterCommand.withStore({ store, _ in try await store.drop(id) }) {
            case .dropped(let letter): Swift.print("dropped \(letter.id) (\(letter.queue))")
            case .notFound: throw DeadLetterCommand.missing(id)
            }
        }
    }
}

/// Replays on a connection of the command's own, confirms on.
struct ConnectionRepublisher: DeadLetterRepublisher {
    let connection: AMQPConnection

    func republish(_ letter: DeadLetter) async -> Bool {
        let properties = AMQPProperties(messageID: letter.messageID, contentType: letter.contentType, persistent: true)
        return await connection.publish(exchange: "", routingKey: letter.queue, body: letter.body, properties: properties) == .acked
    }
}
