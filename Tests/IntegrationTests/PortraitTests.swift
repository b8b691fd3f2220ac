@testable import Audiences
import Contracts
import Foundation
@testable import Gateway
import Hummingbird
import HummingbirdTesting
import HTTPTypes
import Logging
import Loyalty
import Members
import Pipeline
import PostgresClient
import RedisClient
import Testing
import Workers

/// Member portraits: profile attributes through the pipeline, then the portrait over real HTTP.
///
/// On a database of the test's own: the portrait reads a member's events through indexes a
/// migration of this module adds, and the member ids of a fresh database are the test's alone.
@Suite("Member portraits")
struct PortraitTests {
    static let zone = TimeZone(identifier: "Asia/Shanghai") ?? .current

    /// Events of one test, placed on local days and hours of the program's zone (the gateway's
    /// default, Asia/Shanghai).
    struct Fixture {
        let app1 = TestEnvironment.unique("wxa"), app2 = TestEnvironment.unique("wxb"), site = TestEnvironment.unique("site")
        let now = Date()
        let calendar: Calendar = {
            var calendar = Calendar(identifier: .gregorian)
            calendar.timeZone = PortraitTests.zone
            return calendar
        }()

        /// `hour:minute` local time, `daysAgo` local days before today.
        func at(_ daysAgo: Int, _ hour: Int, _ minute: Int = 0) -> Date {
            calendar.startOfDay(for: now).addingTimeInterval(Double(-daysAgo * 86_400 + hour * 3_600 + minute * 60))
        }

        func platform(_ id: String, _ app: String, _ openid: String, _ kind: EventKind, _ time: Date, unionid: String? = nil,
                      verified: Bool = true, attributes: [String: JSONValue] = [:]) -> Envelope {
            Envelope(id: "\(app):\(id)", platform: .wechat, app: app, kind: kind,
                     subject: .init(openid: openid, unionid: unionid, verified: verified), occurredAt: time, receivedAt: now,
                     attributes: attributes)
        }

        /// A business event as `/v1/events` builds it: the member's platform, the server app's marks.
        func server(_ id: String, _ app: String, _ openid: String, _ kind: EventKind, _ time: Date,
                    _ attributes: [String: JSONValue]) -> Envelope {
            var marked = attributes
            marked["sourceApp"] = "crm"
            marked["sourceEventId"] = .string(id)
            return Envelope(id: "server:\(app):\(id)", platform: .wechat, app: app, kind: kind, subject: .init(openid: openid),
                            occurredAt: time, receivedAt: now, attributes: marked)
        }

        func pageView(_ id: String, member: Int64, verified: Bool = true, _ time: Date, title: String, url: String) -> Envelope {
            Envelope(id: "\(site):\(id)", platform: .h5, app: site, kind: .pageView, subject: .init(memberId: member, verified: verified),
                     occurredAt: time, receivedAt: now, attributes: ["title": .string(title), "url": .string(url), "memberId": .integer(member)])
        }
    }

    static func pipeline(_ database: PostgresPool, redis: RedisPool) -> Pipeline {
        let loyalty = LoyaltyService(rules: RuleBook(fixed: RuleBook.Program(rules: [], levels: .standard)),
                                     members: MemberDirectory(database: database),
                                     decider: PointsDecider(redis: redis, calendar: PeriodCalendar(timeZone: zone)),
                                     ledger: Ledger(database: database), mergeParticipants: [AudienceMerge(), ProfileAttributeMerge()])
        return Pipeline.standard(database: database, loyalty: loyalty, audiences: AudienceService(database: database))
    }

    static func call(_ client: any TestClientProtocol, _ uri: String, headers: HTTPFields = GatewayHarness.adminHeaders)
        async throws -> (HTTPResponse.Status, [String: Any], String) {
        try await client.execute(uri: uri, method: .get, headers: headers) { response in
            (response.status, GatewayHarness.json(response), String(buffer: response.body))
        }
    }

    static func weight(_ times: [Date], now: Date) -> Double {
        times.reduce(0) { $0 + pow(0.5, max(0, now.timeIntervalSince($1)) / 86_400 / 30) }
    }

