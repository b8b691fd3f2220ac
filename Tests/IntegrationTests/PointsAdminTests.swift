import Contracts
import Foundation
import Hummingbird
import HummingbirdTesting
import HTTPTypes
import Loyalty
import Testing
import Workers

/// The loyalty admin API over real HTTP: rules, presets, levels, and the support staff's member views.
@Suite("Points admin API")
struct PointsAdminTests {
    static func call(_ client: any TestClientProtocol, _ method: HTTPRequest.Method, _ uri: String, _ body: String? = nil,
                     headers: HTTPFields = GatewayHarness.adminHeaders) async throws -> (HTTPResponse.Status, [String: Any]) {
        try await client.execute(uri: uri, method: method, headers: headers, body: body.map { ByteBuffer(string: $0) }) { response in
            (response.status, GatewayHarness.json(response))
        }
    }

    @Test("rules: create, read, list, disable and enable, delete; bad rules refused with a code; token required")
    func rules() async throws {
        try await GatewayHarness.run { client, _, _ in
            let code = TestEnvironment.unique("rule")
            let body = #"{"kinds":["community.post"],"points":3,"growth":3,"caps":{"daily":{"points":15}},"reason":"post"}"#
            var (status, json) = try await Self.call(client, .put, "/admin/v1/points-rules/\(code)", body)
            #expect(status == .created)
            #expect(json["code"] as? String == code)
            #expect(json["frequency"] as? String == "unlimited")
            (status, _) = try await Self.call(client, .put, "/admin/v1/points-rules/\(code)", body)
            #expect(status == .ok)
            (status, json) = try await Self.call(client, .get, "/admin/v1/points-rules/\(code)")
            #expect(status == .ok)
            #expect((json["caps"] as? [String: Any]).flatMap { $0["daily"] as? [String: Any] }?["points"] as? Int == 15)
            (status, json) = try await Self.call(client, .get, "/admin/v1/points-rules")
            #expect((json["rules"] as? [[String: Any]])?.contains { $0["code"] as? String == code } == true)
            (status, json) = try await Self.call(client, .post, "/admin/v1/points-rules/\(code)/disable")
            #expect(status == .ok)
            #expect(json["enabled"] as? Bool == false)
            (status, json) = try await Self.call(client, .get, "/admin/v1/points-rules/\(code)")
            #expect(json["enabled"] as? Bool == false)
            (status, json) = try await Self.call(client, .post, "/admin/v1/points-rules/\(code)/enable")
            #expect(json["enabled"] as? Bool == true)

            (status, json) = try await Self.call(client, .put, "/admin/v1/points-rules/\(code)", #"{"kinds":["a"],"points":1,"reason":"x","dailyCap":3}"#)
            #expect(status == .badRequest)
            #expect((json["error"] as? [String: Any])?["code"] as? String == "invalid_rule")
            #expect(((json["error"] as? [String: Any])?["message"] as? String)?.contains("dailyCap") == true)
            (status, json) = try await Self.call(client, .put, "/admin/v1/points-rules/Bad%20Code", body)
            #expect(status == .badRequest)
            (status, _) = try await Self.call(client, .get, "/admin/v1/points-rules/\(code)", headers: [:])
            #expect(status == .unauthorized)

            (status, _) = try await Self.call(client, .delete, "/admin/v1/points-rules/\(code)")
            #expect(status == .noContent)
            (status, json) = try await Self.call(client, .get, "/admin/v1/points-rules/\(code)")
            #expect(status == .notFound)
            #expect((json["error"] as? [String: Any])?["code"] as? String == "unknown_rule")
            (status, _) = try await Self.call(client, .post, "/admin/v1/points-rules/\(code)/enable")
            #expect(status == .notFound)
        }
    }

    @Test("presets are applied as shipped; levels are validated and stored")
    func presetsAndLevels() async throws {
        try await GatewayHarness.run { client, _, _ in
            var (status, json) = try await Self.call(client, .post, "/admin/v1/points-rules/presets/membership")
            #expect(status == .ok)
            let codes = (json["rules"] as? [[String: Any]])?.compactMap { $0["code"] as? String } ?? []
            #expect(codes == ProgramPreset.membership.rules.map(\.code))
            #expect(((json["levels"] as? [String: Any])?["levels"] as? [[String: Any]])?.count == 4)
            (status, json) = try await Self.call(client, .get, "/admin/v1/points-rules/member.checkin")
            #expect(json["frequency"] as? String == "daily")
            (status, json) = try await Self.call(client, .post, "/admin/v1/points-rules/presets/community")
            #expect(status == .ok)
            (status, json) = try await Self.call(client, .post, "/admin/v1/points-rules/presets/lottery")
            #expect(status == .notFound)
            #expect((json["error"] as? [String: Any])?["code"] as? String == "unknown_preset")

            (status, json) = try await Self.call(client, .put, "/admin/v1/levels", #"{"levels":[{"name":"a","minGrowth":10}]}"#)
            #expect(status == .badRequest)
            #expect((json["error"] as? [String: Any])?["code"] as? String == "invalid_levels")
            // A valid table is stored and read back (the standard one, so other tests' levels stay as they are).
            let standard = String(decoding: try JSONEncoder().encode(LevelTable.standard), as: UTF8.self)
            (status, json) = try await Self.call(client, .put, "/admin/v1/levels", standard)
            #expect(status == .ok)
            (status, json) = try await Self.call(client, .get, "/admin/v1/levels")
            #expect((json["levels"] as? [[String: Any]])?.map { $0["minGrowth"] as? Int } == [0, 100, 4000, 10000])

            // The presets' rules would otherwise grant for other tests' standard kinds: take them back.
            for rule in ProgramPreset.membership.rules + ProgramPreset.community.rules {
                (status, _) = try await Self.call(client, .delete, "/admin/v1/points-rules/\(rule.code)")
                #expect(status == .noContent)
            }
        }
    }

    @Test("members: lookup by openid, the member view, ledger pages and filters; unknown members are 404")
    func members() async throws {
        let h = try await PointsHarness.open()
        let kind = h.kind("post")
        let pool = h.pool(.init(rules: [PointsRule(code: "\(h.prefix)-a", kinds: [kind], points: 2, growth: 1, reason: "post"),
                                        PointsRule(code: "\(h.prefix)-b", kinds: [kind], points: 1, growth: 0, reason: "bonus")],
                                levels: .standard))
        for n in 0..<3 {
            try await pool.process([h.event("\(n)", kind, openid: "o1", at: "2026-12-0\(n + 1)T10:00:00+08:00", unionid: "u-\(h.app)")])
        }
        try await GatewayHarness.run { client, _, _ in
            var (status, json) = try await Self.call(client, .get, "/admin/v1/members/lookup?platform=wechat&app=\(h.app)&openid=o1")
            #expect(status == .ok)
            let id = try #require(json["id"] as? Int)
            #expect(json["points"] as? Int == 9)
            #expect(json["growth"] as? Int == 3)
            #expect(json["level"] as? String == "registered")
            #expect((json["identities"] as? [[String: Any]])?.first?["unionid"] as? String == "u-\(h.app)")
            #expect(json["tags"] as? [String] == [])

            (status, json) = try await Self.call(client, .get, "/admin/v1/members/\(id)")
            #expect(json["points"] as? Int == 9)

            (status, json) = try await Self.call(client, .get, "/admin/v1/members/\(id)/ledger?limit=4")
            var entries = json["entries"] as? [[String: Any]] ?? []
            #expect(entries.count == 4)
            // The issue's field names for support staff, all present.
            #expect(Set(entries[0].keys).isSuperset(of: ["id", "kind", "rule", "points", "growth", "reason", "eventId",
                                                         "occurredAt", "createdAt"]))
            #expect(entries[0]["eventId"] as? String == "\(h.app):2")
            let next = try #require(json["nextBefore"] as? Int)
            (status, json) = try await Self.call(client, .get, "/admin/v1/members/\(id)/ledger?limit=4&before=\(next)")
            entries = json["entries"] as? [[String: Any]] ?? []
            #expect(entries.count == 2)
            #expect(json["nextBefore"] is NSNull)
            (status, json) = try await Self.call(client, .get, "/admin/v1/members/\(id)/ledger?rule=\(h.prefix)-b")
            #expect((json["entries"] as? [[String: Any]])?.map { $0["reason"] as? String } == ["bonus", "bonus", "bonus"])
            (status, json) = try await Self.call(client, .get,
                                                 "/admin/v1/members/\(id)/ledger?from=2026-12-02T00:00:00%2B08:00&to=2026-12-03T00:00:00%2B08:00")
            #expect((json["entries"] as? [[String: Any]])?.count == 2)
            (status, json) = try await Self.call(client, .get, "/admin/v1/members/\(id)/ledger?from=yesterday")
            #expect(status == .badRequest)

            (status, json) = try await Self.call(client, .get, "/admin/v1/members/lookup?platform=wechat&app=\(h.app)&openid=nobody")
            #expect(status == .notFound)
            #expect((json["error"] as? [String: Any])?["code"] as? String == "unknown_member")
            (status, _) = try await Self.call(client, .get, "/admin/v1/members/999999999999")
            #expect(status == .notFound)
            (status, _) = try await Self.call(client, .get, "/admin/v1/members/abc")
            #expect(status == .badRequest)
        }
        await h.close()
    }
}
