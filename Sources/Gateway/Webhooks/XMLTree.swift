/// A small, strict XML reader for platform callbacks (WeChat, Alipay): elements, text, CDATA and
/// the five predefined entities plus numeric character references.
///
/// It refuses DOCTYPE and entity declarations outright, so entity-expansion ("billion laughs") and
/// external-entity attacks have nothing to work with, and it bounds depth, element count and the
/// length of every text, so an oversized field is refused rather than buffered.
public struct XMLElement: Sendable, Equatable {
    public var name: String
    public var text: String
    public var children: [XMLElement]

    public subscript(child: String) -> XMLElement? { children.first { $0.name == child } }
    /// The text of a direct child, if present.
    public func value(_ child: String) -> String? { self[child]?.text }
}

public struct XMLProblem: Error, Equatable, Sendable, CustomStringConvertible {
    public let message: String
    public let offset: Int
    public var description: String { "\(message) at byte \(offset)" }
}

public struct XMLLimits: Sendable {
    public var maxDepth = 8
    public var maxElements = 512
    public var maxTextBytes = 16 * 1024
    public init() {}
}

public enum XMLTree {
    public static func parse(_ bytes: [UInt8], limits: XMLLimits = XMLLimits()) throws(XMLProblem) -> XMLElement {
        var reader = Reader(bytes: bytes, limits: limits)
        return try reader.document()
    }

    public static func parse(_ text: String, limits: XMLLimits = XMLLimits()) throws(XMLProblem) -> XMLElement {
        try parse(Array(text.utf8), limits: limits)
    }

    /// Escapes text for element content.
    public static func escape(_ text: String) -> String {
        var out = ""
        out.reserveCapacity(text.utf8.count)
        for c in text.unicodeScalars {
            switch c {
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "&": out += "&amp;"
            default: out.unicodeScalars.append(c)
            }
        }
        return out
    }

    /// CDATA content; a `]]>` inside is split across two sections.
    public static func cdata(_ text: String) -> String {
        "<![CDATA[" + text.replacingOccurrences(of: "]]>", with: "]]]]><![CDATA[>") + "]]>"
    }
}

private struct Reader {
    let bytes: [UInt8]
    let limits: XMLLimits
    var index = 0
    var elements = 0

    init(bytes: [UInt8], limits: XMLLimits) {
        self.bytes = bytes
        self.limits = limits
    }

    func fail(_ message: String) -> XMLProblem { XMLProblem(message: message, offset: index) }

    func starts(with literal: String) -> Bool {
        let utf8 = Array(literal.utf8)
        guard index + utf8.count <= bytes.count else { return false }
        return bytes[index..<(index + utf8.count)].elementsEqual(utf8)
    }

