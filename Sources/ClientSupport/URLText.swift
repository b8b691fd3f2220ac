/// Helpers for the connection URLs of the three clients.
public enum URLText {
    /// Percent-decoding that keeps text as it is where it is not valid percent-encoding, so a
    /// password with a bare `%` still works.
    public static func percentDecoded(_ text: Substring) -> String {
        var bytes: [UInt8] = []
        var utf8 = Array(text.utf8)[...]
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

    /// Splits `[user[:password]@]host[:port][/path]` (the part after the scheme).
    public static func authority(_ text: Substring, defaultPort: Int)
        -> (user: String?, password: String?, host: String, port: Int?, path: String?) {
        var rest = text
        var user: String?
        var password: String?
        if let at = rest.lastIndex(of: "@") {
            let credentials = rest[..<at]
            rest = rest[rest.index(after: at)...]
            if let colon = credentials.firstIndex(of: ":") {
                user = percentDecoded(credentials[..<colon])
                password = percentDecoded(credentials[credentials.index(after: colon)...])
            } else {
                user = percentDecoded(credentials)
            }
        }
        var path: String?
        if let slash = rest.firstIndex(of: "/") {
            path = String(rest[rest.index(after: slash)...])
            rest = rest[..<slash]
        }
        var host = String(rest)
        var port: Int? = defaultPort
        if let colon = rest.lastIndex(of: ":") {
            port = Int(rest[rest.index(after: colon)...]).flatMap { (1...65535).contains($0) ? $0 : nil }
            host = String(rest[..<colon])
        }
        return (user, password, host, port, path)
    }
}
