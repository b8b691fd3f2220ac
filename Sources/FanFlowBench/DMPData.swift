import AsyncHTTPClient
import Foundation
import NIOCore
import PostgresClient

/// The audience figures' traffic and stored data: signed WeChat webhooks of three kinds for the
/// load, single probe webhooks, and the SQL that fills the bench's own database with members,
/// identities, tags and stored events.
enum DMPRequests {
    /// What fans write: the keywords the bench's rules look for, and chatter that matches none.
    static let texts = ["新品什么时候到", "优惠券怎么用", "积分可以换什么", "我要退货", "最近的门店在哪", "活动怎么报名",
                        "转人工客服", "hello", "谢谢", "你好", "在吗", "新品有优惠吗"]
    static let menuKeys = ["MENU_SHOP", "MENU_VIP", "MENU_NEWS", "MENU_HELP"]

    /// The kind request `n` carries: 70% text messages, 15% menu clicks, 15% location reports.
    enum Kind { case text, click, location }
    static func kind(_ n: Int) -> Kind {
        switch n % 20 {
        case 0..<14: .text
        case 14..<17: .click
        default: .location
        }
    }

    /// The XML of webhook `n`: subject `o-dmp-<n % members>`. WeChat events carry no id of their
    /// own (the gateway derives it from subject, CreateTime, event and key), so CreateTime is
    /// `base - n / members`: one subject never sends two events in one second, and the ids stay
    /// distinct over the whole run when every phase counts `n` on from the last.
    static func xml(_ n: Int, members: Int, base: Int, msgBase: Int64) -> String {
        let openid = "o-dmp-\(n % members)"
        let created = base - n / members
        let head = "<xml><ToUserName><![CDATA[gh_dmp]]></ToUserName><FromUserName><![CDATA[\(openid)]]></FromUserName><CreateTime>\(created)</CreateTime>"
        switch kind(n) {
        case .text:
            return head + "<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[\(texts[(n / 20) % texts.count]) \(n)]]></Content><MsgId>\(msgBase + Int64(n))</MsgId></xml>"
        case .click:
            return head + "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[CLICK]]></Event><EventKey><![CDATA[\(menuKeys[(n / 20) % menuKeys.count])]]></EventKey></xml>"
        case .location:
            let latitude = 22 + (n / 20) % 17, precision = (n / 20) % 250
            return head + "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[LOCATION]]></Event><Latitude>\(latitude).137466</Latitude><Longitude>113.352425</Longitude><Precision>\(precision).000000</Precision></xml>"
        }
    }

    static func path(app: String, token: String, timestamp: String, nonce: String) -> String {
        "/wechat/\(app)?signature=\(Signing.wechat([token, timestamp, nonce]))&timestamp=\(timestamp)&nonce=\(nonce)"
    }

    /// Requests `first..<first+count`, each with its own nonce, signed before the timed phase.
    static func webhooks(app: String, token: String, first: Int, count: Int, members: Int, base: Int, msgBase: Int64, host: String) -> [WireRequest] {
        let timestamp = String(Int(Date().timeIntervalSince1970))
        return (first..<(first + count)).map { n in
            .post(path(app: app, token: token, timestamp: timestamp, nonce: String(1_000_000_000 + n)), host: host,
                  headers: [("Content-Type", "text/xml")], body: xml(n, members: members, base: base, msgBase: msgBase))
        }
    }

    /// One text message from `openid`, sent now; answers the HTTP status.
    static func send(gateway: String, app: String, token: String, openid: String, content: String, msgID: Int64, nonce: Int) async throws -> Int {
        let timestamp = String(Int(Date().timeIntervalSince1970))
        let xml = "<xml><ToUserName><![CDATA[gh_dmp]]></ToUserName><FromUserName><![CDATA[\(openid)]]></FromUserName><CreateTime>\(timestamp)</CreateTime>"
            + "<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[\(content)]]></Content><MsgId>\(msgID)</MsgId></xml>"
        var request = HTTPClientRequest(url: gateway + path(app: app, token: token, timestamp: timestamp, nonce: String(nonce)))
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "text/xml")
        request.body = .bytes(ByteBuffer(string: xml))
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
        _ = try await response.body.collect(upTo: 1 << 20)
        return Int(response.status.code)
    }
}