    mutating func skipSpace() {
        while index < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[index]) { index += 1 }
    }

    /// Skips to just after `terminator`, or fails.
    mutating func skip(past terminator: String) throws(XMLProblem) {
        let t = Array(terminator.utf8)
        while index + t.count <= bytes.count {
            if bytes[index..<(index + t.count)].elementsEqual(t) { index += t.count; return }
            index += 1
        }
        throw fail("unterminated \(terminator)")
    }

    mutating func document() throws(XMLProblem) -> XMLElement {
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { index = 3 }
        skipSpace()
        try misc()
        guard index < bytes.count, bytes[index] == UInt8(ascii: "<") else { throw fail("expected a root element") }
        let root = try element(depth: 1)
        skipSpace()
        try misc()
        guard index == bytes.count else { throw fail("content after the root element") }
        return root
    }

    /// Prolog, comments and processing instructions between top-level items; DOCTYPE is refused.
    mutating func misc() throws(XMLProblem) {
        while true {
            if starts(with: "<?") {
                try skip(past: "?>")
            } else if starts(with: "<!--") {
                try skip(past: "-->")
            } else if starts(with: "<!") {
                throw fail("DOCTYPE and entity declarations are not accepted")
            } else {
                return
            }
            skipSpace()
        }
    }

    mutating func name() throws(XMLProblem) -> String {
        let start = index
        while index < bytes.count {
            let c = bytes[index]
            let isNameByte = c >= 0x80 || (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A)
                || c == UInt8(ascii: "_") || c == UInt8(ascii: "-") || c == UInt8(ascii: ".") || c == UInt8(ascii: ":")
            guard isNameByte else { break }
            index += 1
        }
        guard index > start, index - start <= 128 else { throw fail("bad element name") }
        return String(decoding: bytes[start..<index], as: UTF8.self)
    }

    mutating func element(depth: Int) throws(XMLProblem) -> XMLElement {
        guard depth <= limits.maxDepth else { throw fail("elements nested deeper than \(limits.maxDepth)") }
        elements += 1
        guard elements <= limits.maxElements else { throw fail("more than \(limits.maxElements) elements") }
        index += 1  // "<"
        let tag = try name()
        // Attributes are skipped (callbacks carry none we use), but quoted values are honoured.
        while true {
            skipSpace()
            guard index < bytes.count else { throw fail("unterminated start tag <\(tag)>") }
            if bytes[index] == UInt8(ascii: "/") {
                guard index + 1 < bytes.count, bytes[index + 1] == UInt8(ascii: ">") else { throw fail("bad empty tag") }
                index += 2
                return XMLElement(name: tag, text: "", children: [])
            }
            if bytes[index] == UInt8(ascii: ">") { index += 1; break }
            _ = try name()
            skipSpace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: "=") else { throw fail("bad attribute") }
            index += 1
            skipSpace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") || bytes[index] == UInt8(ascii: "'") else {
                throw fail("unquoted attribute value")
            }
            let quote = bytes[index]
            index += 1
            while index < bytes.count, bytes[index] != quote {
                if bytes[index] == UInt8(ascii: "<") { throw fail("'<' in attribute value") }
                index += 1
            }
            guard index < bytes.count else { throw fail("unterminated attribute value") }
            index += 1
        }

        var text: [UInt8] = []
        var children: [XMLElement] = []
        while true {
            guard index < bytes.count else { throw fail("unterminated element <\(tag)>") }
            if starts(with: "</") {
                index += 2
                let closing = try name()
                guard closing == tag else { throw fail("</\(closing)> closes <\(tag)>") }
                skipSpace()
                guard index < bytes.count, bytes[index] == UInt8(ascii: ">") else { throw fail("bad end tag") }
                index += 1
                break
            } else if starts(with: "<![CDATA[") {
                index += 9
                let start = index
                try skip(past: "]]>")
                text += bytes[start..<(index - 3)]
            } else if starts(with: "<!--") {
                try skip(past: "-->")
            } else if starts(with: "<!") || starts(with: "<?") {
                throw fail("declarations are not accepted inside elements")
            } else if bytes[index] == UInt8(ascii: "<") {
                children.append(try element(depth: depth + 1))
            } else if bytes[index] == UInt8(ascii: "&") {
                text += try reference()
            } else {
                text.append(bytes[index])
                index += 1
            }
            guard text.count <= limits.maxTextBytes else { throw fail("text of <\(tag)> longer than \(limits.maxTextBytes) bytes") }
        }
        var content = String(decoding: text, as: UTF8.self)
        if !children.isEmpty { content = content.trimmingWhitespace() }
        return XMLElement(name: tag, text: content, children: children)
    }

    /// `&lt;` and friends and `&#NN;`/`&#xNN;`; any other entity is refused (none can be declared).
    mutating func reference() throws(XMLProblem) -> [UInt8] {
        let start = index
        guard let semicolon = bytes[index...].prefix(12).firstIndex(of: UInt8(ascii: ";")) else { throw fail("bad entity reference") }
        let body = String(decoding: bytes[(start + 1)..<semicolon], as: UTF8.self)
        index = semicolon + 1
        switch body {
        case "lt": return [UInt8(ascii: "<")]
        case "gt": return [UInt8(ascii: ">")]
        case "amp": return [UInt8(ascii: "&")]
        case "quot": return [UInt8(ascii: "\"")]
        case "apos": return [UInt8(ascii: "'")]
        default:
            var value: UInt32?
            if body.hasPrefix("#x") || body.hasPrefix("#X") { value = UInt32(body.dropFirst(2), radix: 16) }
            else if body.hasPrefix("#") { value = UInt32(body.dropFirst(), radix: 10) }
            guard let value, value != 0, let scalar = Unicode.Scalar(value) else {
                index = start
                throw fail("unknown entity &\(body);")
            }
            return Array(String(Character(scalar)).utf8)
        }
    }
}

extension String {
    func trimmingWhitespace() -> String {
        let scalars = unicodeScalars
        guard let first = scalars.firstIndex(where: { !$0.properties.isWhitespace }),
              let last = scalars.lastIndex(where: { !$0.properties.isWhitespace }) else { return "" }
        return String(scalars[first...last])
    }
}
