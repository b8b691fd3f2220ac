import Foundation
import NIOCore
import NIOPosix

/// An HTTP/1.1 request as it goes on the wire, built before the timed phase.
struct WireRequest: Sendable {
    let bytes: ByteBuffer

    static func post(_ path: String, host: String, headers: [(String, String)], body: String) -> WireRequest {
        let bodyBytes = Array(body.utf8)
        var head = "POST \(path) HTTP/1.1\r\nHost: \(host)\r\n"
        for (name, value) in headers { head += "\(name): \(value)\r\n" }
        head += "Content-Length: \(bodyBytes.count)\r\n\r\n"
        var buffer = ByteBufferAllocator().buffer(capacity: head.utf8.count + bodyBytes.count)
        buffer.writeString(head)
        buffer.writeBytes(bodyBytes)
        return WireRequest(bytes: buffer)
    }

    static func get(_ path: String, host: String) -> WireRequest {
        WireRequest(bytes: ByteBuffer(string: "GET \(path) HTTP/1.1\r\nHost: \(host)\r\n\r\n"))
    }
}

/// What to drive: connections, duration, and closed loop (each connection sends its next request
/// when the answer to the last one is in, as wrk does) or open loop at `rate` requests a second
/// over all connections (each request has its due time; latency is measured from it, so a slow
/// server or a busy generator shows in the latencies instead of lowering the offered load unseen).
struct LoadPlan: Sendable {
    var host: String
    var port: Int
    var connections: Int
    var seconds: Double
    var rate: Double?
    var threads: Int = 1
    /// After the timed phase, how long answers to requests still in flight are waited for.
    var drainSeconds: Double = 15

    var label: String {
        let loop = rate.map { "open loop at \(Format.int($0)) req/s" } ?? "closed loop"
        return "\(connections) connections, \(loop), \(threads) thread\(threads == 1 ? "" : "s")"
    }
}

struct LoadResult: Sendable, Codable {
    var seconds: Double
    /// Answers read within the timed phase, and all answers including those waited for after it.
    var answeredInTime: Int
    var answered: Int
    /// Requests put on the wire (a request list shorter than that is sent again from its start).
    var sent: Int
    var distinctRequests: Int
    /// Status code → answers; 0 counts requests that got no answer (connection lost, drain timed out).
    var statuses: [Int: Int]
    var reconnects: Int
    var latency: LatencyHistogram
    /// Open loop only: the offered rate, requests sent more than 1 ms after their due time (every
    /// connection was busy), the worst such delay, and requests that came due but were never sent.
    var rate: Double?
    var lateSends: Int
    var maxLagMilliseconds: Double
    var dueNotSent: Int
    /// Open loop only: requests that came due while every connection was busy and went out on the
    /// next one freed (the server held them all; more --connections would have sent them on time).
    var waitedForConnection: Int
    /// Open loop only: how late each request went out after its due time.
    var sendLag: LatencyHistogram?
    /// The generator's own CPU seconds over the timed phase and the drain.
    var generatorCPUSeconds: Double

