import ClientSupport

/// Where and how to connect, parsed from `amqp://user:password@host:port/vhost`.
public struct AMQPConfiguration: Sendable, Equatable {
    public var host: String
    public var port: Int
    public var user: String
    public var password: String
    public var virtualHost: String
    /// Heartbeats detect a dead peer on an idle connection; 0 turns them off.
    public var heartbeatSeconds: Int
    public var connectTimeoutMilliseconds: Int
    /// A confirm that has not arrived by then is reported as `.timedOut`.
    public var confirmTimeoutMilliseconds: Int
    /// A write the broker does not take within this time fails the connection (a blocked broker
    /// stops reading; callers must get an error, not a hang).
    public var sendTimeoutMilliseconds: Int
    /// Shown in the management UI beside the connection.
    public var connectionName: String?

    public init(host: String = "127.0.0.1", port: Int = 5672, user: String = "guest", password: String = "guest",
                virtualHost: String = "/", heartbeatSeconds: Int = 30, connectTimeoutMilliseconds: Int = 5_000,
                confirmTimeoutMilliseconds: Int = 5_000, sendTimeoutMilliseconds: Int = 5_000,
                connectionName: String? = nil) {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.virtualHost = virtualHost
        self.heartbeatSeconds = heartbeatSeconds
        self.connectTimeoutMilliseconds = connectTimeoutMilliseconds
        self.confirmTimeoutMilliseconds = confirmTimeoutMilliseconds
        self.sendTimeoutMilliseconds = sendTimeoutMilliseconds
        self.connectionName = connectionName
    }

    /// Parses an AMQP URI as RabbitMQ documents it: the vhost is the percent-decoded path
    /// (`%2F` is `/`); an absent path means the default vhost `/`.
    public init(url: String) throws(AMQPError) {
        guard url.hasPrefix("amqp://") else {
            throw AMQPError(.badURL, "expected amqp://user:password@host:port/vhost, got \(url.prefix(40))")
        }
        let parts = URLText.authority(url.dropFirst("amqp://".count), defaultPort: 5672)
        guard let port = parts.port else { throw AMQPError(.badURL, "port must be 1-65535 in an amqp URL") }
        guard !parts.host.isEmpty else { throw AMQPError(.badURL, "missing host in amqp URL") }
        let vhost = parts.path.map { URLText.percentDecoded(Substring($0)) } ?? ""
        self.init(host: parts.host, port: port, user: parts.user ?? "guest", password: parts.password ?? "guest",
                  virtualHost: vhost.isEmpty ? "/" : vhost)
    }
}
