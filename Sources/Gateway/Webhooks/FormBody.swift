import Glibc
import Platforms

/// `application/x-www-form-urlencoded` parsed to raw bytes: values stay in the sender's charset
/// (Alipay signs GBK bytes), and are converted only where text is needed.
enum FormBody {
    static func parse(_ body: [UInt8]) -> [(name: String, value: [UInt8])]? {
        var out: [(String, [UInt8])] = []
        for pair in body.split(separator: UInt8(ascii: "&"), omittingEmptySubsequences: true) {
            let parts = pair.split(separator: UInt8(ascii: "="), maxSplits: 1, omittingEmptySubsequences: false)
            guard let name = decode(parts[0]) else { return nil }
            guard let value = parts.count > 1 ? decode(parts[1]) : [] else { return nil }
            out.append((String(decoding: name, as: UTF8.self), value))
        }
        return out
    }

    static func decode(_ bytes: ArraySlice<UInt8>) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var index = bytes.startIndex
        while index < bytes.endIndex {
            let byte = bytes[index]
            if byte == UInt8(ascii: "+") {
                out.append(0x20)
            } else if byte == UInt8(ascii: "%") {
                guard index + 2 < bytes.endIndex, let value = Bytes.fromHex(String(decoding: bytes[(index + 1)...(index + 2)], as: UTF8.self)) else {
                    return nil
                }
                out += value
                index += 2
            } else {
                out.append(byte)
            }
            index += 1
        }
        return out
    }
}

/// Text in a legacy Chinese charset (GBK, GB2312, GB18030) to UTF-8, through glibc's iconv.
enum Charset {
    static func utf8(_ bytes: [UInt8], from charset: String) -> String? {
        let name = charset.uppercased()
        if name.isEmpty || name == "UTF-8" || name == "UTF8" {
            return String(validating: bytes, as: UTF8.self)
        }
        guard ["GBK", "GB2312", "GB18030"].contains(name) else { return nil }
        // GB18030 is a superset of GBK and GB2312.
        let converter = iconv_open("UTF-8", "GB18030")
        guard converter != iconv_t(bitPattern: -1) else { return nil }
        defer { iconv_close(converter) }
        var input = bytes
        var output = [UInt8](repeating: 0, count: bytes.count * 2 + 16)
        let written: Int? = input.withUnsafeMutableBufferPointer { inBuffer in
            output.withUnsafeMutableBufferPointer { outBuffer in
                var inPointer: UnsafeMutablePointer<CChar>? = UnsafeMutableRawPointer(inBuffer.baseAddress)?.assumingMemoryBound(to: CChar.self)
                var outPointer: UnsafeMutablePointer<CChar>? = UnsafeMutableRawPointer(outBuffer.baseAddress)?.assumingMemoryBound(to: CChar.self)
                var inLeft = inBuffer.count
                var outLeft = outBuffer.count
                guard iconv(converter, &inPointer, &inLeft, &outPointer, &outLeft) != -1, inLeft == 0 else { return nil }
                return outBuffer.count - outLeft
            }
        }
        guard let written else { return nil }
        return String(validating: output[0..<written], as: UTF8.self)
    }
}