    var requestsPerSecond: Double { seconds > 0 ? Double(answeredInTime) / seconds : 0 }
    var unanswered: Int { statuses[0] ?? 0 }
    func count(_ status: Int) -> Int { statuses[status] ?? 0 }
    var non2xx: Int { statuses.filter { !(200..<300).contains($0.key) }.values.reduce(0, +) }
    /// `200: 11086, 503: 534`: every status seen, for telling refusals from failures.
    var byStatus: String { statuses.filter { $0.key != 0 }.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", ") }

    /// µs of the generator's CPU per request sent, and % of one core over the phase.
    var generatorMicrosecondsPerRequest: Double { sent > 0 ? generatorCPUSeconds * 1e6 / Double(sent) : 0 }

    /// Whether an open-loop run offered what it was asked to: at most 0.5% of the due requests
    /// unsent when the time was up (the last tick's worth is always in flight to the wire), and 99% of
    /// them sent within 10 ms of their due time (a 1 ms tick on a shared, loaded machine is often
    /// a few ms late; more means every connection was busy or the generator lacked CPU).
    var keptUp: Bool {
        guard let rate else { return true }
        let due = rate * seconds
        return Double(dueNotSent) <= max(10, 0.005 * due) && (sendLag?.percentile(0.99) ?? 0) <= 10_000
    }

    /// One line on the pacing, for open-loop runs.
    var pacing: String? {
        guard let rate else { return nil }
        let offered = Format.int(Double(sent) / max(seconds, 1e-9))
        let lag = sendLag.map { "send lag after the due time p50 \($0.milliseconds(0.5)) ms, p99 \($0.milliseconds(0.99)) ms, max \($0.maxMilliseconds) ms" } ?? ""
        let verdict = keptUp ? "kept up" : "COULD NOT KEEP UP (latency counts from the due time)"
        return "open loop: \(Format.int(rate)) req/s asked, \(offered) sent/s, \(verdict): \(lag); \(lateSends) sent over 1 ms late; \(waitedForConnection) sent when a connection freed (every connection was busy at their due time); \(dueNotSent) due requests never sent"
    }

    static func merge(_ parts: [LoadResult], seconds: Double, cpu: Double) -> LoadResult {
        var out = LoadResult(seconds: seconds, answeredInTime: 0, answered: 0, sent: 0, distinctRequests: 0, statuses: [:],
                             reconnects: 0, latency: LatencyHistogram(), rate: nil, lateSends: 0, maxLagMilliseconds: 0,
                             dueNotSent: 0, waitedForConnection: 0, sendLag: nil, generatorCPUSeconds: cpu)
        for part in parts {
            out.answeredInTime += part.answeredInTime
            out.answered += part.answered
            out.sent += part.sent
            out.distinctRequests += part.distinctRequests
            for (status, n) in part.statuses { out.statuses[status, default: 0] += n }
            out.reconnects += part.reconnects
            out.latency.merge(part.latency)
            if let rate = part.rate { out.rate = (out.rate ?? 0) + rate }
            out.lateSends += part.lateSends
            out.maxLagMilliseconds = max(out.maxLagMilliseconds, part.maxLagMilliseconds)
            out.dueNotSent += part.dueNotSent
            out.waitedForConnection += part.waitedForConnection
            if let lag = part.sendLag {
                var merged = out.sendLag ?? LatencyHistogram()
                merged.merge(lag)
                out.sendLag = merged
            }
        }
        return out
    }
}

/// Runs a plan and returns what it saw.
enum LoadGenerator {
    /// One request on one connection before a timed phase, its status returned: the gateway loads an
    /// app into its cache on first use, and 64 connections asking at once for an app not cached yet
    /// are metered by its lookup limiter (429) as if the app were unknown.
    static func warmUp(_ plan: LoadPlan, _ request: WireRequest) async throws -> Int {
        var one = plan
        one.connections = 1
        one.threads = 1
        one.rate = nil
        one.seconds = 0.001
        let result = try await run(one, requests: [request])
        return result.statuses.keys.sorted().first ?? 0
    }

    static func run(_ plan: LoadPlan, requests: [WireRequest]) async throws -> LoadResult {
        guard !requests.isEmpty else { throw BenchError("no requests to send") }
        guard plan.connections >= 1, plan.threads >= 1, plan.seconds > 0 else { throw BenchError("nothing to run: \(plan.label)") }
        let threads = min(plan.threads, plan.connections)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        var drivers: [LoopDriver] = []
        for index in 0..<threads {
            // Connections and requests dealt round-robin, so no two threads send the same request.
            let connections = plan.connections / threads + (index < plan.connections % threads ? 1 : 0)
            let share = stride(from: index, to: requests.count, by: threads).map { requests[$0].bytes }
            let rate = plan.rate.map { $0 * Double(connections) / Double(plan.connections) }
            drivers.append(LoopDriver(loop: group.next(), host: plan.host, port: plan.port, connections: connections,
                                      requests: share.isEmpty ? [requests[0].bytes] : share, rate: rate))
        }
        do {
            for driver in drivers { try await driver.connectAll() }
            let cpuBefore = CPUMeter.selfSeconds()
            let start = NIODeadline.now() + .milliseconds(5)
            let end = start + .nanoseconds(Int64(plan.seconds * 1e9))
            let drainEnd = end + .nanoseconds(Int64(plan.drainSeconds * 1e9))
            let finished = drivers.map { $0.begin(start: start, end: end, drainEnd: drainEnd) }
            for future in finished { try await future.get() }
            let cpu = CPUMeter.selfSeconds() - cpuBefore
            var parts: [LoadResult] = []
            for driver in drivers { parts.append(try await driver.loop.submit { driver.result(seconds: plan.seconds) }.get()) }
            try await group.shutdownGracefully()
            return LoadResult.merge(parts, seconds: plan.seconds, cpu: cpu)
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
    }
}

/// One event loop's share of the load. Every mutable field is touched only on `loop`: the handlers
/// call in from their channel's pipeline, which runs on that loop, and the timers are scheduled on it.
final class LoopDriver: @unchecked Sendable {
    let loop: any EventLoop
    let host: String
    let port: Int
    let connectionCount: Int
    let requests: [ByteBuffer]
    /// Requests per nanosecond, open loop only.
    let ratePerNanosecond: Double?

