/// One reply of the Redis protocol, copied out of hiredis into Swift values.
public enum RedisReply: Sendable, Equatable {
    case status(String)
    case error(String)
    case integer(Int64)
    case bulk([UInt8])
    case null
    case array([RedisReply])

    /// The reply as text: bulk strings and status replies.
    public var string: String? {
        switch self {
        case .bulk(let bytes): return String(decoding: bytes, as: UTF8.self)
        case .status(let text): return text
        default: return nil
        }
    }

    /// The reply as an integer: integer replies, and bulk strings holding a decimal integer.
    public var int: Int64? {
        switch self {
        case .integer(let value): return value
        case .bulk: return string.flatMap { Int64($0) }
        default: return nil
        }
    }

    public var array: [RedisReply]? {
        if case .array(let items) = self { return items }
        return nil
    }

    public var isNull: Bool { self == .null }
}

/// A failure of the Redis client, with the server's or hiredis's own message.
public struct RedisError: Error, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String { case badURL, connect, io, server, protocolError, closed }
        private let base: Base
        private init(_ base: Base) { self.base = base }
        /// The URL could not be parsed.
        public static let badURL = Code(.badURL)
        /// The TCP connection or the handshake (AUTH, SELECT) failed.
        public static let connect = Code(.connect)
        /// The connection broke during a command; whether the command ran is unknown.
        public static let io = Code(.io)
        /// The server answered with an error reply (its text is in ``RedisError/message``).
        public static let server = Code(.server)
        /// hiredis could not parse what the server sent.
        public static let protocolError = Code(.protocolError)
        /// The connection was closed by its owner.
        public static let closed = Code(.closed)
        public var description: String { base.rawValue }
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    /// The first word of a server error reply (`NOSCRIPT`, `WRONGTYPE`, `ERR`…).
    public var serverErrorPrefix: String? {
        guard code == .server else { return nil }
        return message.split(separator: " ", maxSplits: 1).first.map(String.init)
    }

    public var description: String { "redis \(code): \(message)" }
}
