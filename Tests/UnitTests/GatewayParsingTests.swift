import Contracts
import Foundation
@testable import Gateway
import Testing

@Suite("Gateway parsing and normalization")
struct GatewayParsingTests {
    @Test("XML: CDATA, entities, nesting; DOCTYPE, entities and oversized fields refused")
    func xml() throws {
        let doc = try XMLTree.parse("""
            <?xml version="1.0"?><xml><A><![CDATA[x<y]]></A><B>1 &lt; 2 &amp; &#x4E2D;</B><C><D>d</D></C><E/></xml>
            """)
        #expect(doc.value("A") == "x<y")
        #expect(doc.value("B") == "1 < 2 & 中")
        #expect(doc["C"]?.value("D") == "d")
        #expect(doc.value("E") == "")
        #expect(throws: XMLProblem.self) {
            try XMLTree.parse(#"<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]><xml>&lol2;</xml>"#)
        }
        #expect(throws: XMLProblem.self) { try XMLTree.parse("<xml>&custom;</xml>") }
        #expect(throws: XMLProblem.self) { try XMLTree.parse("<xml><a></b></xml>") }
        #expect(throws: XMLProblem.self) { try XMLTree.parse("<xml><a>") }
        #expect(throws: XMLProblem.self) { try XMLTree.parse("<xml/><extra/>") }
        #expect(throws: XMLProblem.self) { try XMLTree.parse("<xml><A>" + String(repeating: "x", count: 20_000) + "</A></xml>") }
        #expect(throws: XMLProblem.self) { try XMLTree.parse(String(repeating: "<a>", count: 20) + String(repeating: "</a>", count: 20)) }
    }

    static func wechat(_ fields: String) throws -> Envelope {
        try WeChatEvents.envelope(try XMLTree.parse("<xml><ToUserName><![CDATA[gh_1]]></ToUserName>" + fields + "</xml>"),
                                  app: "wx1", receivedAt: Date(timeIntervalSince1970: 1_700_000_100))
    }

    @Test("WeChat: every message and event kind normalizes to its kind and typed attributes")
    func wechatKinds() throws {
        let base = "<FromUserName>o1</FromUserName><CreateTime>1700000000</CreateTime>"
        let subscribe = try Self.wechat(base + "<MsgType>event</MsgType><Event>subscribe</Event><EventKey>qrscene_123</EventKey><Ticket>T</Ticket>")
        #expect(subscribe.kind == .subscribe)
        #expect(subscribe.attributes["scene"] == .string("123"))
        #expect(subscribe.attributes["ticket"] == .string("T"))
        #expect(subscribe.subject.openid == "o1")
        #expect(subscribe.occurredAt == Date(timeIntervalSince1970: 1_700_000_000))
        #expect(subscribe.routingKey == "wechat.subscribe")
        let plainSubscribe = try Self.wechat(base + "<MsgType>event</MsgType><Event>subscribe</Event>")
        #expect(plainSubscribe.attributes["scene"] == nil)
        #expect(try Self.wechat(base + "<MsgType>event</MsgType><Event>unsubscribe</Event>").kind == .unsubscribe)
        let scan = try Self.wechat(base + "<MsgType>event</MsgType><Event>SCAN</Event><EventKey>123</EventKey>")
        #expect(scan.kind == .scan && scan.attributes["scene"] == .string("123"))
        #expect(try Self.wechat(base + "<MsgType>event</MsgType><Event>CLICK</Event><EventKey>K</EventKey>").attributes["eventKey"] == .string("K"))
        #expect(try Self.wechat(base + "<MsgType>event</MsgType><Event>VIEW</Event><EventKey>https://x</EventKey>").attributes["url"] == .string("https://x"))
        let location = try Self.wechat(base + "<MsgType>event</MsgType><Event>LOCATION</Event><Latitude>23.1</Latitude><Longitude>113.3</Longitude><Precision>119.3</Precision>")
        #expect(location.kind == .location && location.attributes["latitude"] == .number(23.1))
        let finish = try Self.wechat(base + "<MsgType>event</MsgType><Event>TEMPLATESENDJOBFINISH</Event><MsgID>200163836</MsgID><Status>success</Status>")
        #expect(finish.kind == .templateSendJobFinish && finish.attributes["status"] == .string("success"))
        let other = try Self.wechat(base + "<MsgType>event</MsgType><Event>user_get_card</Event><CardId>c1</CardId>")
        #expect(other.kind.rawValue == "wechat.event.user_get_card")
        #expect(other.attributes["raw"]?.object?["CardId"] == .string("c1"))

        let text = try Self.wechat(base + "<MsgType>text</MsgType><Content>hi</Content><MsgId>1234567890123456</MsgId>")
        #expect(text.kind == .text && text.attributes["content"] == .string("hi"))
        #expect(try Self.wechat(base + "<MsgType>image</MsgType><PicUrl>u</PicUrl><MediaId>m</MediaId><MsgId>1</MsgId>").kind == .image)
        #expect(try Self.wechat(base + "<MsgType>voice</MsgType><MediaId>m</MediaId><Format>amr</Format><MsgId>2</MsgId>").kind == .voice)
        #expect(try Self.wechat(base + "<MsgType>video</MsgType><MediaId>m</MediaId><ThumbMediaId>t</ThumbMediaId><MsgId>3</MsgId>").kind == .video)
        let place = try Self.wechat(base + "<MsgType>location</MsgType><Location_X>23.13</Location_X><Location_Y>113.35</Location_Y><Scale>20</Scale><Label>L</Label><MsgId>4</MsgId>")
        #expect(place.kind == .locationMessage && place.attributes["longitude"] == .number(113.35))
        #expect(try Self.wechat(base + "<MsgType>link</MsgType><Title>t</Title><Url>u</Url><MsgId>5</MsgId>").kind == .link)
        #expect(throws: GatewayError.self) { try Self.wechat("<CreateTime>1</CreateTime><MsgType>text</MsgType>") }
    }