/// Bulk data in the bench's database, made by PostgreSQL itself (`generate_series`), in slices so
/// progress shows and no statement runs for long.
enum DMPData {
    static let appA = "wx-dmp-a", appB = "wx-dmp-b", appC = "ali-dmp-c"

    /// Tags the generated members hold: code, share of members, source, and how rows expire
    /// (`none`; `future`: a rule's window, ending within 30 days; `mixed`: 90% future, 10% already
    /// past, which every reader must ignore).
    static let tagSpread: [(code: String, share: Double, source: String, expiry: String)] = [
        ("dmp-vip", 0.15, "manual", "none"),
        ("dmp-active", 0.35, "rule:dmp-active", "mixed"),
        ("dmp-churn", 0.10, "manual", "none"),
        ("dmp-new", 0.20, "rule:dmp-new", "future"),
        ("dmp-buyer", 0.25, "manual", "none"),
        ("dmp-kol", 0.02, "manual", "none"),
    ]

    static func connect() async throws -> PostgresConnection {
        try await PostgresConnection(url: try environment("FANFLOW_DATABASE_URL"),
                                     timeouts: PostgresTimeouts(connectSeconds: 5, statementMilliseconds: 3_600_000))
    }

    static func log(_ text: String) { FileHandle.standardError.write(Data("[bench] \(text)\n".utf8)) }

    /// Members with points, growth and the level that growth gives (the standard level table:
    /// registered, bronze from 100, silver from 4000, gold from 10000), an identity on app A for
    /// every member, on B for 70%, on C for the other 30% and a quarter of the rest (2 or 3 apps
    /// each), and the tags of ``tagSpread``. Answers the seconds it took.
    static func members(_ count: Int, on db: PostgresConnection) async throws -> Double {
        let started = now()
        let slice = 100_000
        var done = 0
        let tags = tagSpread.map { "('\($0.code)', \($0.share), '\($0.source)', '\($0.expiry)')" }.joined(separator: ", ")
        try await db.execute("SELECT setseed(0.42)")
        while done < count {
            let n = min(slice, count - done)
            try await db.query("""
                WITH m AS (
                    INSERT INTO members (points, growth, level)
                    SELECT p, g, CASE WHEN g >= 10000 THEN 'gold' WHEN g >= 4000 THEN 'silver' WHEN g >= 100 THEN 'bronze' ELSE 'registered' END
                    FROM (SELECT floor(5000 * random() ^ 2)::bigint AS p, floor(15000 * random() ^ 3)::bigint AS g FROM generate_series(1, $1)) s
                    RETURNING id
                ), a AS (
                    INSERT INTO member_identities (platform, app, openid, member_id) SELECT 'wechat', '\(appA)', 'oa' || id, id FROM m RETURNING 1
                ), b AS (
                    INSERT INTO member_identities (platform, app, openid, member_id) SELECT 'wechat', '\(appB)', 'ob' || id, id FROM m WHERE id % 10 < 7 RETURNING 1
                ), c AS (
                    INSERT INTO member_identities (platform, app, openid, member_id) SELECT 'alipay', '\(appC)', 'oc' || id, id FROM m
                    WHERE id % 10 >= 7 OR id % 4 = 0 RETURNING 1
                ), t AS (
                    INSERT INTO member_tags (member_id, tag, source, created_at, expires_at)
                    SELECT m.id, tg.code, tg.source, now() - random() * interval '90 days',
                           CASE tg.expiry WHEN 'none' THEN NULL
                                          WHEN 'future' THEN now() + (1 + random() * 719) * interval '1 hour'
                                          ELSE CASE WHEN random() < 0.1 THEN now() - random() * interval '2 days'
                                                    ELSE now() + (1 + random() * 719) * interval '1 hour' END END
                    FROM m CROSS JOIN (VALUES \(tags)) AS tg (code, share, source, expiry)
                    WHERE abs(hashtext(tg.code || m.id::text)) % 10000 < tg.share * 10000
                    RETURNING 1
                )
                SELECT (SELECT count(*) FROM a) + (SELECT count(*) FROM b) + (SELECT count(*) FROM c) AS identities, (SELECT count(*) FROM t) AS tags
                """, [n])
            done += n
            if done % 500_000 == 0 || done == count { log("members: \(done) of \(count) (\(Format.int(now() - started)) s)") }
        }
        try await db.execute("VACUUM ANALYZE members")
        try await db.execute("VACUUM ANALYZE member_identities")
        try await db.execute("VACUUM ANALYZE member_tags")
        return now() - started
    }

