import Contracts
import Foundation
@testable import Gateway
import Hummingbird
import HummingbirdTesting
import HTTPTypes
import Loyalty
import Members
import Pipeline
import PostgresClient
import Jobs
import Testing
import Workers

/// Verified and claimed subjects where they matter: kept in `events`, rewarded by the points pool
/// only when a member token proved them, and the SDK never losing a batch to an expired token.
@Suite("Beacon subjects")
struct SubjectTests {
    static let secret = "server-secret-0123456789"

    @Test("events keeps each subject's member id and verified flag: a claim stays a claim")
    func behaviorKeepsSubject() async throws {
        try await GatewayHarness.migrate()
        let database = PostgresPool(url: TestEnvironment.databaseURL, maximumConnections: 2)
        let app = TestEnvironment.unique("site")
        let now = Date()
        let events = [
            Envelope(id: "\(app):member", platform: .h5, app: app, kind: .share, subject: .init(memberId: 4242, verified: true),
                     occurredAt: now, receivedAt: now),
            Envelope(id: "\(app):claim", platform: .h5, app: app, kind: .share, subject: .init(openid: "o-claims", verified: false),
                     occurredAt: now, receivedAt: now),
            Envelope(id: "\(app):webhook", platform: .wechat, app: app, kind: .subscribe, subject: .init(openid: "o-wx", verified: true),
                     occurredAt: now, receivedAt: now),
        ]
        try await Pipeline(database: database, handlers: []).process(events)
        let rows = try await database.query("SELECT id, member_id, verified, openid FROM events WHERE app = $1 ORDER BY id", [app])
        let byID = Dictionary(rows.map { ($0.string("id") ?? "", $0) }, uniquingKeysWith: { first, _ in first })
        #expect(rows.count == 3)
        #expect(byID["\(app):member"]?.int("member_id") == 4242)
        #expect(byID["\(app):member"]?.string("verified") == "t")
        #expect(byID["\(app):claim"]?.int("member_id") == nil)
        #expect(byID["\(app):claim"]?.string("verified") == "f")
        #expect(byID["\(app):claim"]?.string("openid") == "o-claims")
        #expect(byID["\(app):webhook"]?.string("verified") == "t")
        try await database.query("DELETE FROM events WHERE app = $1", [app])
        await database.close()
    }

