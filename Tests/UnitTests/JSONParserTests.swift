import Contracts
import Foundation
import Testing

@Suite("JSONValue.parse: the same values JSONDecoder gives, without its cost")
struct JSONParserTests {
    static func foundation(_ text: String) -> JSONValue? { try? JSONDecoder().decode(JSONValue.self, from: Data(text.utf8)) }

    @Test("side by side with JSONDecoder", arguments: [
        #"{"a":"b","n":1,"neg":-42,"f":1.5,"t":true,"no":false,"nil":null,"list":[1,"x",[],{}],"o":{"k":{"deep":[null]}}}"#,
        #"  [ 1 , 2.25 , -0 , 0 , 1e3 , 1E-2 , 2.5e+2 , 1.0 , -1.0 , 123456789012 ]  "#,
        #"[9223372036854775807, -9223372036854775808, 9223372036854775808, 12345678901234567890, 9007199254740993.0]"#,
        #"{"esc":"q\"b\\s\/n\nr\rt\tb\bf\f","u":"\u00e9\u4e2d\ud83d\ude00","raw":"中文 é 😀"}"#,
        #"{"dup":1,"dup":2}"#, "[1,]", #"{"a":1,}"#, "[1,,]", "[,]",
        #""just a string""#, "42", "true", "null",
        // Refused by both:
        "", "{", "01", "-", "1.", ".5", "1e", "+1", "[1 2]", "{\"a\" 1}", "{a:1}", "tru", "nul",
        "\"unterminated", "\"bad \\x escape\"", "\"\\ud800\"", "\"\\udc00\"", "\"tab\there\"", "1e400", "[1] x", "'single'",
    ])
    func matchesFoundation(text: String) {
        let ours = try? JSONValue.parse(Array(text.utf8))
        #expect(ours == Self.foundation(text), "\(text)")
    }

    @Test("invalid UTF-8 is refused, as JSONDecoder refuses it")
    func invalidUTF8() {
        let bytes: [UInt8] = [0x22, 0xC3, 0x28, 0x22]
        #expect(throws: JSONParseError.self) { try JSONValue.parse(bytes) }
        #expect((try? JSONDecoder().decode(JSONValue.self, from: Data(bytes))) == nil)
    }

    @Test("nesting deeper than 512 is refused without exhausting the stack; 512 is read")
    func depth() throws {
        let deep = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        #expect(throws: JSONParseError.self) { try JSONValue.parse(Array(deep.utf8)) }
        let limit = String(repeating: "[", count: 512) + String(repeating: "]", count: 512)
        #expect(throws: Never.self) { try JSONValue.parse(Array(limit.utf8)) }
    }

    @Test("an envelope decodes to what JSONDecoder decodes, and bad ones are refused naming the field")
    func envelopes() throws {
        let json = #"{"app":"wx1","attributes":{"amount":25900,"n":1.5,"scene":"expo","tags":["a"]},"id":"e1","kind":"subscribe","occurredAt":"2026-12-01T10:00:00+08:00","platform":"wechat","receivedAt":"2026-12-01T02:00:00.123Z","schema":"fanflow.event/1","subject":{"openid":"o1","unionid":null}}"#
        let ours = try Envelope.decode(Array(json.utf8))
        #expect(ours == (try Envelope.decodedWithFoundation(Array(json.utf8))))
        #expect(ours.subject.unionid == nil)
        #expect(try Envelope.decode(ours.encoded()) == ours)
        for (broken, problem) in [
            (json.replacingOccurrences(of: #""platform":"wechat""#, with: #""platform":"myspace""#), "unknown platform"),
            (json.replacingOccurrences(of: #""id":"e1","#, with: ""), "id must be a string"),
            (json.replacingOccurrences(of: #""occurredAt":"2026-12-01T10:00:00+08:00""#, with: #""occurredAt":"yesterday""#),
             "occurredAt is not an RFC 3339 time"),
            (json.replacingOccurrences(of: #""openid":"o1""#, with: #""openid":7"#), "subject.openid must be a string"),
        ] {
            #expect(throws: Envelope.DecodingProblem.invalid(problem)) { try Envelope.decode(Array(broken.utf8)) }
            #expect((try? Envelope.decodedWithFoundation(Array(broken.utf8))) == nil)
        }
    }
}