    /// The kinds of stored history and their shares (of 20): 40% text messages, 15% menu clicks,
    /// 10% location reports, 5% follows, 10% QR scans, 10% menu links, 10% H5 page views whose
    /// subject only claims its openid (unverified: no rule counts them).
    static let storedKinds = ["message.text", "click", "location", "subscribe", "scan", "view", "page_view"]

    /// `count` events over the 30 days before `end` (seconds since the epoch), in time order as a
    /// store fills, subjects spread over the members with ids `firstMember..<firstMember+span`
    /// (their app A openids). Answers the seconds it took.
    static func events(_ count: Int, end: Double, firstMember: Int64, span: Int64, on db: PostgresConnection) async throws -> Double {
        let started = now()
        let slice = 500_000
        let step = 30 * 86_400 / Double(count)
        var done = 0
        let texts = DMPRequests.texts.map { "'\($0)'" }.joined(separator: ",")
        while done < count {
            let n = min(slice, count - done)
            try await db.query("""
                INSERT INTO events (id, platform, app, kind, openid, occurred_at, received_at, attributes, stored_at, verified)
                SELECT 'wechat:dmp-' || lpad(g::text, 10, '0'),
                       CASE WHEN k >= 18 THEN 'h5' ELSE 'wechat' END,
                       CASE WHEN k >= 18 THEN 'site-dmp' ELSE '\(appA)' END,
                       CASE WHEN k < 8 THEN 'message.text' WHEN k < 11 THEN 'click' WHEN k < 13 THEN 'location' WHEN k < 14 THEN 'subscribe'
                            WHEN k < 16 THEN 'scan' WHEN k < 18 THEN 'view' ELSE 'page_view' END,
                       'oa' || ($3::bigint + (g::bigint * 2654435761) % $4::bigint),
                       t, t + interval '1 second',
                       CASE WHEN k < 8 THEN jsonb_build_object('content', (ARRAY[\(texts)])[(1 + (g / 20) % \(DMPRequests.texts.count))::int] || ' ' || g, 'msgId', g::text)
                            WHEN k < 11 THEN jsonb_build_object('eventKey', (ARRAY['MENU_SHOP','MENU_VIP','MENU_NEWS','MENU_HELP'])[(1 + (g / 20) % 4)::int])
                            WHEN k < 13 THEN jsonb_build_object('latitude', 22 + (g / 20) % 17, 'longitude', 113.35, 'precision', (g / 20) % 250)
                            WHEN k < 16 THEN jsonb_build_object('scene', 'qr_' || (g / 20) % 50)
                            WHEN k < 18 THEN jsonb_build_object('url', 'https://brand.example/p/' || (g / 20) % 500)
                            ELSE jsonb_build_object('url', 'https://brand.example/h5/' || (g / 20) % 500, 'title', 'Spring sale') END,
                       t + interval '2 seconds', k < 18
                FROM (SELECT g, (g % 20)::int AS k, to_timestamp($5::float8 - 30 * 86400 + (g - 1) * $6::float8) AS t
                      FROM generate_series($1::bigint, $2::bigint) g) s
                """, [Int64(done + 1), Int64(done + n), firstMember, span, end, step])
            done += n
            if done % 1_000_000 == 0 || done == count {
                log("events: \(done) of \(count) (\(Format.int(now() - started)) s, \(Format.int(Double(done) / (now() - started)))/s)")
            }
        }
        try await db.execute("VACUUM ANALYZE events")
        return now() - started
    }
}