    @Test("a portrait over HTTP: two apps' identities, newest profile values, activity by local hour and day without claims, interests by weight, tags with sources, loyalty, a merged id, 404 and 400")
    func portrait() async throws {
        try await ScratchDatabase.with { database, url in
            let redis = try await RedisPool(url: TestEnvironment.redisURL, size: 1)
            try await CounterReadiness.markReady(redis)
            let pipeline = Self.pipeline(database, redis: redis)
            let f = Fixture()
            let directory = MemberDirectory(database: database)

            // Two apps of one open platform: the unionid makes them one member.
            let first = f.platform("e1", f.app1, "oA", .subscribe, f.at(120, 9), unionid: "u-1")
            try await pipeline.process([first])
            var counted: [Envelope] = []  // verified events of the member in the last 90 days
            let e2 = f.platform("e2", f.app2, "oB", .text, f.at(3, 10), unionid: "u-1")
            try await pipeline.process([e2])
            counted.append(e2)
            let member = try #require(try await directory.lookup(Identity(platform: .wechat, app: f.app1, openid: "oA")))
            #expect(try await directory.lookup(Identity(platform: .wechat, app: f.app2, openid: "oB")) == member)

            let p1 = f.server("p1", f.app1, "oA", .memberProfileUpdated, f.at(1, 8), [
                "gender": "female", "city": " 上海 ", "birthday": "1990-05-17", "shoeSize": .integer(37), "vip": .bool(true),
            ])
            let p3 = f.server("p3", f.app2, "oB", .memberProfileUpdated, f.at(1, 9), [
                "language": "zh_CN", "birthday": "2999-01-01", "gender": "robot", "city": .string(String(repeating: "长", count: 65)),
                "nickname": "Lily",
            ])
            var crowded: [String: JSONValue] = ["gender": "male"]
            for n in 1...32 { crowded["extra\(n)"] = .integer(Int64(n)) }
            let p5 = f.server("p5", f.app1, "oA", .memberProfileUpdated, f.at(1, 10), crowded)
            let batch: [Envelope] = [
                f.server("e3", f.app1, "oA", .communityPost, f.at(1, 20), ["topic": "Lipstick"]),
                f.server("e4", f.app1, "oA", .communityComment, f.at(10, 20, 30), ["topic": "lipstick "]),
                f.server("e5", f.app2, "oB", .communityPost, f.at(60, 21), ["topic": "Skincare"]),
                f.pageView("e6", member: member, f.at(2, 14), title: "Summer  Sale",
                           url: "https://brand.example/products/lipstick/red-01.html?from=feed#top"),
                f.pageView("e7", member: member, f.at(40, 9, 15), title: "Summer Sale", url: "/products/"),
                // A platform's own profile field (a webhook's attributes), kept with the platform as source.
                f.platform("w1", f.app1, "oA", .subscribe, f.at(5, 11), attributes: ["country": "China"]),
                p1, p1, p3, p5,
            ]
            let claims: [Envelope] = [
                // Claims: a page saying it is the member, and an unverified subject on a platform app.
                f.pageView("c1", member: member, verified: false, f.now.addingTimeInterval(-60), title: "Secret Page", url: "/secret/"),
                f.platform("c2", f.app1, "oA", .click, f.at(1, 4), verified: false, attributes: ["gender": "male"]),
            ]
            let report = try await pipeline.run(batch + claims)
            counted += batch.filter { $0.id != p1.id } + [p1]
            let outcomes = report.outcomes(ProfileOutcome.self)
            #expect(Set(outcomes.compactMap { outcome -> String? in if case .updated(let m, let name) = outcome { "\(m):\(name)" } else { nil } })
                    == Set(["gender", "city", "birthday", "shoeSize", "vip", "language", "country"].map { "\(member):\($0)" }))
            let refused = outcomes.compactMap { outcome -> String? in if case .refused(let event, let name, _) = outcome { "\(event):\(name)" } else { nil } }
            #expect(Set(refused.filter { $0.hasPrefix(p3.id) }) == Set(["birthday", "gender", "city"].map { "\(p3.id):\($0)" }))
            #expect(refused.filter { $0.hasPrefix(p5.id) }.count == 33)

            // An older event arriving late changes what it is newest for only; a redelivery changes nothing.
            let p2 = f.server("p2", f.app1, "oA", .memberProfileUpdated, f.at(6, 8), ["city": "北京", "gender": "male", "hobby": "tennis"])
            let late = try await pipeline.run([p2])
            #expect(late.outcomes(ProfileOutcome.self) == [.updated(member: member, attribute: "hobby")])
            let again = try await pipeline.run([p1, p2])
            #expect(again.outcomes(ProfileOutcome.self).isEmpty)
            counted.append(p2)

            // A second member, with a token page view and a newer hobby, merged into the first by a shared phone.
            let n1 = f.platform("n1", f.app1, "oN", .subscribe, f.at(4, 15))
            try await pipeline.process([n1])
            let other = try #require(try await directory.lookup(Identity(platform: .wechat, app: f.app1, openid: "oN")))
            #expect(other != member)
            let n2 = f.pageView("n2", member: other, f.at(3, 16), title: "Running Shoes", url: "/")
            let p6 = f.server("p6", f.app1, "oN", .memberProfileUpdated, f.at(1, 7), ["hobby": "running"])
            try await pipeline.process([n2, p6])
            let phone = "+86139" + String(Int.random(in: 10_000_000...99_999_999))
            let bindings = [f.server("b1", f.app1, "oA", .memberPhoneBound, f.at(2, 12), ["phone": .string(phone)]),
                            f.server("b2", f.app1, "oN", .memberPhoneBound, f.at(1, 12, 30), ["phone": .string(phone)])]
            for binding in bindings { try await pipeline.process([binding]) }
            counted += [n1, n2, p6] + bindings

            let tags = TagStore(database: database)
            _ = try await tags.put(Tag(code: "lipstick-fan", name: "Lipstick fan", group: "Lipstick"))
            _ = try await tags.put(Tag(code: "vip", name: "VIP", group: "Beauty  Club"))
            _ = try await tags.put(Tag(code: "plain", name: "No group"))
            _ = try await tags.change(member: member, add: ["lipstick-fan", "vip", "plain"], remove: [])
            try await database.query("INSERT INTO member_tags (member_id, tag, source) VALUES ($1, 'lipstick-fan', 'rule:lipstick-buyers')", [member])
            try await database.query("UPDATE members SET points = 1234, growth = 567, level = 'gold' WHERE id = $1", [member])

            let expected = counted
            let gateway = try await Gateway(configuration: try GatewayHarness.configuration(["FANFLOW_DATABASE_URL": url]),
                                            logger: Logger(label: "test.portrait"))
            do {
                try await gateway.application().test(.live) { client in
                    let (status, json, body) = try await Self.call(client, "/admin/v1/members/\(member)/portrait")
                    #expect(status == .ok, "\(body)")
                    Self.check(json, body: body, member: member, phone: phone, fixture: f, counted: expected, first: first)

                    // The absorbed member's id answers the survivor's portrait.
                    let (mergedStatus, merged, _) = try await Self.call(client, "/admin/v1/members/\(other)/portrait")
                    #expect(mergedStatus == .ok)
                    #expect((merged["member"] as? [String: Any])?["id"] as? Int == Int(member))

                    let unknown = try await Self.call(client, "/admin/v1/members/987654321/portrait")
                    #expect(unknown.0 == .notFound)
                    #expect((unknown.1["error"] as? [String: Any])?["code"] as? String == "unknown_member")
                    for bad in ["abc", "0", "-3", "99999999999999999999"] {
                        let (badStatus, badJSON, _) = try await Self.call(client, "/admin/v1/members/\(bad)/portrait")
                        #expect(badStatus == .badRequest, "\(bad)")
                        #expect((badJSON["error"] as? [String: Any])?["code"] as? String == "invalid_member_id")
                    }
                    #expect(try await Self.call(client, "/admin/v1/members/\(member)/portrait", headers: [:]).0 == .unauthorized)
                }
            } catch {
                await gateway.shutdown()
                await redis.close()
                throw error
            }
            await gateway.shutdown()
            await redis.close()
        }
    }

    static func check(_ json: [String: Any], body: String, member: Int64, phone: String, fixture f: Fixture, counted: [Envelope],
                      first: Envelope) {
        let view = json["member"] as? [String: Any]
        #expect(view?["id"] as? Int == Int(member))
        #expect(view?["nickname"] as? String == "Lily")
        #expect(view?["phoneBound"] as? Bool == true)
        #expect(view?["createdAt"] as? String != nil)
        #expect(!body.contains(String(phone.dropFirst(3))), "the phone number is never shown")

        let identities = (json["identities"] as? [[String: Any]] ?? []).map {
            "\($0["platform"] as? String ?? "")/\($0["app"] as? String ?? "")/\($0["openid"] as? String ?? "")/\($0["unionid"] as? String ?? "-")"
        }
        #expect(Set(identities) == ["wechat/\(f.app1)/oA/u-1", "wechat/\(f.app2)/oB/u-1", "wechat/\(f.app1)/oN/-"])

        let attributes = json["attributes"] as? [String: [String: Any]] ?? [:]
        #expect(Set(attributes.keys) == ["gender", "city", "birthday", "shoeSize", "vip", "language", "country", "hobby"])
        func attribute(_ name: String) -> (value: Any?, source: String?, updatedAt: String?) {
            (attributes[name]?["value"], attributes[name]?["source"] as? String, attributes[name]?["updatedAt"] as? String)
        }
        #expect(attribute("gender").value as? String == "female")
        #expect(attribute("gender").source == "server:crm")
        #expect(attribute("gender").updatedAt == RFC3339.format(f.at(1, 8)))
        #expect(attribute("city").value as? String == "上海")
        #expect(attribute("birthday").value as? String == "1990-05-17")
        #expect(attribute("shoeSize").value as? Int == 37)
        #expect(attribute("vip").value as? Bool == true)
        #expect(attribute("language").value as? String == "zh_CN")
        #expect(attribute("country").value as? String == "China")
        #expect(attribute("country").source == "wechat")
        #expect(attribute("hobby").value as? String == "running")
        #expect(attribute("hobby").updatedAt == RFC3339.format(f.at(1, 7)))

        // Expected activity, computed here from the events sent: the verified ones of the last 90 days.
        let activity = json["activity"] as? [String: Any]
        var hours = [Int](repeating: 0, count: 24)
        for event in counted { hours[f.calendar.component(.hour, from: event.occurredAt)] += 1 }
        #expect(activity?["hours"] as? [Int] == hours)
        let today = f.calendar.startOfDay(for: f.now)
        let recentDays = Set(counted.map { f.calendar.startOfDay(for: $0.occurredAt) }.filter { $0 > today.addingTimeInterval(-30 * 86_400) })
        #expect(activity?["activeDaysLast30"] as? Int == recentDays.count)
        #expect(activity?["firstSeen"] as? String == RFC3339.format(first.occurredAt))
        #expect(activity?["lastSeen"] as? String == counted.map(\.occurredAt).max().map(RFC3339.format))
        let sample = json["sample"] as? [String: Any]
        #expect(sample?["events"] as? Int == counted.count)
        #expect(sample?["truncated"] as? Bool == false)

        let interests = (json["interests"] as? [[String: Any]] ?? []).map {
            (topic: $0["topic"] as? String ?? "", weight: $0["weight"] as? Double ?? -1, sources: $0["sources"] as? [String] ?? [])
        }
        let weights = interests.map(\.weight)
        #expect(weights == weights.sorted(by: >), "interests are ordered by weight")
        let time = { (id: String) in counted.first { $0.id.hasSuffix(":\(id)") }?.occurredAt ?? .distantPast }
        let expected: [String: (Double, [String])] = [
            "lipstick": (weight([time("e3"), time("e4"), time("e6")], now: f.now) + 1, ["community", "page_path", "tag_group"]),
            "summer sale": (weight([time("e6"), time("e7")], now: f.now), ["page_title"]),
            "products": (weight([time("e6"), time("e7")], now: f.now), ["page_path"]),
            "red-01": (weight([time("e6")], now: f.now), ["page_path"]),
            "skincare": (weight([time("e5")], now: f.now), ["community"]),
            "running shoes": (weight([time("n2")], now: f.now), ["page_title"]),
            "beauty club": (1, ["tag_group"]),
        ]
        #expect(Set(interests.map(\.topic)) == Set(expected.keys), "no claimed page, no untitled root path")
        #expect(interests.first?.topic == "lipstick")
        for interest in interests {
            guard let (weight, sources) = expected[interest.topic] else { continue }
            #expect(abs(interest.weight - weight) < 0.002, "\(interest.topic): \(interest.weight) against \(weight)")
            #expect(interest.sources == sources, "\(interest.topic)")
        }

        let tags = (json["tags"] as? [[String: Any]] ?? []).map { "\($0["code"] as? String ?? ""):\($0["source"] as? String ?? "")" }
        #expect(tags == ["lipstick-fan:manual", "lipstick-fan:rule:lipstick-buyers", "plain:manual", "vip:manual"])
        let loyalty = json["loyalty"] as? [String: Any]
        #expect(loyalty?["points"] as? Int == 1234)
        #expect(loyalty?["growth"] as? Int == 567)
        #expect(loyalty?["level"] as? String == "gold")
    }

    @Test("profile fields: known names range-checked, others kept when short scalars; platform events carry known names only")
    func profileFields() {
        let now = Date(timeIntervalSince1970: 1_780_000_000)  // 2026-05-28
        func fields(_ kind: EventKind, _ attributes: [String: JSONValue], server: Bool = true) -> ProfileFields? {
            var marked = attributes
            if server { marked["sourceEventId"] = "x"; marked["sourceApp"] = "crm" }
            return ProfileFields.of(Envelope(id: "x", platform: .wechat, app: "a", kind: kind, subject: .init(openid: "o"),
                                             occurredAt: now, receivedAt: now, attributes: marked))
        }
        let checked = fields(.memberProfileUpdated, ["birthday": "2024-02-29", "gender": "unknown", "level": .number(2.5),
                                                     "note": .string(String(repeating: "x", count: 257)), "tags": .array([]),
                                                     "bad name": "x", "country": "  "])
        #expect(checked?.values == ["birthday": "2024-02-29", "gender": "unknown", "level": .number(2.5)])
        #expect(Set(checked?.refused.keys ?? [:].keys) == ["note", "tags", "bad name", "country"])
        #expect(checked?.source == .server(app: "crm"))
        for (birthday, valid) in [("2023-02-29", false), ("1899-12-31", false), ("1900-01-01", true), ("2026-05-28", true),
                                  ("2026-05-30", false), ("2026-5-01", false), ("2026-13-01", false)] {
            #expect((fields(.memberProfileUpdated, ["birthday": .string(birthday)])?.values["birthday"] != nil) == valid, "\(birthday)")
        }
        // A platform's event: known names only; a business event of another kind: none.
        #expect(fields(.subscribe, ["city": "Hangzhou", "content": "hi"], server: false)?.values == ["city": "Hangzhou"])
        #expect(fields(.subscribe, ["city": "Hangzhou"], server: false)?.source == .platform(.wechat))
        #expect(fields(.orderPaid, ["city": "Hangzhou"]) == nil)
        #expect(fields(.memberProfileUpdated, ["nickname": "Lily"]) == nil)
    }

    @Test("interest rules: topics from titles, path segments and community topics, once per event, halving every 30 days")
    func interestRules() {
        #expect(PortraitRules.pathTopics("https://b.example/Products/%E5%8F%A3%E7%BA%A2/index.html?q=1#x") == ["products", "口红"])
        #expect(PortraitRules.pathTopics("https://b.example") == [])
        #expect(PortraitRules.pathTopics("/a/12345/ok-2/") == ["ok-2"])
        #expect(PortraitRules.topic(String(repeating: "Ab ", count: 40))?.count == 64)
        let now = Date(timeIntervalSince1970: 1_780_000_000)
        let events = [
            SampledEvent(id: "1", occurredAt: now, kind: .pageView, platform: "h5", title: "Lipstick", url: "/lipstick", topic: nil),
            SampledEvent(id: "2", occurredAt: now.addingTimeInterval(-30 * 86_400), kind: .communityPost, platform: "wechat",
                         title: nil, url: nil, topic: "lipstick"),
            SampledEvent(id: "3", occurredAt: now, kind: .pageView, platform: "wechat", title: "Not a beacon", url: nil, topic: nil),
        ]
        let interests = PortraitRules.interests(events, tagGroups: ["Lipstick", "lipstick"], now: now)
        #expect(interests == [MemberPortrait.Interest(topic: "lipstick", weight: 2.5, sources: [.community, .pagePath, .pageTitle, .tagGroup])])
    }
}