    private var handlers: [ConnectionHandler] = []
    private var idle: [ConnectionHandler] = []
    private var next = 0
    private var sent = 0
    private var due = 0
    private var inFlight = 0
    private var start: UInt64 = 0
    private var end: UInt64 = 0
    private var sending = false
    private var done = false
    private var finished: EventLoopPromise<Void>?
    private var ticker: RepeatedTask?

    private var histogram = LatencyHistogram()
    private var lagHistogram = LatencyHistogram()
    private var statuses = [Int](repeating: 0, count: 600)
    private var answered = 0
    private var answeredInTime = 0
    private var reconnects = 0
    private var lateSends = 0
    private var maxLag: UInt64 = 0
    private var dueNotSent = 0
    private var waitedForConnection = 0

    init(loop: any EventLoop, host: String, port: Int, connections: Int, requests: [ByteBuffer], rate: Double?) {
        self.loop = loop
        self.host = host
        self.port = port
        self.connectionCount = connections
        self.requests = requests
        self.ratePerNanosecond = rate.map { $0 / 1e9 }
    }

    private func connect() -> EventLoopFuture<any Channel> {
        ClientBootstrap(group: loop)
            .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    let handler = ConnectionHandler(driver: self)
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
            .connect(host: host, port: port)
    }

    func connectAll() async throws {
        for _ in 0..<connectionCount {
            do { _ = try await connect().get() } catch { throw BenchError("cannot connect to \(host):\(port): \(error)") }
        }
    }

    /// Starts sending at `start`; the future completes when every answer is in after `end`, or at `drainEnd`.
    func begin(start: NIODeadline, end: NIODeadline, drainEnd: NIODeadline) -> EventLoopFuture<Void> {
        let promise = loop.makePromise(of: Void.self)
        loop.execute { [self] in
            finished = promise
            self.start = start.uptimeNanoseconds
            self.end = end.uptimeNanoseconds
            loop.scheduleTask(deadline: start) { [self] in
                sending = true
                if ratePerNanosecond != nil {
                    idle = handlers.filter(\.isActive)
                    // 1 ms ticks: each sends what came due since the last (8.8 a tick at 8,800/s).
                    ticker = loop.scheduleRepeatedTask(initialDelay: .zero, delay: .milliseconds(1)) { [self] _ in tick() }
                } else {
                    let t = NIODeadline.now().uptimeNanoseconds
                    for handler in handlers where handler.isActive { send(on: handler, intended: t) }
                }
            }
            loop.scheduleTask(deadline: end) { [self] in stopSending() }
            loop.scheduleTask(deadline: drainEnd) { [self] in finish() }
        }
        return promise.futureResult
    }

    private func nextRequest() -> ByteBuffer {
        let request = requests[next]
        next += 1
        if next == requests.count { next = 0 }
        sent += 1
        return request
    }

    private func send(on handler: ConnectionHandler, intended: UInt64) {
        inFlight += 1
        handler.send(nextRequest(), intended: intended)
    }

    private func tick() {
        guard sending, let rate = ratePerNanosecond else { return }
        let t = NIODeadline.now().uptimeNanoseconds
        guard t < end else { return }
        due = max(due, Int(Double(t - start) * rate) + 1)
        while sent < due, let handler = idle.popLast() { sendDue(on: handler, at: t) }
    }

    /// The oldest request that came due, on a free connection; its latency counts from its due time.
    private func sendDue(on handler: ConnectionHandler, at t: UInt64) {
        guard let rate = ratePerNanosecond else { return }
        let intended = start + UInt64(Double(sent) / rate)
        lagHistogram.record(microseconds: t > intended ? (t - intended) / 1000 : 0)
        if t > intended + 1_000_000 {
            lateSends += 1
            maxLag = max(maxLag, t - intended)
        }
        send(on: handler, intended: min(intended, t))
    }

