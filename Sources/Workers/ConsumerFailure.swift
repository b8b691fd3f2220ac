import Contracts
import PostgresClient
import RedisClient

/// Whose fault a failed batch is, decided conservatively: only a server that *answered* with an
/// error that is not about its own availability counts against the messages. Everything else (a
/// lost connection, a timeout, an error of a kind not listed here) is an outage, and an outage
/// never dead-letters good events: the batch is held and retried with backoff.
enum ConsumerFailure: Sendable {
    /// Nothing can make the message work (``EventRefused``, a text PostgreSQL cannot store, an
    /// envelope that does not decode): dead-lettered at once.
    case permanent(String)
    /// A server refused it for its content (a row too large for an index, invalid text, a Redis
    /// `WRONGTYPE` reply): retried alone a few times, since a few of these (a unique race) pass, then
    /// dead-lettered.
    case message(String)
    /// A server is unavailable: hold the batch.
    case outage(String)

    var countsAgainstMessages: Bool {
        if case .outage = self { return false }
        return true
    }

    var reason: String {
        switch self {
        case .permanent(let text), .message(let text), .outage(let text): return text
        }
    }

    static func classify(_ error: any Error) -> ConsumerFailure {
        switch error {
        case let refused as EventRefused:
            return .permanent("refused: \(refused.description)")
        case let problem as Envelope.DecodingProblem:
            return .permanent("undecodable: \(problem)")
        case let postgres as PostgresError:
            if postgres.code == .invalidParameter { return .permanent(postgres.description) }
            if postgres.code == .server, !isAvailabilityState(postgres.sqlState) { return .message(postgres.description) }
            return .outage(postgres.description)
        case let redis as RedisError:
            if let prefix = redis.serverErrorPrefix, redisContentPrefixes.contains(prefix) { return .message(redis.description) }
            return .outage(redis.description)
        default:
            return .outage("\(error)")
        }
    }

    /// SQLSTATEs that speak of the server, not the statement: 08 connection, 53 insufficient
    /// resources, 57 operator intervention (shutdown, statement timeout), 58 system error, 40001 /
    /// 40P01 serialization and deadlock (retry and they pass), 55P03 lock not available. Class 42
    /// (undefined table, missing privilege) too: a deploy without its migration would otherwise
    /// dead-letter every event, and parameters never make SQL text in FanFlow, so a message cannot
    /// cause one. A server error without a SQLSTATE is not trusted as the message's fault either.
    static func isAvailabilityState(_ sqlState: String?) -> Bool {
        guard let sqlState, sqlState.count == 5 else { return true }
        if ["40001", "40P01", "55P03"].contains(sqlState) { return true }
        return ["08", "53", "57", "58", "42"].contains(String(sqlState.prefix(2)))
    }

    /// Redis error replies that are about the command's data, not the server: only these count
    /// against a message. Everything else is held as an outage, `ERR` above all: it is Redis's
    /// generic prefix (`ERR max number of clients reached`, `ERR Error running script` after a bad
    /// deploy of a Lua script), and counting it would dead-letter every good event within the
    /// ~1.5 s of the per-message retries. `WRONGTYPE` is a key holding another type than the
    /// command expects, which only the message's own key can cause. FanFlow's scripts answer their
    /// refusals (`err:…`) as ordinary status replies, never as error replies, so none is listed.
    static let redisContentPrefixes: Set<String> = ["WRONGTYPE"]
}
