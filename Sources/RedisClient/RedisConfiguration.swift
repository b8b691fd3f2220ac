import ClientSupport

/// Where and how to connect, parsed from `redis://[user:password@]host[:port][/db]`.
public struct RedisConfiguration: Sendable, Equatable {
    public var host: String
    public var port: Int
    public var password: String?
    public var user: String?
    public var database: Int
    /// Connect and per-command timeout: a server that stops answering fails the call, not the thread.
    public var timeoutMilliseconds: Int

    public init(host: String = "127.0.0.1", port: Int = 6379, user: String? = nil, password: String? = nil,
                database: Int = 0, timeoutMilliseconds: Int = 5_000) {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.database = database
        self.timeoutMilliseconds = timeoutMilliseconds
    }

    public init(url: String) throws(RedisError) {
        guard url.hasPrefix("redis://") else {
            throw RedisError(.badURL, "expected redis://[user:password@]host[:port][/db], got \(url.prefix(40))")
        }
        let parts = URLText.authority(url.dropFirst("redis://".count), defaultPort: 6379)
        guard let port = parts.port else { throw RedisError(.badURL, "port must be 1-65535 in a redis URL") }
        guard !parts.host.isEmpty else { throw RedisError(.badURL, "missing host in redis URL") }
        var database = 0
        if let path = parts.path, !path.isEmpty {
            guard let n = Int(path), n >= 0 else { throw RedisError(.badURL, "database must be a number, got \(path)") }
            database = n
        }
        // `redis://:secret@host` carries a password only; `redis://secret@host` is read the same way.
        let password = parts.password ?? parts.user
        let user = parts.password == nil ? nil : (parts.user?.isEmpty == false ? parts.user : nil)
        self.init(host: parts.host, port: port, user: user, password: password, database: database)
    }
}
