import CLibPQ
import ClientSupport
#if canImport(Glibc)
import Glibc
#endif

/// One PostgreSQL connection on its own thread.
///
/// libpq calls block, so they run on the connection's ``IOThread``. Statements inside
/// ``transaction(_:)`` run synchronously on that thread with the connection isolated, so a
/// transaction is one hop however many statements it has.
public actor PostgresConnection {
    private let thread: IOThread
    public nonisolated var unownedExecutor: UnownedSerialExecutor { thread.asUnownedSerialExecutor() }

    /// A `postgresql://` URL or a `key=value` connection string, as libpq takes them.
    public let connectionString: String
    /// Touched only by the actor's methods (on its thread) and by `deinit`, when no other reference exists.
    /// (`isolated deinit` would keep it checked, but trips the Swift 6.3 optimizer across modules.)
    nonisolated(unsafe) private var connection: OpaquePointer?
    private var inTransaction = false

    /// Throws ``PostgresError``. (Untyped: a typed-throws async initializer of an actor with a custom executor
    /// trips the Swift 6.3 optimizer, "circular reference", in modules that call it.)
    /// The connect and statement timeouts this connection was opened with.
    public let timeouts: PostgresTimeouts

    public init(url: String, timeouts: PostgresTimeouts = .standard) async throws {
        self.connectionString = url
        self.timeouts = timeouts
        self.thread = IOThread(name: "postgres")
        try connectIsolated()
    }

    deinit {
        if let connection { PQfinish(connection) }
        thread.stopWhenIdle()
    }

    private func connectIsolated() throws(PostgresError) {
        // The timeouts come first and the URL (expanded from `dbname`) after them, so a URL that
        // sets `connect_timeout` or `options` itself wins over these defaults.
        let keys = ["connect_timeout", "options", "dbname"]
        let values = [String(timeouts.connectSeconds), "-c statement_timeout=\(timeouts.statementMilliseconds)", connectionString]
        let opened: OpaquePointer? = withCStrings(keys) { keyPointers in
            withCStrings(values) { valuePointers in PQconnectdbParams(keyPointers, valuePointers, 1) }
        }
        guard let fresh = opened else {
            throw PostgresError(.connect, "out of memory creating a libpq connection")
        }
        guard PQstatus(fresh) == CONNECTION_OK else {
            let message = String(cString: PQerrorMessage(fresh))
            PQfinish(fresh)
            throw PostgresError(.connect, message)
        }
        connection = fresh
    }

    /// False once the server closed the connection or a statement broke it; a pool drops it then.
    public var isHealthy: Bool {
        guard let connection else { return false }
        return PQstatus(connection) == CONNECTION_OK
    }

    public func close() {
        if let connection { PQfinish(connection) }
        connection = nil
    }

    /// Runs one or more statements without parameters (simple query protocol). Used for DDL and
    /// migrations, where a file holds several statements.
    public func execute(_ sql: String) throws(PostgresError) {
        let connection = try open()
        let result = PQexec(connection, sql)
        defer { PQclear(result) }
        try check(result, connection)
    }

    /// Runs one statement with parameters (`$1`, `$2`…) and returns its rows.
    @discardableResult
    public func query(_ sql: String, _ parameters: [any PostgresEncodable] = [],
                      format: PostgresResultFormat = .text) throws(PostgresError) -> PostgresRows {
        let connection = try open()
        let values = parameters.map(\.postgresValue)
        let result = try withParameters(values) { count, pointers, lengths, formats in
            PQexecParams(connection, sql, count, nil, pointers, lengths, formats, format.rawValue)
        }
        defer { PQclear(result) }
        try check(result, connection)
        return rows(of: result, format: format)
    }

    /// Parses and plans a statement once under `name`, for statements run many times (bulk inserts):
    /// the server then skips parsing and planning on each ``query(prepared:_:format:)``.
    public func prepare(_ name: String, _ sql: String) throws(PostgresError) {
        let connection = try open()
        let result = PQprepare(connection, name, sql, 0, nil)
        defer { PQclear(result) }
        try check(result, connection)
        prepared.insert(name)
    }

    /// Names this session prepared; a reset connection has lost them.
    public private(set) var prepared: Set<String> = []

    /// Runs a statement prepared with ``prepare(_:_:)``.
    @discardableResult
    public func query(prepared name: String, _ parameters: [any PostgresEncodable] = [],
                      format: PostgresResultFormat = .text) throws(PostgresError) -> PostgresRows {
        let connection = try open()
        let values = parameters.map(\.postgresValue)
        let result = try withParameters(values) { count, pointers, lengths, formats in
            PQexecPrepared(connection, name, count, pointers, lengths, formats, format.rawValue)
        }
        defer { PQclear(result) }
        try check(result, connection)
        return rows(of: result, format: format)
    }

    /// Runs `body` between `BEGIN` and `COMMIT`; any error rolls back and is rethrown.
    public func transaction<T: Sendable>(_ body: @Sendable (isolated PostgresConnection) throws -> T) throws -> T {
        guard !inTransaction else { throw PostgresError(.usage, "transactions do not nest") }
        try execute("BEGIN")
        inTransaction = true
        defer { inTransaction = false }
        do {
            let value = try body(self)
            try execute("COMMIT")
            return value
        } catch {
            if isHealthy { try? execute("ROLLBACK") }
            throw error
        }
    }

    /// `COPY … FROM STDIN` in text format: `rows` are encoded with COPY's escaping and streamed in
    /// chunks. Returns the number of rows the server stored.
    @discardableResult
    public func copyIn(_ copyStatement: String, rows: some Sequence<[String?]>) throws(PostgresError) -> Int {
        let connection = try open()
        let start = PQexec(connection, copyStatement)
        let startStatus = PQresultStatus(start)
        if startStatus != PGRES_COPY_IN {
            defer { PQclear(start) }
            try check(start, connection)
            throw PostgresError(.usage, "statement did not start COPY FROM STDIN: \(copyStatement.prefix(60))")
        }
        PQclear(start)
        var buffer: [UInt8] = []
        buffer.reserveCapacity(1 << 17)
        var sendFailure: String?
        for row in rows {
            CopyText.append(row, to: &buffer)
            if buffer.count >= 1 << 16 {
                if !send(buffer, connection) { sendFailure = String(cString: PQerrorMessage(connection)); break }
                buffer.removeAll(keepingCapacity: true)
            }
        }
        if sendFailure == nil, !buffer.isEmpty, !send(buffer, connection) {
            sendFailure = String(cString: PQerrorMessage(connection))
        }
        PQputCopyEnd(connection, sendFailure)
        var stored = 0
        var firstError: PostgresError?
        while let result = PQgetResult(connection) {
            do throws(PostgresError) {
                try check(result, connection)
                stored = Int(String(cString: PQcmdTuples(result))) ?? stored
            } catch {
                firstError = firstError ?? error
            }
            PQclear(result)
        }
        if let firstError { throw firstError }
        if let sendFailure { throw PostgresError(.io, sendFailure) }
        return stored
    }

    private func send(_ bytes: [UInt8], _ connection: OpaquePointer) -> Bool {
        bytes.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) {
                PQputCopyData(connection, $0.baseAddress, Int32($0.count)) == 1
            }
        }
    }

    // MARK: - libpq plumbing

    /// The live connection, re-established with `PQreset` if the server closed it between statements.
    private func open() throws(PostgresError) -> OpaquePointer {
        guard let connection else { throw PostgresError(.io, "connection is closed") }
        if PQstatus(connection) != CONNECTION_OK {
            guard !inTransaction else {
                throw PostgresError(.io, "connection lost inside a transaction: \(String(cString: PQerrorMessage(connection)))")
            }
            PQreset(connection)
            prepared.removeAll()
            guard PQstatus(connection) == CONNECTION_OK else {
                throw PostgresError(.connect, String(cString: PQerrorMessage(connection)))
            }
        }
        return connection
    }

    private func check(_ result: OpaquePointer?, _ connection: OpaquePointer) throws(PostgresError) {
        guard let result else {
            throw PostgresError(.io, String(cString: PQerrorMessage(connection)))
        }
        switch PQresultStatus(result) {
        case PGRES_COMMAND_OK, PGRES_TUPLES_OK, PGRES_EMPTY_QUERY, PGRES_COPY_IN, PGRES_COPY_OUT:
            return
        default:
            func field(_ code: Int32) -> String? {
                PQresultErrorField(result, code).map { String(cString: $0) }
            }
            let sqlState = field(Int32(FANFLOW_PG_DIAG_SQLSTATE))
            let broken = PQstatus(connection) != CONNECTION_OK
            throw PostgresError(sqlState == nil && broken ? .io : .server,
                                String(cString: PQresultErrorMessage(result)),
                                sqlState: sqlState,
                                detail: field(Int32(FANFLOW_PG_DIAG_MESSAGE_DETAIL)),
                                constraint: field(Int32(FANFLOW_PG_DIAG_CONSTRAINT_NAME)))
        }
    }

    private func rows(of result: OpaquePointer?, format: PostgresResultFormat) -> PostgresRows {
        let rowCount = Int(PQntuples(result))
        let columnCount = Int(PQnfields(result))
        let columns = (0..<columnCount).map { String(cString: PQfname(result, Int32($0))) }
        var cells: [[UInt8]?] = []
        cells.reserveCapacity(rowCount * columnCount)
        for row in 0..<Int32(rowCount) {
            for column in 0..<Int32(columnCount) {
                if PQgetisnull(result, row, column) == 1 {
                    cells.append(nil)
                } else {
                    let length = Int(PQgetlength(result, row, column))
                    let value = PQgetvalue(result, row, column)
                    cells.append(Array(UnsafeRawBufferPointer(start: value, count: length)))
                }
            }
        }
        let affected = Int(String(cString: PQcmdTuples(result))) ?? 0
        return PostgresRows(columns: columns, format: format, affectedRows: affected, cells: cells)
    }

    /// Lays the parameters out in one buffer and hands libpq pointers into it for the call's duration.
    /// Text parameters travel NUL-terminated, so a text holding a NUL byte is refused here, before
    /// anything is sent: libpq would silently send only what precedes it.
    private func withParameters<R>(
        _ values: [PostgresValue],
        _ body: (Int32, UnsafePointer<UnsafePointer<CChar>?>?, UnsafePointer<Int32>?, UnsafePointer<Int32>?) -> R
    ) throws(PostgresError) -> R {
        var storage: [UInt8] = []
        var offsets: [Int?] = []
        var lengths: [Int32] = []
        var formats: [Int32] = []
        for value in values {
            switch value {
            case .text(let text):
                let start = storage.count
                offsets.append(start)
                storage.append(contentsOf: text.utf8)
                if storage[start...].contains(0) {
                    throw PostgresError(.invalidParameter, "text parameter $\(offsets.count) holds a NUL byte, which PostgreSQL text cannot store")
                }
                storage.append(0)
                lengths.append(0)
                formats.append(0)
            case .binary(let bytes):
                offsets.append(storage.count)
                storage.append(contentsOf: bytes)
                lengths.append(Int32(bytes.count))
                formats.append(1)
            case .null:
                offsets.append(nil)
                lengths.append(0)
                formats.append(0)
            }
        }
        if storage.isEmpty { storage.append(0) }
        return storage.withUnsafeBufferPointer { buffer in
            let base = UnsafeRawPointer(buffer.baseAddress!)
            let pointers: [UnsafePointer<CChar>?] = offsets.map { offset in
                offset.map { (base + $0).assumingMemoryBound(to: CChar.self) }
            }
            return body(Int32(values.count), pointers, lengths, formats)
        }
    }
}

