import Contracts
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Loyalty
import PostgresClient
import Testing

/// Saved segments over real HTTP, on a database of the test's own: its whole population is known,
/// so every reach is checked exactly.
@Suite("Segments API")
struct SegmentTests {
    static func call(_ client: any TestClientProtocol, _ method: HTTPRequest.Method, _ uri: String, _ body: String? = nil)
        async throws -> (HTTPResponse.Status, [String: Any]) {
        try await client.execute(uri: uri, method: method, headers: GatewayHarness.adminHeaders, body: body.map { ByteBuffer(string: $0) }) { response in
            (response.status, GatewayHarness.json(response))
        }
    }

    static func error(_ json: [String: Any]) -> (code: String?, path: String?) {
        let error = json["error"] as? [String: Any]
        return (error?["code"] as? String, error?["path"] as? String)
    }

    /// Members as created: m1…m6, m4 merged into m1.
    struct Population {
        let m1: Int64, m2: Int64, m3: Int64, m4: Int64, m5: Int64, m6: Int64
        var unmerged: [Int64] { [m1, m2, m3, m5, m6] }
    }

    /// m1 silver, 500 points, vip, on app-a, 2 purchases this week (and m4's, merged into it: 3)
    /// m2 registered, 50 points, vip expired yesterday, on app-b, 1 purchase this week
    /// m3 gold, 5000 points, vip until tomorrow, an unverified purchase this week and one 40 days ago
    /// m4 gold, merged into m1; still has a vip row and an app-a identity of its own (must not count)
    /// m5 bronze, 0 points, on app-a, 2 purchases this week by openid
    /// m6 no level, 2000 points, newsletter, a page view this week
    static func populate(_ db: PostgresPool) async throws -> Population {
        let levels = LevelTable.standard.levels.map(\.name)
        func member(_ points: Int64, _ level: String) async throws -> Int64 {
            guard let id = try await db.query("INSERT INTO members (points, level) VALUES ($1, $2) RETURNING id", [points, level])
                .first?.requiredInt64("id") else { throw PostgresError(.column, "no member id") }
            return id
        }
        let p = Population(m1: try await member(500, levels[2]), m2: try await member(50, levels[0]), m3: try await member(5000, levels[3]),
                           m4: try await member(9000, levels[3]), m5: try await member(0, levels[1]), m6: try await member(2000, ""))
        try await db.query("UPDATE members SET merged_into = $1 WHERE id = $2", [p.m1, p.m4])
        try await db.query("INSERT INTO tags (code, name) VALUES ('vip', 'VIP'), ('newsletter', 'Newsletter')")
        try await db.query("""
            INSERT INTO member_tags (member_id, tag, source, expires_at) VALUES
                ($1, 'vip', 'manual', NULL), ($2, 'vip', 'rule:vip', now() - interval '1 day'),
                ($3, 'vip', 'rule:vip', now() + interval '1 day'), ($3, 'vip', 'manual', NULL),
                ($4, 'vip', 'manual', NULL), ($5, 'newsletter', 'manual', NULL)
            """, [p.m1, p.m2, p.m3, p.m4, p.m6])
        try await db.query("""
            INSERT INTO member_identities (platform, app, openid, member_id) VALUES
                ('wechat', 'app-a', 'o1', $1), ('wechat', 'app-b', 'o2', $2), ('wechat', 'app-a', 'o4', $3), ('wechat', 'app-a', 'o5', $4),
                ('alipay', 'app-a', 'o5b', $4)
            """, [p.m1, p.m2, p.m4, p.m5])
        try await db.query("""
            INSERT INTO events (id, platform, app, kind, openid, occurred_at, received_at, member_id, verified) VALUES
                ('e1', 'server', 'shop', 'buy', NULL, now() - interval '1 day', now(), $1, true),
                ('e2', 'server', 'shop', 'buy', NULL, now() - interval '2 days', now(), $1, true),
                ('e3', 'server', 'shop', 'buy', NULL, now() - interval '2 days', now(), $4, true),
                ('e4', 'server', 'shop', 'buy', NULL, now() - interval '1 day', now(), $2, true),
                ('e5', 'h5', 'site', 'buy', NULL, now() - interval '1 day', now(), $3, false),
                ('e6', 'server', 'shop', 'buy', NULL, now() - interval '40 days', now(), $3, true),
                ('e7', 'wechat', 'app-a', 'buy', 'o5', now() - interval '3 days', now(), NULL, true),
                ('e8', 'wechat', 'app-a', 'buy', 'o5', now() - interval '3 days', now(), NULL, true),
                ('e9', 'server', 'shop', 'page_view', NULL, now() - interval '1 day', now(), $5, true)
            """, [p.m1, p.m2, p.m3, p.m4, p.m6])
        return p
    }

