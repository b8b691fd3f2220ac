import Audiences
import Contracts
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Jobs
import Logging
import Testing

/// Tags, member tags and tag rules through real HTTP: the contract's paths, fields, status codes
/// and error codes, with the backfill run by a job runner as the pipeline worker runs it.
@Suite("audiences admin API")
struct AudienceAPITests {
    static func call(_ client: any TestClientProtocol, _ method: HTTPRequest.Method, _ uri: String, _ body: String? = nil)
        async throws -> (HTTPResponse.Status, [String: Any]) {
        try await PointsAdminTests.call(client, method, uri, body)
    }

    static func error(_ json: [String: Any]) -> (code: String?, path: String?) {
        let error = json["error"] as? [String: Any]
        return (error?["code"] as? String, error?["path"] as? String)
    }

    @Test("tags: create, replace, read with counts, list; member tags by source; manual add and remove; rules by HTTP with backfill to live")
    func tagsAndRules() async throws {
        let h = try await PointsHarness.open()
        defer { Task { await h.close() } }
        // The pipeline worker's job runner for the audience kinds (backfill steps, expiry).
        let runner = JobRunner(store: JobStore(database: h.database), handlers: AudienceJobs.handlers(database: h.database),
                               configuration: .init(owner: "test-audiences"), logger: Logger(label: "test.audiences"))
        let running = Task { try await runner.run() }
        defer { running.cancel() }
        try await GatewayHarness.run { client, _, _ in
            let tag = TestEnvironment.unique("reader"), vip = TestEnvironment.unique("vip")
            var (status, json) = try await Self.call(client, .put, "/admin/v1/tags/\(tag)", #"{"name":"Reader","group":"content"}"#)
            #expect(status == .created)
            #expect(json["code"] as? String == tag)
            #expect(json["group"] as? String == "content")
            #expect(json["members"] as? Int == 0)
            (status, json) = try await Self.call(client, .put, "/admin/v1/tags/\(tag)", #"{"name":"Readers","group":"content","description":"reads"}"#)
            #expect(status == .ok)
            #expect(json["name"] as? String == "Readers")
            (status, _) = try await Self.call(client, .put, "/admin/v1/tags/\(vip)", #"{"name":"VIP"}"#)
            #expect(status == .created)
            (status, json) = try await Self.call(client, .put, "/admin/v1/tags/\(vip)", #"{"name":"VIP","colour":"red"}"#)
            #expect(status == .unprocessableContent)
            #expect(Self.error(json) == ("invalid_tag", "colour"))
            (status, json) = try await Self.call(client, .put, "/admin/v1/tags/Bad%20Code", #"{"name":"x"}"#)
            #expect(status == .badRequest)
            #expect(Self.error(json).code == "invalid_tag_code")
            (status, json) = try await Self.call(client, .get, "/admin/v1/tags")
            #expect((json["tags"] as? [[String: Any]])?.contains { $0["code"] as? String == tag } == true)

            // Rules: refused with the path of the bad field, before anything is stored.
            let kind = h.kind("read")
            let rule = TestEnvironment.unique("rule")
            let good = #"{"tag":"\#(tag)","kinds":["\#(kind.rawValue)"],"conditions":{"url":{"contains":"/article/"}},"atLeast":2,"within":"7d"}"#
            for (body, path) in [
                (#"{"tag":"\#(TestEnvironment.unique("nosuch"))","kinds":["a"],"atLeast":1,"within":"1d"}"#, "tag"),
                (#"{"tag":"\#(tag)","kinds":["a"],"atLeast":1,"within":"366d"}"#, "within"),
                (#"{"tag":"\#(tag)","kinds":["a"],"atLeast":0,"within":"1d"}"#, "atLeast"),
                (#"{"tag":"\#(tag)","kinds":[\#((0..<1_000).map { "\"k\($0)\"" }.joined(separator: ","))],"atLeast":1,"within":"1d"}"#, "kinds"),
                (#"{"tag":"\#(tag)","kinds":["a"],"conditions":{"x":{"gte":{"gte":{"gte":1}}}},"atLeast":1,"within":"1d"}"#, "conditions.x.gte"),
                (#"{"tag":"\#(tag)","kinds":["a"],"conditions":{"x":{"matches":".*"}},"atLeast":1,"within":"1d"}"#, "conditions.x.matches"),
                (#"{"tag":"\#(tag)","kinds":["a"],"atLeast":1,"within":"1d","window":"2d"}"#, "window"),
            ] {
                (status, json) = try await Self.call(client, .put, "/admin/v1/tag-rules/\(rule)", body)
                #expect(status == .unprocessableContent, "\(path): \(status)")
                #expect(Self.error(json).path == path, "\(Self.error(json))")
            }
            // Past 64 KiB a definition is not read at all.
            let huge = #"{"tag":"\#(tag)","kinds":[\#((0..<10_000).map { "\"k\($0)\"" }.joined(separator: ","))],"atLeast":1,"within":"1d"}"#
            (status, json) = try await Self.call(client, .put, "/admin/v1/tag-rules/\(rule)", huge)
            #expect(status == .contentTooLarge)
            #expect(Self.error(json).code == "body_too_large")
            (status, _) = try await Self.call(client, .get, "/admin/v1/tag-rules/\(rule)")
            #expect(status == .notFound)

            // Two page views of articles, stored before the rule: the backfill finds them.
            let pipeline = h.pool(.init(rules: [], levels: .standard))
            let now = RFC3339.format(Date())
            try await pipeline.process([
                h.event("v1", kind, openid: "u1", at: now, attributes: ["url": "https://brand.example/article/1"]),
                h.event("v2", kind, openid: "u1", at: now, attributes: ["url": "https://brand.example/article/2"]),
                h.event("v3", kind, openid: "u1", at: now, attributes: ["url": "https://brand.example/shop/3"]),
            ])
            let member = try #require(try await h.member("u1")).id
            (status, json) = try await Self.call(client, .put, "/admin/v1/tag-rules/\(rule)", good)
            #expect(status == .created)
            #expect(json["state"] as? String == "backfilling")
            #expect(json["within"] as? String == "7d")
            let deadline = ContinuousClock.now + .seconds(20)
            while ContinuousClock.now < deadline {
                (status, json) = try await Self.call(client, .get, "/admin/v1/tag-rules/\(rule)")
                if json["state"] as? String == "live" { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(json["state"] as? String == "live", "the backfill did not finish: \(json)")
            #expect(json["progress"] as? Double == 1)
            (status, _) = try await Self.call(client, .put, "/admin/v1/tag-rules/\(rule)", good)
            #expect(status == .ok)

            (status, json) = try await Self.call(client, .get, "/admin/v1/members/\(member)/tags")
            #expect(status == .ok)
            var held = json["tags"] as? [[String: Any]] ?? []
            #expect(held.count == 1)
            #expect(held.first?["code"] as? String == tag)
            #expect(held.first?["source"] as? String == "rule:\(rule)")
            #expect(held.first?["expiresAt"] as? String != nil)
            #expect(held.first?["since"] as? String != nil)
            (status, json) = try await Self.call(client, .get, "/admin/v1/tags/\(tag)")
            #expect(json["members"] as? Int == 1)

            // Manual holds beside the rule's: the tag stays until the last source lets go.
            (status, json) = try await Self.call(client, .post, "/admin/v1/members/\(member)/tags", #"{"add":["\#(tag)","\#(vip)"]}"#)
            #expect(status == .ok)
            held = json["tags"] as? [[String: Any]] ?? []
            #expect(held.map { "\($0["code"] ?? "")/\($0["source"] ?? "")" }.sorted()
                    == ["\(tag)/manual", "\(tag)/rule:\(rule)", "\(vip)/manual"].sorted())
            #expect(held.first { $0["source"] as? String == "manual" }?["expiresAt"] is NSNull)
            (status, json) = try await Self.call(client, .post, "/admin/v1/members/\(member)/tags", #"{"remove":["\#(tag)"]}"#)
            held = json["tags"] as? [[String: Any]] ?? []
            #expect(held.filter { $0["code"] as? String == tag }.map { $0["source"] as? String } == ["rule:\(rule)"])
            (status, json) = try await Self.call(client, .post, "/admin/v1/members/\(member)/tags", #"{"add":["\#(TestEnvironment.unique("nosuch"))"]}"#)
            #expect(status == .unprocessableContent)
            #expect(Self.error(json).code == "unknown_tag")
            (status, json) = try await Self.call(client, .post, "/admin/v1/members/\(member)/tags", #"{"add":"vip"}"#)
            #expect(status == .unprocessableContent)
            #expect(Self.error(json) == ("invalid_tag_change", "add"))
            (status, json) = try await Self.call(client, .post, "/admin/v1/members/999999999999/tags", #"{"add":["\#(vip)"]}"#)
            #expect(status == .notFound)
            #expect(Self.error(json).code == "unknown_member")
            (status, _) = try await Self.call(client, .get, "/admin/v1/members/0/tags")
            #expect(status == .badRequest)

            // A tag a rule sets cannot be deleted; the rule's deletion lets go of its holds.
            (status, json) = try await Self.call(client, .delete, "/admin/v1/tags/\(tag)")
            #expect(status == .conflict)
            #expect(Self.error(json).code == "tag_in_use")
            (status, _) = try await Self.call(client, .delete, "/admin/v1/tag-rules/\(rule)")
            #expect(status == .noContent)
            (status, json) = try await Self.call(client, .get, "/admin/v1/members/\(member)/tags")
            #expect((json["tags"] as? [[String: Any]])?.map { $0["code"] as? String } == [vip])
            (status, _) = try await Self.call(client, .delete, "/admin/v1/tags/\(tag)")
            #expect(status == .noContent)
            (status, json) = try await Self.call(client, .get, "/admin/v1/tags/\(tag)")
            #expect(status == .notFound)
            #expect(Self.error(json).code == "unknown_tag")
            (status, _) = try await Self.call(client, .delete, "/admin/v1/tags/\(vip)")
            #expect(status == .noContent)
        }
    }
}
