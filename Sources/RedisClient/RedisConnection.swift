import CHiredis
import ClientSupport
#if canImport(Glibc)
import Glibc
#endif

/// A Lua script run with `EVALSHA`. The connection loads it (`SCRIPT LOAD`) the first time and again
/// whenever the server answers `NOSCRIPT` (after a restart or `SCRIPT FLUSH`).
public struct RedisScript: Sendable, Hashable {
    public let source: String
    public init(_ source: String) { self.source = source }
}

/// One Redis connection on its own thread.
///
/// Every method runs on the connection's ``IOThread``, where hiredis may block; callers simply
/// `await`. A broken connection is re-opened on the next call: if the server restarted while the
/// connection was idle, the next command goes to the new server without failing.
public actor RedisConnection {
    private let thread: IOThread
    public nonisolated var unownedExecutor: UnownedSerialExecutor { thread.asUnownedSerialExecutor() }

    public let configuration: RedisConfiguration
    /// Touched only by the actor's methods (on its thread) and by `deinit`, when no other reference exists.
    /// (`isolated deinit` would keep it checked, but trips the Swift 6.3 optimizer across modules.)
    nonisolated(unsafe) private var context: UnsafeMutablePointer<redisContext>?
    /// SHA-1 of each script as the server reported it on `SCRIPT LOAD`.
    private var scriptSHAs: [String: String] = [:]
    /// Connections opened so far, including the first: tests and metrics read it to see reconnects.
    public private(set) var connectCount = 0

    /// Connects and runs `AUTH`/`SELECT` as the configuration says.
    /// Throws ``RedisError``. (Untyped: a typed-throws async initializer of an actor with a custom executor
    /// trips the Swift 6.3 optimizer, "circular reference", in modules that call it.)
    public init(configuration: RedisConfiguration) async throws {
        self.configuration = configuration
        self.thread = IOThread(name: "redis")
        try connectIsolated()
    }

    /// Throws ``RedisError``. (Untyped: a typed-throws async initializer of an actor with a custom executor
    /// trips the Swift 6.3 optimizer, "circular reference", in modules that call it.)
    public init(url: String) async throws {
        try await self.init(configuration: RedisConfiguration(url: url))
    }

    deinit {
        if let context { redisFree(context) }
        thread.stopWhenIdle()
    }

    // Runs on the connection's thread: a separate method, so `init` hops there before touching hiredis.
    private func connectIsolated() throws(RedisError) {
        try reconnect()
    }

    /// Closes the connection. Later calls reconnect.
    public func close() {
        if let context { redisFree(context) }
        context = nil
    }

    /// Runs one command. An error reply is thrown as ``RedisError`` with code `.server`.
    @discardableResult
    public func command(_ arguments: [String]) throws(RedisError) -> RedisReply {
        let reply = try pipeline([arguments])[0]
        if case .error(let message) = reply { throw RedisError(.server, message) }
        return reply
    }

    /// Sends every command, then reads every reply: one round trip. Error replies stay in place as
    /// `.error`, so one failing command does not hide the others' results.
    public func pipeline(_ commands: [[String]]) throws(RedisError) -> [RedisReply] {
        guard !commands.isEmpty else { return [] }
        let context = try usableContext()
        for arguments in commands {
            try append(arguments, to: context)
        }
        var replies: [RedisReply] = []
        replies.reserveCapacity(commands.count)
        for _ in commands {
            replies.append(try readReply(context))
        }
        return replies
    }

    /// `EVALSHA`, loading the script first when the server does not know it.
    public func evalSHA(_ script: RedisScript, keys: [String], arguments: [String]) throws(RedisError) -> RedisReply {
        let reply = try evalSHAPipelined([(script, keys, arguments)])[0]
        if case .error(let message) = reply { throw RedisError(.server, message) }
        return reply
    }

    /// Many `EVALSHA` calls in one round trip. Calls answered `NOSCRIPT` did not run, so they are
    /// sent again once the script is loaded; other error replies are returned in place.
    public func evalSHAPipelined(_ calls: [(script: RedisScript, keys: [String], arguments: [String])])
        throws(RedisError) -> [RedisReply] {
        for call in calls where scriptSHAs[call.script.source] == nil {
            try load(call.script)
        }
        func evalCommand(_ call: (script: RedisScript, keys: [String], arguments: [String])) -> [String] {
            var command = ["EVALSHA", scriptSHAs[call.script.source] ?? "", String(call.keys.count)]
            command.append(contentsOf: call.keys)
            command.append(contentsOf: call.arguments)
            return command
        }
        var replies = try pipeline(calls.map(evalCommand))
        let missing = replies.indices.filter { index in
            if case .error(let message) = replies[index] { return message.hasPrefix("NOSCRIPT") }
            return false
        }
        if !missing.isEmpty {
            for script in Set(missing.map { calls[$0].script }) { try load(script) }
            let retried = try pipeline(missing.map { evalCommand(calls[$0]) })
            for (index, reply) in zip(missing, retried) { replies[index] = reply }
        }
        return replies
    }

    private func load(_ script: RedisScript) throws(RedisError) {
        guard let sha = try command(["SCRIPT", "LOAD", script.source]).string else {
            throw RedisError(.protocolError, "SCRIPT LOAD answered without a SHA")
        }
        scriptSHAs[script.source] = sha
    }

    // MARK: - hiredis

    /// The open context, re-opened when it broke or when the server closed it while idle.
    private func usableContext() throws(RedisError) -> UnsafeMutablePointer<redisContext> {
        if let context, context.pointee.err == 0, !peerClosed(context.pointee.fd) {
            return context
        }
        try reconnect()
        guard let context else { throw RedisError(.connect, "no connection") }
        return context
    }

    /// An idle connection has nothing to read; readable means the server closed it (EOF or RST).
    private func peerClosed(_ fd: Int32) -> Bool {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&pfd, 1, 0) > 0
    }

    private func reconnect() throws(RedisError) {
        if let context { redisFree(context) }
        context = nil
        let timeout = timeval(tv_sec: configuration.timeoutMilliseconds / 1000,
                              tv_usec: (configuration.timeoutMilliseconds % 1000) * 1000)
        guard let fresh = redisConnectWithTimeout(configuration.host, Int32(configuration.port), timeout) else {
            throw RedisError(.connect, "out of memory creating a hiredis context")
        }
        if fresh.pointee.err != 0 {
            let message = String(cString: fanflow_redis_errstr(fresh))
            redisFree(fresh)
            throw RedisError(.connect, "\(configuration.host):\(configuration.port): \(message)")
        }
        redisSetTimeout(fresh, timeout)
        var on: Int32 = 1
        setsockopt(fresh.pointee.fd, Int32(IPPROTO_TCP), TCP_NODELAY, &on, socklen_t(MemoryLayout<Int32>.size))
        context = fresh
        connectCount += 1
        do {
            if let password = configuration.password {
                var auth = ["AUTH"]
                if let user = configuration.user { auth.append(user) }
                auth.append(password)
                try handshake(auth)
            }
            if configuration.database != 0 { try handshake(["SELECT", String(configuration.database)]) }
        } catch {
            redisFree(fresh)
            context = nil
            throw RedisError(.connect, error.message)
        }
    }

    private func handshake(_ arguments: [String]) throws(RedisError) {
        guard let context else { throw RedisError(.connect, "no connection") }
        try append(arguments, to: context)
        if case .error(let message) = try readReply(context) { throw RedisError(.server, message) }
    }

    /// Queues one command in hiredis's output buffer, arguments passed as one contiguous byte buffer
    /// so no per-argument C string outlives (or dies before) its use.
    private func append(_ arguments: [String], to context: UnsafeMutablePointer<redisContext>) throws(RedisError) {
        var bytes: [UInt8] = []
        var lengths: [Int] = []
        lengths.reserveCapacity(arguments.count)
        for argument in arguments {
            bytes.append(contentsOf: argument.utf8)
            lengths.append(argument.utf8.count)
        }
        let status: Int32 = bytes.withUnsafeBufferPointer { buffer in
            let base = UnsafeRawPointer(buffer.baseAddress ?? UnsafePointer(bitPattern: 1)!)
            var pointers: [UnsafePointer<CChar>?] = []
            pointers.reserveCapacity(arguments.count)
            var offset = 0
            for length in lengths {
                pointers.append((base + offset).assumingMemoryBound(to: CChar.self))
                offset += length
            }
            return redisAppendCommandArgv(context, Int32(arguments.count), &pointers, lengths)
        }
        if status != REDIS_OK { throw failure(context) }
    }

    private func readReply(_ context: UnsafeMutablePointer<redisContext>) throws(RedisError) -> RedisReply {
        var raw: UnsafeMutableRawPointer?
        guard redisGetReply(context, &raw) == REDIS_OK, let raw else { throw failure(context) }
        defer { freeReplyObject(raw) }
        return Self.convert(raw.assumingMemoryBound(to: redisReply.self))
    }

    /// Turns a hiredis failure into a typed error and drops the context, which hiredis says is unusable.
    private func failure(_ context: UnsafeMutablePointer<redisContext>) -> RedisError {
        let protocolFailure = context.pointee.err == REDIS_ERR_PROTOCOL
        let message = String(cString: fanflow_redis_errstr(context))
        redisFree(context)
        self.context = nil
        return RedisError(protocolFailure ? .protocolError : .io, message.isEmpty ? "connection lost" : message)
    }

    private static func convert(_ reply: UnsafeMutablePointer<redisReply>) -> RedisReply {
        let r = reply.pointee
        switch r.type {
        case REDIS_REPLY_STATUS:
            return .status(String(decoding: UnsafeRawBufferPointer(start: r.str, count: r.len), as: UTF8.self))
        case REDIS_REPLY_ERROR:
            return .error(String(decoding: UnsafeRawBufferPointer(start: r.str, count: r.len), as: UTF8.self))
        case REDIS_REPLY_INTEGER:
            return .integer(r.integer)
        case REDIS_REPLY_STRING:
            return .bulk(Array(UnsafeRawBufferPointer(start: r.str, count: r.len)))
        case REDIS_REPLY_ARRAY:
            var items: [RedisReply] = []
            items.reserveCapacity(r.elements)
            for index in 0..<r.elements {
                if let element = r.element[index] { items.append(convert(element)) } else { items.append(.null) }
            }
            return .array(items)
        default:
            return .null
        }
    }
}