    func connected(_ handler: ConnectionHandler) {
        handlers.append(handler)
        guard sending, !done else { return }
        if ratePerNanosecond != nil {
            idle.append(handler)
        } else {
            send(on: handler, intended: NIODeadline.now().uptimeNanoseconds)
        }
    }

    /// An answer is in. A connection the server is closing (`Connection: close`) is not used again:
    /// closing it here brings a new one while the load runs.
    func answered(_ handler: ConnectionHandler, status: Int, sentAt: UInt64, reusable: Bool) {
        let t = NIODeadline.now().uptimeNanoseconds
        inFlight -= 1
        answered += 1
        if t <= end { answeredInTime += 1 }
        statuses[min(max(status, 0), statuses.count - 1)] += 1
        histogram.record(microseconds: (t &- sentAt) / 1000)
        if !reusable {
            handler.close()
        } else if sending && t < end {
            if ratePerNanosecond == nil {
                send(on: handler, intended: t)
            } else if sent < due {
                waitedForConnection += 1
                sendDue(on: handler, at: t)
            } else {
                idle.append(handler)
            }
        }
        if !sending && inFlight == 0 { finish() }
    }

    /// A connection closed: a request it carried is counted unanswered, and while sending a new
    /// connection takes its place.
    func closed(_ handler: ConnectionHandler, hadRequest: Bool) {
        handlers.removeAll { $0 === handler }
        idle.removeAll { $0 === handler }
        if hadRequest {
            inFlight -= 1
            statuses[0] += 1
        }
        if sending && !done {
            reconnects += 1
            loop.scheduleTask(in: .milliseconds(20)) { [self] in
                guard sending, !done else { return }
                // A refused reconnect is tried again by the next close; none left means none sends.
                connect().whenFailure { [self] _ in
                    loop.scheduleTask(in: .milliseconds(200)) { [self] in if sending && !done { closedWithoutHandler() } }
                }
            }
        }
        if !sending && inFlight == 0 { finish() }
    }

    private func closedWithoutHandler() {
        reconnects += 1
        connect().whenFailure { [self] _ in
            loop.scheduleTask(in: .milliseconds(200)) { [self] in if sending && !done { closedWithoutHandler() } }
        }
    }

    private func stopSending() {
        sending = false
        ticker?.cancel()
        ticker = nil
        if let rate = ratePerNanosecond {
            let dueByEnd = Int(Double(end - start) * rate)
            dueNotSent = max(0, dueByEnd - sent)
        }
        if inFlight == 0 { finish() }
    }

    private func finish() {
        guard !done else { return }
        done = true
        sending = false
        ticker?.cancel()
        // Requests still without an answer when the drain ran out.
        statuses[0] += max(0, inFlight)
        inFlight = 0
        for handler in handlers { handler.close() }
        finished?.succeed(())
    }

    func result(seconds: Double) -> LoadResult {
        var counted: [Int: Int] = [:]
        for (status, n) in statuses.enumerated() where n > 0 { counted[status] = n }
        return LoadResult(seconds: seconds, answeredInTime: answeredInTime, answered: answered, sent: sent,
                          distinctRequests: requests.count, statuses: counted, reconnects: reconnects, latency: histogram,
                          rate: ratePerNanosecond.map { $0 * 1e9 }, lateSends: lateSends,
                          maxLagMilliseconds: Double(maxLag) / 1e6, dueNotSent: dueNotSent, waitedForConnection: waitedForConnection,
                          sendLag: ratePerNanosecond == nil ? nil : lagHistogram, generatorCPUSeconds: 0)
    }
}

/// One keep-alive connection: writes a request, reads its answer, tells the driver.
final class ConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let driver: LoopDriver
    private var context: ChannelHandlerContext?
    private var parser = ResponseParser()
    private var sentAt: UInt64 = 0
    private var busy = false
    private(set) var isActive = false

    init(driver: LoopDriver) { self.driver = driver }

    func channelActive(context: ChannelHandlerContext) {
        self.context = context
        isActive = true
        driver.connected(self)
    }