    static func buys(_ atLeast: Int) -> String { #"{"events":{"kinds":["buy"],"atLeast":\#(atLeast),"within":"7d"}}"# }

    @Test("reach is exact: tags (expiry-aware), levels, points, apps, events (verified, in window, merged members' events to their survivor), all/any/not; preview equals the saved reach")
    func reach() async throws {
        try await ScratchDatabase.with { db, url in
            let p = try await Self.populate(db)
            try await GatewayHarness.run(["FANFLOW_DATABASE_URL": url]) { client, _, _ in
                let cases: [(String, Int)] = [
                    (#"{"tag":"vip"}"#, 2),                       // m1, m3
                    (#"{"tag":"newsletter"}"#, 1),
                    (#"{"level":{"gte":3}}"#, 2),                 // silver m1, gold m3
                    (#"{"level":{"gte":2}}"#, 3),
                    (#"{"level":{"eq":1}}"#, 1),
                    (#"{"level":{"lt":3}}"#, 2),                  // m2, m5; m6 has no level
                    (#"{"points":{"gte":500}}"#, 3),              // m1, m3, m6
                    (#"{"points":{"lt":100}}"#, 2),
                    (#"{"points":{"gt":500,"lte":2000}}"#, 1),
                    (#"{"app":"app-a"}"#, 2),                     // m1, m5 (m5 on two platforms, once)
                    (#"{"app":"app-b"}"#, 1),
                    (Self.buys(1), 3),                            // m1, m2, m5
                    (Self.buys(2), 2),                            // m1, m5
                    (Self.buys(3), 1),                            // m1 with m4's
                    (#"{"events":{"kinds":["buy"],"atLeast":1,"within":"60d"}}"#, 4),
                    (#"{"not":{"tag":"vip"}}"#, 3),
                    (#"{"not":{"not":{"tag":"vip"}}}"#, 2),
                    (#"{"all":[{"tag":"vip"},{"level":{"gte":3}},{"points":{"gte":1000}}]}"#, 1),
                    (#"{"any":[{"app":"app-b"},\#(Self.buys(2))]}"#, 3),
                    (#"{"all":[{"not":{"app":"app-a"}},{"points":{"gte":100}}]}"#, 2),
                    (#"{"all":[{"tag":"vip"},{"level":{"gte":3}},{"app":"app-a"},\#(Self.buys(1))]}"#, 1),
                    (#"{"any":[{"tag":"vip"},{"not":{"tag":"vip"}}]}"#, 5),
                    (#"{"level":{"gte":5}}"#, 0),
                ]
                for (index, (match, expected)) in cases.enumerated() {
                    let code = "seg-\(index)"
                    let (status, saved) = try await Self.call(client, .put, "/admin/v1/segments/\(code)", #"{"name":"case \#(index)","match":\#(match)}"#)
                    #expect(status == .created, "\(match): \(saved)")
                    #expect(saved["reach"] as? Int == expected, "\(match): \(saved)")
                    let (_, got) = try await Self.call(client, .get, "/admin/v1/segments/\(code)")
                    #expect(got["reach"] as? Int == expected, "\(match): \(got)")
                    let (previewStatus, preview) = try await Self.call(client, .post, "/admin/v1/segments/preview", #"{"match":\#(match)}"#)
                    #expect(previewStatus == .ok && preview["reach"] as? Int == expected, "\(match): \(preview)")
                    // Every member the pages list, exactly the reach.
                    let (_, page) = try await Self.call(client, .get, "/admin/v1/segments/\(code)/members?limit=1000")
                    let ids = (page["members"] as? [Int] ?? []).map(Int64.init)
                    #expect(ids.count == expected && Set(ids).isSubset(of: p.unmerged), "\(match): \(ids)")
                }
                let (_, vip) = try await Self.call(client, .get, "/admin/v1/segments/seg-0/members")
                #expect((vip["members"] as? [Int])?.map(Int64.init) == [p.m1, p.m3])
                #expect(vip["nextCursor"] is NSNull)
                let (_, events) = try await Self.call(client, .get, "/admin/v1/segments/seg-13/members")
                #expect((events["members"] as? [Int])?.map(Int64.init) == [p.m1])

                // A hold expiring changes the reach at once, with no job in between.
                try await db.query("UPDATE member_tags SET expires_at = now() - interval '1 second' WHERE member_id = $1 AND tag = 'vip'", [p.m1])
                let (_, after) = try await Self.call(client, .get, "/admin/v1/segments/seg-0")
                #expect(after["reach"] as? Int == 1)
                let evaluatedAt = try #require(RFC3339.parse(after["evaluatedAt"] as? String ?? ""))
                #expect(abs(evaluatedAt.timeIntervalSinceNow) < 60)
            }
        }
    }

    @Test("segments: created (201), replaced (200), listed, deleted (204), then unknown (404)")
    func lifecycle() async throws {
        try await ScratchDatabase.with { db, url in
            _ = try await Self.populate(db)
            try await GatewayHarness.run(["FANFLOW_DATABASE_URL": url]) { client, _, _ in
                var (status, json) = try await Self.call(client, .put, "/admin/v1/segments/vips", #"{"name":"VIPs","match":{"tag":"vip"}}"#)
                #expect(status == .created)
                #expect(json["code"] as? String == "vips" && json["name"] as? String == "VIPs")
                #expect((json["match"] as? [String: Any])?["tag"] as? String == "vip")
                #expect(json["evaluatedAt"] is String)
                (status, json) = try await Self.call(client, .put, "/admin/v1/segments/vips", #"{"name":"VIPs again","match":{"not":{"tag":"vip"}}}"#)
                #expect(status == .ok)
                #expect(json["reach"] as? Int == 3)
                (status, json) = try await Self.call(client, .get, "/admin/v1/segments")
                let listed = json["segments"] as? [[String: Any]] ?? []
                #expect(listed.map { $0["code"] as? String } == ["vips"])
                #expect(listed.first?["name"] as? String == "VIPs again" && listed.first?["updatedAt"] is String)
                #expect(((listed.first?["match"] as? [String: Any])?["not"] as? [String: Any])?["tag"] as? String == "vip")
                (status, _) = try await Self.call(client, .delete, "/admin/v1/segments/vips")
                #expect(status == .noContent)
                for (method, uri) in [(HTTPRequest.Method.get, "/admin/v1/segments/vips"), (.delete, "/admin/v1/segments/vips"),
                                      (.get, "/admin/v1/segments/vips/members")] {
                    (status, json) = try await Self.call(client, method, uri)
                    #expect(status == .notFound && Self.error(json).code == "unknown_segment", "\(method) \(uri)")
                }
            }
        }
    }

    @Test("pages visit every member once, in id order, whatever the page size; bad limits and cursors are 400")
    func paging() async throws {
        try await ScratchDatabase.with { db, url in
            let p = try await Self.populate(db)
            // 300 more members with 100 points: a segment of 300 + m1, m3, m6.
            try await db.query("INSERT INTO members (points, level) SELECT 100, 'bronze' FROM generate_series(1, 300)")
            try await GatewayHarness.run(["FANFLOW_DATABASE_URL": url]) { client, _, _ in
                let (_, saved) = try await Self.call(client, .put, "/admin/v1/segments/some-points", #"{"name":"some points","match":{"points":{"gte":100}}}"#)
                let reach = try #require(saved["reach"] as? Int)
                #expect(reach == 303)
                for limit in [1, 7, 100, 303, 1000] {
                    var seen: [Int] = []
                    var cursor: String?
                    var pages = 0
                    repeat {
                        let uri = "/admin/v1/segments/some-points/members?limit=\(limit)" + (cursor.map { "&cursor=\($0)" } ?? "")
                        let (status, page) = try await Self.call(client, .get, uri)
                        #expect(status == .ok)
                        let members = page["members"] as? [Int] ?? []
                        #expect(members.count <= limit)
                        seen += members
                        cursor = page["nextCursor"] as? String
                        if cursor != nil { #expect(members.count == limit) }
                        pages += 1
                    } while cursor != nil && pages < 400
                    #expect(seen.count == reach && Set(seen).count == reach && seen == seen.sorted(), "limit \(limit)")
                    #expect(pages == (reach + limit - 1) / limit, "limit \(limit): \(pages) pages")
                    #expect(!seen.contains(Int(p.m2)) && !seen.contains(Int(p.m4)))
                }
                let (_, first) = try await Self.call(client, .get, "/admin/v1/segments/some-points/members")
                #expect((first["members"] as? [Int])?.count == 100)
                for query in ["limit=0", "limit=1001", "limit=abc", "limit=", "cursor=abc", "cursor=-1", "cursor=0", "cursor=99999999999999999999"] {
                    let (status, json) = try await Self.call(client, .get, "/admin/v1/segments/some-points/members?\(query)")
                    #expect(status == .badRequest, "\(query)")
                    #expect([ "invalid_limit", "invalid_cursor"].contains(Self.error(json).code ?? ""), "\(query): \(json)")
                }
            }
        }
    }

    @Test("hostile or malformed expressions are 422 invalid_segment with the path of the node, nothing saved")
    func refusals() async throws {
        try await ScratchDatabase.with { db, url in
            _ = try await Self.populate(db)
            try await GatewayHarness.run(["FANFLOW_DATABASE_URL": url]) { client, _, _ in
                let deep = (0..<9).reduce(#"{"tag":"vip"}"#) { inner, _ in #"{"not":\#(inner)}"# }
                let long = "[" + Array(repeating: "1", count: 10_000).joined(separator: ",") + "]"
                let cases: [(String, String)] = [
                    (deep, "match" + String(repeating: ".not", count: 9)),
                    (#"{"any":\#(long)}"#, "match.any"),
                    (#"{"all":[{"tag":"vip"},{"tag":"nope"}]}"#, "match.all[1].tag"),
                    (#"{"any":[{"events":{"kinds":["buy"],"atLeast":1,"within":"forever"}}]}"#, "match.any[0].events.within"),
                    (#"{"tag":"vip","app":"app-a"}"#, "match"),
                    (#"{"points":{"gte":1e300}}"#, "match.points.gte"),
                    (#"{"level":{"gte":0}}"#, "match.level.gte"),
                    (#"{"all":[{"tag":"vip"},{"colour":"red"}]}"#, "match.all[1].colour"),
                    (#"{"channel":"wechat-oa"}"#, "match.channel"),
                ]
                for (match, path) in cases {
                    var (status, json) = try await Self.call(client, .put, "/admin/v1/segments/bad", #"{"name":"bad","match":\#(match)}"#)
                    #expect(status == .unprocessableContent, "\(match.prefix(80)): \(json)")
                    #expect(Self.error(json).code == "invalid_segment" && Self.error(json).path == path, "\(match.prefix(80)): \(json)")
                    (status, json) = try await Self.call(client, .post, "/admin/v1/segments/preview", #"{"match":\#(match)}"#)
                    #expect(status == .unprocessableContent && Self.error(json).path == path, "preview \(match.prefix(80)): \(json)")
                }
                var (status, json) = try await Self.call(client, .put, "/admin/v1/segments/bad", #"{"name":"bad","match":{"tag":"vip"},"extra":1}"#)
                #expect(status == .unprocessableContent && Self.error(json).path == "extra")
                (status, json) = try await Self.call(client, .put, "/admin/v1/segments/Bad%20Code", #"{"name":"bad","match":{"tag":"vip"}}"#)
                #expect(status == .unprocessableContent && Self.error(json).code == "invalid_segment")
                (status, json) = try await Self.call(client, .put, "/admin/v1/segments/bad", #"{"name":"bad","match":"#)
                #expect(status == .badRequest && Self.error(json).code == "malformed_json")
                (status, _) = try await Self.call(client, .get, "/admin/v1/segments/bad")
                #expect(status == .notFound)
                #expect(try await db.query("SELECT count(*) AS n FROM segments").first?.requiredInt64("n") == 0)
            }
        }
    }
}
