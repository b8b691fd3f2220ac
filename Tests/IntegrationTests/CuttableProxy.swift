import Foundation
import Glibc
import Synchronization

/// A TCP forwarder on loopback whose link can be cut and restored: "the broker went away" for one
/// test's client, without stopping the RabbitMQ that other tests share. While cut, open
/// connections are closed and new ones are accepted and closed at once. Its replies (server to
/// client) can also be held back while requests still flow (``holdReplies()``): "the broker took
/// the publish but its confirm is late", "Redis ran the command but its reply was lost".
final class CuttableProxy: Sendable {
    let port: Int
    private let target: Int
    private let listener: Int32
    private let state = Mutex<(cut: Bool, holding: Bool, sockets: [Int32])>((false, false, []))

    init(targetPort: Int) throws {
        target = targetPort
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var yes: Int32 = 1
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var address = Self.loopback(port: 0)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(listener, 64) == 0 else { throw ProxyError("cannot listen: errno \(errno)") }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) }
        }
        port = Int(UInt16(bigEndian: address.sin_port))
        self.listener = listener
        let thread = Thread { [self] in acceptLoop() }
        thread.start()
    }

    struct ProxyError: Error { let message: String; init(_ m: String) { message = m } }

    static func loopback(port: Int) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return address
    }

    func cut() {
        let sockets = state.withLock { state -> [Int32] in
            state.cut = true
            defer { state.sockets = [] }
            return state.sockets
        }
        for socket in sockets { shutdown(socket, Int32(SHUT_RDWR)) }
    }

    func restore() { state.withLock { $0.cut = false } }

    func holdReplies() { state.withLock { $0.holding = true } }
    func releaseReplies() { state.withLock { $0.holding = false } }

    private func acceptLoop() {
        while true {
            let client = accept(listener, nil, nil)
            guard client >= 0 else { return }
            if state.withLock({ $0.cut }) { close(client); continue }
            let upstream = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = Self.loopback(port: target)
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(upstream, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard connected == 0 else { close(client); close(upstream); continue }
            state.withLock { $0.sockets += [client, upstream] }
            Thread { [self] in pump(from: client, to: upstream, replies: false) }.start()
            Thread { [self] in pump(from: upstream, to: client, replies: true) }.start()
        }
    }

    private func pump(from source: Int32, to destination: Int32, replies: Bool) {
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(source, $0.baseAddress, $0.count) }
            guard count > 0 else { break }
            // Held replies wait here, in order, until released (or the link is cut).
            while replies, state.withLock({ $0.holding && !$0.cut }) { usleep(5_000) }
            if state.withLock({ $0.cut }) { break }
            var offset = 0
            while offset < count {
                let written = buffer.withUnsafeBytes { write(destination, $0.baseAddress! + offset, count - offset) }
                guard written > 0 else { shutdown(source, Int32(SHUT_RDWR)); return }
                offset += written
            }
        }
        shutdown(destination, Int32(SHUT_RDWR))
    }
}
