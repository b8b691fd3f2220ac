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
        var rest = Substring(url.dropFirst("redis://".count))
        var user: String?
        var password: String?
        if let at = rest.lastIndex(of: "@") {
            let credentials = rest[..<at]
            rest = rest[rest.index(after: at)...]
            if let colon = credentials.firstIndex(of: ":") {
                let name = credentials[..<colon]
                user = name.isEmpty ? nil : String(name).removingPercentEncodingLeniently
                password = String(credentials[credentials.index(after: colon)...]).removingPercentEncodingLeniently
            } else {
                password = String(credentials).removingPercentEncodingLeniently
            }
        }
        var database = 0
        if let slash = rest.firstIndex(of: "/") {
            let db = rest[rest.index(after: slash)...]
            rest = rest[..<slash]
            if !db.isEmpty {
                guard let n = Int(db), n >= 0 else { throw RedisError(.badURL, "database must be a number, got \(db)") }
                database = n
            }
        }
        var host = String(rest)
        var port = 6379
        if let colon = rest.lastIndex(of: ":") {
            guard let p = Int(rest[rest.index(after: colon)...]), (1...65535).contains(p) else {
                throw RedisError(.badURL, "port must be 1-65535 in \(url.prefix(60))")
            }
            port = p
            host = String(rest[..<colon])
        }
        guard !host.isEmpty else { throw RedisError(.badURL, "missing host in redis URL") }
        self.init(host: host, port: port, user: user, password: password, database: database)
    }
}

extension String {
    /// Percent-decoding that keeps the text as it is where it is not valid percent-encoding.
    var removingPercentEncodingLeniently: String {
        var bytes: [UInt8] = []
        var utf8 = Array(self.utf8)[...]
        while let byte = utf8.popFirst() {
            if byte == UInt8(ascii: "%"), utf8.count >= 2,
               let value = UInt8(String(decoding: utf8.prefix(2), as: UTF8.self), radix: 16) {
                bytes.append(value)
                utf8 = utf8.dropFirst(2)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