/// COPY's text format: tab-separated, `\N` for NULL, backslash escapes for the separators.
enum CopyText {
    static func append(_ row: [String?], to buffer: inout [UInt8]) {
        for (index, cell) in row.enumerated() {
            if index > 0 { buffer.append(UInt8(ascii: "\t")) }
            guard let cell else {
                buffer.append(UInt8(ascii: "\\"))
                buffer.append(UInt8(ascii: "N"))
                continue
            }
            let needsEscaping = cell.utf8.contains { $0 == UInt8(ascii: "\\") || $0 == UInt8(ascii: "\t")
                || $0 == UInt8(ascii: "\n") || $0 == UInt8(ascii: "\r") }
            guard needsEscaping else {
                buffer.append(contentsOf: cell.utf8)
                continue
            }
            for byte in cell.utf8 {
                switch byte {
                case UInt8(ascii: "\\"): buffer.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\\")])
                case UInt8(ascii: "\t"): buffer.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
                case UInt8(ascii: "\n"): buffer.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
                case UInt8(ascii: "\r"): buffer.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
                default: buffer.append(byte)
                }
            }
        }
        buffer.append(UInt8(ascii: "\n"))
    }
}

/// Bounds on how long PostgreSQL may keep a caller waiting: libpq's `connect_timeout` and the
/// server's `statement_timeout` (sent as a startup option, so it holds from the first statement
/// and survives `PQreset`). Defaults: 5 s to connect (a reachable server answers in
/// milliseconds; a blackholed one would otherwise take the kernel's SYN retries, about 2 minutes
/// on Linux) and 300 s per statement: generous, because the tools' statements grow with the data
/// (`rebuild-counters` scans the ledger, migrations build indexes), yet a statement stuck behind a
/// lock still ends. The gateway sets its own, much shorter, from the configuration.
public struct PostgresTimeouts: Sendable, Equatable {
    public var connectSeconds: Int
    public var statementMilliseconds: Int

    public init(connectSeconds: Int, statementMilliseconds: Int) {
        self.connectSeconds = max(1, connectSeconds)
        self.statementMilliseconds = max(1, statementMilliseconds)
    }

    public static let standard = PostgresTimeouts(connectSeconds: 5, statementMilliseconds: 300_000)
}

/// A NULL-terminated array of C strings for libpq's keyword/value calls, alive during `body`.
private func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafePointer<CChar>?>) -> R) -> R {
    let duplicated = strings.map { strdup($0) }
    defer { duplicated.forEach { free($0) } }
    let pointers: [UnsafePointer<CChar>?] = duplicated.map { $0.map { UnsafePointer($0) } } + [nil]
    return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
}