    func send(_ request: ByteBuffer, intended: UInt64) {
        guard let context else { return }
        busy = true
        sentAt = intended
        context.writeAndFlush(wrapOutboundOut(request), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        do {
            try parser.feed(&buffer) { status, close in
                busy = false
                driver.answered(self, status: status, sentAt: sentAt, reusable: !close)
            }
        } catch {
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        let hadRequest = busy
        busy = false
        isActive = false
        self.context = nil
        driver.closed(self, hadRequest: hadRequest)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    func close() {
        busy = false
        context?.close(promise: nil)
    }
}

/// HTTP/1.1 responses from a byte stream: status line, headers (Content-Length or chunked), body
/// skipped. Only the status is kept; the body is never copied.
struct ResponseParser {
    struct Malformed: Error, CustomStringConvertible {
        let description: String
    }

    private enum State {
        case head
        case body(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        case trailer
    }

    private var state = State.head
    private var status = 0
    private var close = false
    private var pending: ByteBuffer?

    mutating func feed(_ incoming: inout ByteBuffer, _ complete: (_ status: Int, _ close: Bool) -> Void) throws(Malformed) {
        if var buffer = pending {
            pending = nil
            buffer.writeBuffer(&incoming)
            try parse(&buffer, complete)
            if buffer.readableBytes > 0 {
                buffer.discardReadBytes()
                pending = buffer
            }
        } else {
            try parse(&incoming, complete)
            if incoming.readableBytes > 0 { pending = incoming }
        }
    }

    /// Offset of the first CRLF (or CRLFCRLF) from the reader index.
    private static func find(_ buffer: ByteBuffer, double: Bool) -> Int? {
        buffer.withUnsafeReadableBytes { bytes -> Int? in
            let width = double ? 4 : 2
            guard bytes.count >= width else { return nil }
            var i = 0
            while i <= bytes.count - width {
                if bytes[i] == 13, bytes[i + 1] == 10, !double || (bytes[i + 2] == 13 && bytes[i + 3] == 10) { return i }
                i += 1
            }
            return nil
        }
    }

    private mutating func parse(_ buffer: inout ByteBuffer, _ complete: (_ status: Int, _ close: Bool) -> Void) throws(Malformed) {
        while true {
            switch state {
            case .head:
                guard let headLength = Self.find(buffer, double: true) else {
                    if buffer.readableBytes > 64 * 1024 { throw Malformed(description: "response head over 64 KiB") }
                    return
                }
                let head = try Self.head(buffer, length: headLength)
                buffer.moveReaderIndex(forwardBy: headLength + 4)
                status = head.status
                close = head.close
                if (100..<200).contains(head.status) { continue }
                if head.status == 204 || head.status == 304 {
                    complete(status, close)
                } else if head.chunked {
                    state = .chunkSize
                } else if let length = head.contentLength {
                    state = .body(remaining: length)
                } else {
                    throw Malformed(description: "response \(head.status) has neither Content-Length nor chunked encoding")
                }
            case .body(let remaining), .chunkData(let remaining):
                let take = min(remaining, buffer.readableBytes)
                buffer.moveReaderIndex(forwardBy: take)
                let left = remaining - take
                if case .body = state {
                    if left == 0 { state = .head; complete(status, close) } else { state = .body(remaining: left); return }
                } else {
                    if left == 0 { state = .chunkSize } else { state = .chunkData(remaining: left); return }
                }
            case .chunkSize:
                guard let lineLength = Self.find(buffer, double: false) else { return }
                let line = buffer.readableBytesView.prefix(lineLength)
                let digits = line.prefix { $0 != UInt8(ascii: ";") }
                guard let size = Int(String(decoding: digits, as: UTF8.self).trimmingCharacters(in: .whitespaces), radix: 16), size >= 0 else {
                    throw Malformed(description: "bad chunk size")
                }
                buffer.moveReaderIndex(forwardBy: lineLength + 2)
                state = size == 0 ? .trailer : .chunkData(remaining: size + 2)
            case .trailer:
                guard let lineLength = Self.find(buffer, double: false) else { return }
                buffer.moveReaderIndex(forwardBy: lineLength + 2)
                if lineLength == 0 { state = .head; complete(status, close) }
            }
        }
    }

    private struct Head {
        var status: Int
        var contentLength: Int?
        var chunked: Bool
        var close: Bool
    }

    /// Whether `bytes[at...]` starts with `name` (lowercase), ignoring the case of letters: OR-ing
    /// 0x20 lowercases a letter and leaves '-' and ':' as they are.
    private static func starts(_ bytes: UnsafeRawBufferPointer, at index: Int, end: Int, with name: [UInt8]) -> Bool {
        guard end - index >= name.count else { return false }
        for k in 0..<name.count where bytes[index + k] | 0x20 != name[k] { return false }
        return true
    }

    private static let contentLength = Array("content-length:".utf8)
    private static let transferEncoding = Array("transfer-encoding:".utf8)
    private static let chunkedWord = Array("chunked".utf8)
    private static let connection = Array("connection:".utf8)
    private static let closeWord = Array("close".utf8)

    /// Status and framing from the head's bytes, read in place (no String per response: the
    /// generator parses ~9,000 heads a second beside the gateway it measures).
    private static func head(_ buffer: ByteBuffer, length: Int) throws(Malformed) -> Head {
        let parsed: Head? = buffer.withUnsafeReadableBytes { all -> Head? in
            let bytes = UnsafeRawBufferPointer(rebasing: all[0..<length])
            // "HTTP/1.x SSS"
            guard bytes.count >= 12, bytes[0] == UInt8(ascii: "H"), bytes[5] == UInt8(ascii: "1"), bytes[8] == UInt8(ascii: " ") else { return nil }
            var status = 0
            for k in 9..<12 {
                let digit = Int(bytes[k]) - 48
                guard (0...9).contains(digit) else { return nil }
                status = status * 10 + digit
            }
            var head = Head(status: status, contentLength: nil, chunked: false, close: false)
            var lineStart = 0
            while lineStart < bytes.count {
                var lineEnd = lineStart
                while lineEnd < bytes.count && bytes[lineEnd] != 13 { lineEnd += 1 }
                if starts(bytes, at: lineStart, end: lineEnd, with: contentLength) {
                    var value = 0
                    var digits = 0
                    for k in (lineStart + contentLength.count)..<lineEnd {
                        let byte = bytes[k]
                        if byte == 32 || byte == 9 { continue }
                        let digit = Int(byte) - 48
                        guard (0...9).contains(digit), digits < 12 else { return nil }
                        value = value * 10 + digit
                        digits += 1
                    }
                    guard digits > 0 else { return nil }
                    head.contentLength = value
                } else if starts(bytes, at: lineStart, end: lineEnd, with: transferEncoding) {
                    var k = lineStart + transferEncoding.count
                    while k < lineEnd {
                        if starts(bytes, at: k, end: lineEnd, with: chunkedWord) { head.chunked = true }
                        k += 1
                    }
                } else if starts(bytes, at: lineStart, end: lineEnd, with: connection) {
                    var k = lineStart + connection.count
                    while k < lineEnd {
                        if starts(bytes, at: k, end: lineEnd, with: closeWord) { head.close = true }
                        k += 1
                    }
                }
                lineStart = lineEnd + 2
            }
            return head
        }
        guard let parsed else { throw Malformed(description: "bad response head") }
        return parsed
    }

    /// Parses canned responses split at every byte: run by `FanFlowBench self-check`.
    static func selfCheck() -> [String] {
        let stream = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"
            + "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
            + "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nabcd\r\n3\r\nefg\r\n0\r\nX-T: 1\r\n\r\n"
            + "HTTP/1.1 204 No Content\r\n\r\n"
        let bytes = Array(stream.utf8)
        var problems: [String] = []
        for split in 1..<bytes.count {
            var parser = ResponseParser()
            var seen: [Int] = []
            for part in [Array(bytes[..<split]), Array(bytes[split...])] {
                var buffer = ByteBuffer(bytes: part)
                do { try parser.feed(&buffer) { status, _ in seen.append(status) } } catch { problems.append("split at \(split): \(error)"); break }
            }
            if seen != [200, 503, 201, 204] { problems.append("split at \(split): statuses \(seen)"); break }
        }
        var parser = ResponseParser()
        var buffer = ByteBuffer(string: "HTTP/1.1 200 OK\r\n\r\n")
        do { try parser.feed(&buffer) { _, _ in }; problems.append("a response without a length was taken") } catch {}
        var closing = ResponseParser()
        var last = ByteBuffer(string: "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\nHTTP/1.1 400 Bad Request\r\nconnection: Close\r\ncontent-length: 2\r\n\r\nno")
        var closes: [Bool] = []
        do { try closing.feed(&last) { _, close in closes.append(close) } } catch { problems.append("Connection headers: \(error)") }
        if closes != [false, true] { problems.append("Connection: close read as \(closes)") }
        return problems
    }
}