    @Test("a share beacon with a member token reaches the pipeline and grants on `share`; a claimed one grants nothing; page views never reach Loyalty")
    func verifiedShareEarns() async throws {
        let h = try await PointsHarness.open()
        let member = try await MemberDirectory(database: h.database).resolve(Identity(platform: .wechat, app: h.app, openid: "sharer"))
        let pipelineBindings = try #require(Topology.standard.queue(.pipeline)).bindings
        let toPipeline = try await EventTap.open(bindings: pipelineBindings)
        let site = TestEnvironment.unique("site")
        try await GatewayHarness.run { client, tap, gateway in
            try await GatewayHarness.register(client, "server", site, ["secret": Self.secret])
            let time = RFC3339.format(Date())
            func beacon(_ type: String, token: String? = nil) -> String {
                let field = token.map { #","token":"\#($0)""# } ?? ""
                return #"{"site":"\#(site)","clientId":"c-1"\#(field),"events":[{"id":"\#(UUID().uuidString)","type":"\#(type)","occurredAt":"\#(time)","openid":"sharer"}]}"#
            }
            let token = gateway.memberTokens.mint(member: member, expiresAt: Date().addingTimeInterval(600))
            for body in [beacon("share", token: token), beacon("share"), beacon("page_view", token: token), beacon("dwell", token: token)] {
                try await client.execute(uri: "/v1/collect", method: .post, body: ByteBuffer(string: body)) { response in
                    #expect(response.status == .ok)
                }
            }
            #expect(try await tap.wait(app: site, count: 4).count == 4)
            // Every beacon is history, delivered once to the pipeline; Loyalty is shown the shares only.
            let routed = try await toPipeline.wait(app: site, count: 4).map(\.envelope)
            #expect(routed.count == 4)
            #expect(routed.filter(LoyaltyService.selector.matches).map(\.kind) == [.share, .share])
            // Both rules would take a claim if anything could; the claimed share still earns nothing.
            let program = RuleBook.Program(rules: [
                PointsRule(code: "\(h.prefix)-share", kinds: [.share], points: 3, growth: 1, reason: "share"),
                PointsRule(code: "\(h.prefix)-share-open", kinds: [.share], points: 2, growth: 0, reason: "share", allowClaimed: true),
            ], levels: .standard, calendar: BusinessCalendar(timeZone: h.timeZone))
            try await h.pool(program).process(routed)
        }
        await toPipeline.close()
        #expect(try await h.member("sharer")?.points == 5)
        let claimedMembers = try await h.database.query("SELECT count(*) AS c FROM member_identities WHERE app = $1", [site])
        #expect(claimedMembers.first?.int("c") == 0)
        await h.close()
    }

    @Test("a token's member merged into another earns for the survivor; a token naming no member earns nothing; a member id on a claim is ignored")
    func tokenMemberResolution() async throws {
        let h = try await PointsHarness.open()
        let rule = PointsRule(code: "\(h.prefix)-share", kinds: [.share], points: 4, growth: 0, reason: "share")
        let pool = h.pool(RuleBook.Program(rules: [rule], levels: .standard, calendar: BusinessCalendar(timeZone: h.timeZone)))
        let phone = "+86 139" + String(UUID().uuidString.prefix(8))
        for (id, openid) in [("bind-old", "older"), ("bind-young", "younger")] {
            try await pool.process([h.event(id, .memberPhoneBound, openid: openid, at: "2026-12-01T11:00:00+08:00",
                                            attributes: ["phone": .string(phone)])])
        }
        let directory = MemberDirectory(database: h.database)
        let older = try #require(try await directory.lookup(Identity(platform: .wechat, app: h.app, openid: "older")))
        let absorbed = try #require(try await h.database.query("SELECT from_member FROM member_merges WHERE into_member = $1",
                                                               [older]).first?.int("from_member")).map(Int64.init)
        #expect(absorbed != older)
        let site = TestEnvironment.unique("site"), now = Date()
        let unknown = Int64.max - Int64.random(in: 0..<1_000_000)
        try await pool.process([
            Envelope(id: "\(site):s1", platform: .h5, app: site, kind: .share, subject: .init(memberId: absorbed, verified: true),
                     occurredAt: now, receivedAt: now),
            Envelope(id: "\(site):s2", platform: .h5, app: site, kind: .share, subject: .init(memberId: unknown, verified: true),
                     occurredAt: now, receivedAt: now),
            // A member id on a claim is not the member's: ignored.
            Envelope(id: "\(site):s3", platform: .h5, app: site, kind: .share, subject: .init(memberId: older, verified: false),
                     occurredAt: now, receivedAt: now),
        ])
        #expect(try await h.member("older")?.points == 4)
        let rows = try await h.database.query("SELECT event_id, member_id FROM ledger WHERE event_id LIKE $1", ["\(site):%"])
        #expect(rows.map { $0.string("event_id") } == ["\(site):s1"])
        #expect(rows.first?.int("member_id").map(Int64.init) == older)
        await h.close()
    }

    /// Runs the gateway's own sdk.js in node with a browser of stubs; answers what it sent.
    static func runSDK(_ source: String, mode: String, site: String, token: String) throws -> (beacons: [String], pixels: [String]) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(TestEnvironment.unique("sdk"))
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let sdk = directory.appendingPathComponent("sdk.js"), driver = directory.appendingPathComponent("driver.js")
        try source.write(to: sdk, atomically: true, encoding: .utf8)
        try #"""
            const [file, mode, site, token] = process.argv.slice(2);
            const captured = { beacons: [], pixels: [] };
            const document = { currentScript: null, getElementsByTagName: () => [], title: "t", referrer: "", cookie: "",
              visibilityState: "visible", addEventListener() {} };
            const window = { location: { href: "https://shop.example/p", search: "" }, crypto: require("crypto").webcrypto,
              localStorage: { getItem() { return null; }, setItem() {} }, setTimeout: () => 1, clearTimeout() {}, addEventListener() {} };
            globalThis.navigator = mode === "beacon" ? { sendBeacon: (url, blob) => { captured.beacons.push(blob.parts.join("")); return true; } } : {};
            globalThis.Blob = class { constructor(parts) { this.parts = parts; } };
            globalThis.Image = class { set src(v) { captured.pixels.push(v); } };
            new Function("window", "document", require("fs").readFileSync(file, "utf8"))(window, document);
            window.FanFlow.init({ site, endpoint: "http://gateway", token });
            window.FanFlow.share("friend");
            window.FanFlow.flush();
            console.log(JSON.stringify(captured));
            """#.write(to: driver, atomically: true, encoding: .utf8)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/node")
        process.arguments = [driver.path, sdk.path, mode, site, token]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        let json = try #require(try JSONSerialization.jsonObject(with: data) as? [String: [String]])
        return (json["beacons"] ?? [], json["pixels"] ?? [])
    }

    @Test("the SDK stops sending an expired token (its beacons become accepted claims) and never puts a token in the pixel URL")
    func sdkExpiredToken() async throws {
        try await GatewayHarness.run { client, tap, gateway in
            let site = TestEnvironment.unique("site")
            try await GatewayHarness.register(client, "server", site, ["secret": Self.secret])
            let source = try await client.execute(uri: "/v1/sdk.js", method: .get) { String(buffer: $0.body) }
            let live = gateway.memberTokens.mint(member: 4343, expiresAt: Date().addingTimeInterval(600))
            let expired = gateway.memberTokens.mint(member: 4343, expiresAt: Date().addingTimeInterval(-5))
            let withLive = try Self.runSDK(source, mode: "beacon", site: site, token: live)
            let withExpired = try Self.runSDK(source, mode: "beacon", site: site, token: expired)
            let pixel = try Self.runSDK(source, mode: "pixel", site: site, token: live)
            #expect(withLive.beacons.count == 1 && withExpired.beacons.count == 1 && pixel.pixels.count == 1)
            #expect(withLive.beacons.first?.contains(live) == true)
            #expect(withExpired.beacons.first?.contains("\"token\"") == false)
            let pixelURL = try #require(pixel.pixels.first)
            #expect(!pixelURL.contains("token") && !pixelURL.contains("m1."))
            for body in withLive.beacons + withExpired.beacons {
                try await client.execute(uri: "/v1/collect", method: .post, body: ByteBuffer(string: body)) { response in
                    #expect(response.status == .ok, "\(String(buffer: response.body))")
                }
            }
            try await client.execute(uri: String(pixelURL.dropFirst("http://gateway".count)), method: .get) { response in
                #expect(response.status == .ok)
            }
            let published = try await tap.wait(app: site, count: 3).map(\.envelope)
            #expect(published.count == 3)
            #expect(published.filter { $0.subject == Envelope.Subject(memberId: 4343, verified: true) }.count == 1)
            #expect(published.filter { !$0.subject.verified }.count == 2)
        }
    }
}