    @Test("WeChat ids: deterministic per event, never merging two people or two events in one second")
    func wechatIDs() throws {
        let scanBy = { (user: String, key: String, event: String) in
            try Self.wechat("<FromUserName>\(user)</FromUserName><CreateTime>1700000000</CreateTime><MsgType>event</MsgType><Event>\(event)</Event><EventKey>\(key)</EventKey>").id
        }
        #expect(try scanBy("alice", "42", "SCAN") == scanBy("alice", "42", "SCAN"))
        #expect(try scanBy("alice", "42", "SCAN") != scanBy("bob", "42", "SCAN"))
        #expect(try scanBy("alice", "42", "SCAN") != scanBy("alice", "43", "SCAN"))
        #expect(try scanBy("alice", "42", "SCAN") != scanBy("alice", "42", "CLICK"))
        let message = "<FromUserName>o</FromUserName><CreateTime>1700000000</CreateTime><MsgType>text</MsgType><Content>a</Content><MsgId>99</MsgId>"
        #expect(try Self.wechat(message).id == Self.wechat(message).id)
        #expect(try Self.wechat(message).id.hasPrefix("wechat:"))
    }

    @Test("/v1/events validation: each bad event is rejected with its reason")
    func serverEventValidation() throws {
        let now = Date()
        let time = RFC3339.format(now.addingTimeInterval(-60))
        func check(_ json: String) -> Result<Envelope, ServerEvents.Rejection> {
            let value = try! JSONDecoder().decode(JSONValue.self, from: Data(json.utf8))
            return ServerEvents.validate(value, serverApp: "shop", receivedAt: now)
        }
        let good = check(#"{"id":"o-1","kind":"mall.order_paid","member":{"platform":"wechat","app":"wx1","openid":"o1"},"occurredAt":"\#(time)","attributes":{"orderId":"A1","amount":12900}}"#)
        guard case .success(let envelope) = good else { Issue.record("expected success, got \(good)"); return }
        #expect(envelope.platform == .wechat && envelope.app == "wx1" && envelope.kind == .orderPaid)
        #expect(envelope.attributes["sourceEventId"] == .string("o-1"))
        #expect(envelope.routingKey == "wechat.mall.order_paid")

        func reason(_ json: String) -> String? {
            if case .failure(let rejection) = check(json) { return rejection.reason }
            return nil
        }
        #expect(reason(#"{"id":"x","kind":"community.post","occurredAt":"\#(time)"}"#) == "member is required")
        #expect(reason(#"{"id":"x","kind":"community.post","member":{"platform":"wechat","app":"wx1","openid":"o"},"occurredAt":"yesterday"}"#)?.contains("occurredAt") == true)
        #expect(reason(#"{"id":"x","kind":"mall.order_paid","member":{"platform":"wechat","app":"wx1","openid":"o"},"occurredAt":"\#(time)","attributes":{"orderId":"A","amount":"12"}}"#)?.contains("amount") == true)
        #expect(reason(#"{"id":"x","kind":"Community Post","member":{"platform":"wechat","app":"wx1","openid":"o"},"occurredAt":"\#(time)"}"#)?.contains("kind") == true)
        #expect(reason(#"{"id":"x","kind":"community.post","member":{"platform":"myspace","app":"wx1","openid":"o"},"occurredAt":"\#(time)"}"#)?.contains("platform") == true)
        #expect(reason(#"{"id":"x","kind":"community.post","member":{"platform":"wechat","app":"wx1","openid":7},"occurredAt":"\#(time)"}"#)?.contains("openid") == true)
    }

    @Test("Alipay forms: raw percent-decoded bytes kept, GBK text converted to UTF-8")
    func alipayForm() throws {
        // "中文" in GBK is D6 D0 CE C4; Alipay signs those bytes, we read them as text.
        let form = try #require(FormBody.parse(Array("charset=GBK&biz_content=%D6%D0%CE%C4+ok&empty=&sign=a%2Bb".utf8)))
        #expect(form.map(\.name) == ["charset", "biz_content", "empty", "sign"])
        #expect(form[1].value == [0xD6, 0xD0, 0xCE, 0xC4, 0x20, 0x6F, 0x6B])
        #expect(form[3].value == Array("a+b".utf8))
        #expect(Charset.utf8(form[1].value, from: "GBK") == "中文 ok")
        #expect(Charset.utf8(Array("中文".utf8), from: "UTF-8") == "中文")
        #expect(Charset.utf8([0xD6], from: "GBK") == nil)
        #expect(Charset.utf8([0x41], from: "EBCDIC") == nil)
        #expect(FormBody.parse(Array("a=%G1".utf8)) == nil)
        #expect(FormBody.parse(Array("a=%4".utf8)) == nil)
    }

    @Test("Weibo created_at parses with its offset")
    func weiboTime() {
        #expect(WeiboEvents.parseTime("Mon Jul 16 18:09:20 +0800 2012") == RFC3339.parse("2012-07-16T10:09:20Z"))
        #expect(WeiboEvents.parseTime("yesterday") == nil)
    }

    @Test("Beacon rate limits: per site and per IP buckets, a burst of two seconds")
    func beaconLimits() {
        let limits = BeaconLimits(perSite: 100, perIP: 10)
        #expect(limits.take(site: "s", ip: "1", cost: 20) == .allowed)
        #expect(limits.take(site: "s", ip: "1", cost: 1) == .ipLimited)
        // The site's bucket holds 200 (two seconds at 100/s): nine more IPs fill it.
        for ip in 2...10 { #expect(limits.take(site: "s", ip: "\(ip)", cost: 20) == .allowed) }
        #expect(limits.take(site: "s", ip: "11", cost: 20) == .siteLimited)
        #expect(limits.take(site: "other", ip: "11", cost: 20) == .allowed)
        #expect(BeaconLimits(perSite: 0, perIP: 0).take(site: "s", ip: "1", cost: 1_000_000) == .allowed)
    }
}

extension JSONValue {
    var object: [String: JSONValue]? { if case .object(let o) = self { return o } else { return nil } }
}
