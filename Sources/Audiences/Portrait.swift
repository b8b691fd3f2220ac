import Contracts
import Foundation
import PostgresClient

/// One member at a glance (`GET /admin/v1/members/{id}/portrait`): who they are on which platforms,
/// what their profiles say, when they are active, what they care about, their tags and standing.
///
/// Channels (the first and last channel, the referrer) are not here yet: they arrive with the
/// channels module, which attributes them.
public struct MemberPortrait: Sendable, Equatable {
    public struct Member: Sendable, Equatable {
        public let id: Int64
        public let nickname: String
        /// Whether a phone number is bound; the number itself is never shown.
        public let phoneBound: Bool
        public let createdAt: Date
    }

    public struct PlatformIdentity: Sendable, Equatable {
        public let platform: Platform
        public let app: String
        public let openid: String
        public let unionid: String?
    }

    public struct Attribute: Sendable, Equatable {
        public let value: JSONValue
        /// ``ProfileSource``'s text: `wechat`, `server:<app>`…
        public let source: String
        /// When the event that set it happened.
        public let updatedAt: Date
    }

    public struct Activity: Sendable, Equatable {
        /// The member's first and last verified events, over all their history.
        public let firstSeen: Date?
        public let lastSeen: Date?
        /// Distinct local days (program time zone) of the last 30, today included, with an event.
        public let activeDaysLast30: Int
        /// Events of the sample by local hour of day, 0-23.
        public let hours: [Int]
    }

    public struct Interest: Sendable, Equatable {
        public let topic: String
        public let weight: Double
        public let sources: [InterestSource]
    }

    public struct Loyalty: Sendable, Equatable {
        public let points: Int64
        public let growth: Int64
        public let level: String
    }

    /// The events `activity.hours`, `activeDaysLast30` and `interests` were computed from.
    public struct Sample: Sendable, Equatable {
        public let from: Date
        public let to: Date
        public let events: Int
        /// More events fell in the period than were read: the oldest of it were left out.
        public let truncated: Bool
    }

    public let member: Member
    public let identities: [PlatformIdentity]
    public let attributes: [String: Attribute]
    public let activity: Activity
    public let interests: [Interest]
    public let tags: [MemberTag]
    public let loyalty: Loyalty
    public let sample: Sample
}

/// Where an interest came from.
public enum InterestSource: String, Sendable, CaseIterable, Comparable {
    case pageTitle = "page_title"
    case pagePath = "page_path"
    case community
    case tagGroup = "tag_group"

    public static func < (a: InterestSource, b: InterestSource) -> Bool { a.rawValue < b.rawValue }
}

/// One event of a portrait's sample: what activity and interests read of it.
struct SampledEvent: Sendable, Equatable {
    let id: String
    let occurredAt: Date
    let kind: EventKind
    let platform: String
    /// A verified page view's `title` and `url`; a community post's or comment's `topic`.
    let title: String?
    let url: String?
    let topic: String?
}

/// The rules a portrait is computed by, with the bounds that keep one request's work small.
public enum PortraitRules {
    /// Activity hours and interests read the last 90 days…
    public static let sampleDays = 90
    /// …at most their newest 10,000 events (a member active every minute of a day has 1,440).
    public static let sampleEvents = 10_000
    /// `activeDaysLast30`'s span in local days, today included.
    public static let activeDays = 30
    /// An interest's weight halves every 30 days of its event's age.
    public static let halfLifeDays = 30.0
    /// The top 20 topics are shown.
    public static let topics = 20
    /// A topic is at most 64 characters: longer titles are cut there.
    public static let topicCharacters = 64
    /// Events dated up to 5 minutes ahead count (server events may be, by the edge's rule); later
    /// ones are a wrong clock and are left out.
    public static let clockSkewSeconds = 300.0
    /// Path segments read from one URL: a page's topic is in its first few.
    static let pathSegments = 8
    /// Member ids followed through merges for the token beacons they sent.
    static let mergedMembers = 1_000

    /// `activeDaysLast30` and `hours` of the sample's event times.
    static func activity(_ times: [Date], now: Date, timeZone: TimeZone) -> (activeDays: Int, hours: [Int]) {
        func local(_ date: Date) -> (day: Int64, hour: Int)? {
            // Whole seconds of times read back from timestamptz (2000-2100 by the edge's rule): no trap.
            guard let seconds = Int64(exactly: date.timeIntervalSince1970.rounded(.down)) else { return nil }
            let shifted = seconds + Int64(timeZone.secondsFromGMT(for: date))
            let day = shifted >= 0 ? shifted / 86_400 : (shifted - 86_399) / 86_400
            return (day, Int((shifted - day * 86_400) / 3_600))
        }
        var hours = [Int](repeating: 0, count: 24)
        var days: Set<Int64> = []
        let today = local(now)?.day
        for time in times {
            guard let (day, hour) = local(time) else { continue }
            hours[hour] += 1
            if let today, day <= today, day > today - Int64(activeDays) { days.insert(day) }
        }
        return (days.count, hours)
    }

    /// Topics weighted by recency: each event adds 0.5^(age in days / 30) to every topic it names
    /// (once per event, however many of its fields name it), each tag group adds 1; the top 20 by
    /// weight (rounded to 3 decimals), ties by topic.
    static func interests(_ events: [SampledEvent], tagGroups: [String], now: Date) -> [MemberPortrait.Interest] {
        var weights: [String: Double] = [:]
        var sources: [String: Set<InterestSource>] = [:]
        func add(_ named: [String: Set<InterestSource>], weight: Double) {
            for (topic, from) in named {
                weights[topic, default: 0] += weight
                sources[topic, default: []].formUnion(from)
            }
        }
        for event in events {
            var named: [String: Set<InterestSource>] = [:]
            if event.kind == .pageView, event.platform == Platform.h5.rawValue {
                if let title = event.title.flatMap(topic) { named[title, default: []].insert(.pageTitle) }
                for segment in event.url.map(pathTopics) ?? [] { named[segment, default: []].insert(.pagePath) }
            }
            if event.kind == .communityPost || event.kind == .communityComment, let topic = event.topic.flatMap(topic) {
                named[topic, default: []].insert(.community)
            }
            guard !named.isEmpty else { continue }
            let age = max(0, now.timeIntervalSince(event.occurredAt)) / 86_400
            add(named, weight: pow(0.5, age / halfLifeDays))
        }
        var groups: [String: Set<InterestSource>] = [:]
        for group in tagGroups { if let topic = topic(group) { groups[topic] = [.tagGroup] } }
        add(groups, weight: 1)
        return weights.map { topic, weight in
            MemberPortrait.Interest(topic: topic, weight: (weight * 1_000).rounded() / 1_000, sources: (sources[topic] ?? []).sorted())
        }
        .sorted { $0.weight != $1.weight ? $0.weight > $1.weight : $0.topic < $1.topic }
        .prefix(topics).map { $0 }
    }

    /// A text as a topic: whitespace runs made one space, trimmed, lower-cased, cut at 64
    /// characters; nil when nothing is left.
    static func topic(_ text: String) -> String? {
        let words = text.split(whereSeparator: { $0.isWhitespace || $0.isNewline })
        let joined = words.joined(separator: " ").lowercased()
        guard !joined.isEmpty else { return nil }
        return joined.count > topicCharacters ? String(joined.prefix(topicCharacters)) : joined
    }

    /// Topics of a URL's path: its first 8 segments, percent-decoded, each without a file
    /// extension (`red-01.html` is `red-01`); a segment counts when it has 2 or more characters and
    /// a letter, and is not `index`. Query and fragment are not read.
    static func pathTopics(_ url: String) -> [String] {
        var rest = Substring(url)
        if let scheme = rest.range(of: "://") {
            rest = rest[scheme.upperBound...]
            guard let slash = rest.firstIndex(of: "/") else { return [] }
            rest = rest[slash...]
        }
        if let end = rest.firstIndex(where: { $0 == "?" || $0 == "#" }) { rest = rest[..<end] }
        var topics: [String] = []
        for raw in rest.split(separator: "/").prefix(pathSegments) {
            var segment = String(raw).removingPercentEncoding ?? String(raw)
            if let dot = segment.lastIndex(of: "."), dot != segment.startIndex { segment = String(segment[..<dot]) }
            guard let topic = topic(segment), topic.count >= 2, topic.contains(where: \.isLetter), topic != "index" else { continue }
            if !topics.contains(topic) { topics.append(topic) }
        }
        return topics
    }
}

/// Reads portraits from PostgreSQL. Every query has an index path: the member and its identities
/// by key, events by `(platform, app, openid, occurred_at)` per identity and by
/// `(member_id, occurred_at)` per member id its token beacons carried (its own and those of the
/// members merged into it), each cut at the sample's size before anything is sorted.
public struct PortraitReader: Sendable {
    let database: PostgresPool
    let timeZone: TimeZone

    public init(database: PostgresPool, timeZone: TimeZone) {
        self.database = database
        self.timeZone = timeZone
    }

    /// The portrait of `member`, or of the member it was merged into; nil when there is no such member.
    public func portrait(of member: Int64, now: Date = Date()) async throws -> MemberPortrait? {
        let timeZone = self.timeZone
        return try await database.transaction { connection in
            // One snapshot for every read: a merge committing halfway cannot split the portrait.
            try connection.query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            return try Self.read(member, now: now, timeZone: timeZone, on: connection)
        }
    }

    static func read(_ requested: Int64, now: Date, timeZone: TimeZone, on connection: isolated PostgresConnection) throws -> MemberPortrait? {
        guard let id = try TagStore.survivor(requested, on: connection) else { return nil }
        guard let row = try connection.query("""
            SELECT nickname, phone IS NOT NULL AS phone_bound, extract(epoch FROM created_at)::float8 AS created_at, points, growth, level
            FROM members WHERE id = $1
            """, [id]).first else { return nil }
        let member = MemberPortrait.Member(id: id, nickname: try row.requiredString("nickname"), phoneBound: try row.requiredBool("phone_bound"),
                                           createdAt: Date(timeIntervalSince1970: try row.requiredDouble("created_at")))
        let loyalty = MemberPortrait.Loyalty(points: try row.requiredInt64("points"), growth: try row.requiredInt64("growth"),
                                             level: try row.requiredString("level"))

        let identities = try connection.query("""
            SELECT platform, app, openid, unionid FROM member_identities WHERE member_id = $1 ORDER BY created_at, platform, app, openid
            """, [id]).map { row in
            let text = try row.requiredString("platform")
            guard let platform = Platform(rawValue: text) else { throw PostgresError(.column, "member_identities: unknown platform \(text)") }
            return MemberPortrait.PlatformIdentity(platform: platform, app: try row.requiredString("app"), openid: try row.requiredString("openid"),
                                                   unionid: try row.optionalString("unionid"))
        }

        var attributes: [String: MemberPortrait.Attribute] = [:]
        for row in try connection.query("""
            SELECT name, value::text AS value, source, extract(epoch FROM occurred_at)::float8 AS occurred_at
            FROM member_attributes WHERE member_id = $1
            """, [id]) {
            let name = try row.requiredString("name"), text = try row.requiredString("value")
            guard let value = try? JSONValue.parse(Array(text.utf8)) else {
                throw PostgresError(.column, "member_attributes: \(name) of member \(id) is not JSON")
            }
            attributes[name] = MemberPortrait.Attribute(value: value, source: try row.requiredString("source"),
                                                        updatedAt: Date(timeIntervalSince1970: try row.requiredDouble("occurred_at")))
        }

        let tags = try TagStore.tags(of: id, on: connection) ?? []
        let groups = try connection.query("""
            SELECT DISTINCT g.tag_group FROM member_tags t JOIN tags g ON g.code = t.tag
            WHERE t.member_id = $1 AND \(TagStore.current) AND g.tag_group IS NOT NULL
            """, [id]).map { row throws(PostgresRowError) in try row.requiredString("tag_group") }

        // The member ids its token beacons carry: its own and, through the merges, those of the
        // members merged into it (UNION: a cycle, which merges never make, would still end).
        let tokenMembers = try connection.query("""
            WITH RECURSIVE absorbed (id) AS (
                SELECT $1::bigint
                UNION
                SELECT m.from_member FROM absorbed a JOIN member_merges m ON m.into_member = a.id
            )
            SELECT id FROM absorbed LIMIT \(PortraitRules.mergedMembers)
            """, [id]).map { row throws(PostgresRowError) in try row.requiredInt64("id") }

        let until = now.addingTimeInterval(PortraitRules.clockSkewSeconds)
        let since = now.addingTimeInterval(-Double(PortraitRules.sampleDays) * 86_400)
        let subjects = """
            keys AS (SELECT platform, app, openid FROM member_identities WHERE member_id = $1),
            tokens AS (SELECT unnest($2::bigint[]) AS id)
            """
        let ends = try connection.query("""
            WITH \(subjects), ends AS (
                SELECT (SELECT e.occurred_at FROM events e WHERE e.platform = k.platform AND e.app = k.app AND e.openid = k.openid
                            AND e.occurred_at <= $3 AND e.verified ORDER BY e.occurred_at LIMIT 1) AS first,
                       (SELECT e.occurred_at FROM events e WHERE e.platform = k.platform AND e.app = k.app AND e.openid = k.openid
                            AND e.occurred_at <= $3 AND e.verified ORDER BY e.occurred_at DESC LIMIT 1) AS last
                FROM keys k
                UNION ALL
                SELECT (SELECT e.occurred_at FROM events e WHERE e.member_id = t.id AND e.occurred_at <= $3 AND e.verified
                            ORDER BY e.occurred_at LIMIT 1),
                       (SELECT e.occurred_at FROM events e WHERE e.member_id = t.id AND e.occurred_at <= $3 AND e.verified
                            ORDER BY e.occurred_at DESC LIMIT 1)
                FROM tokens t
            )
            SELECT extract(epoch FROM min(first))::float8 AS first_seen, extract(epoch FROM max(last))::float8 AS last_seen FROM ends
            """, [id, PostgresArray(tokenMembers), until]).first

        // One more than the sample holds, to know whether the period had more.
        let rows = try connection.query("""
            WITH \(subjects)
            SELECT id, kind, platform, extract(epoch FROM occurred_at)::float8 AS occurred_at,
                   CASE WHEN kind = 'page_view' AND platform = 'h5' AND jsonb_typeof(attributes->'title') = 'string'
                        THEN attributes->>'title' END AS title,
                   CASE WHEN kind = 'page_view' AND platform = 'h5' AND jsonb_typeof(attributes->'url') = 'string'
                        THEN attributes->>'url' END AS url,
                   CASE WHEN kind IN ('community.post', 'community.comment') AND jsonb_typeof(attributes->'topic') = 'string'
                        THEN attributes->>'topic' END AS topic
            FROM (
                SELECT s.* FROM keys k CROSS JOIN LATERAL (
                    SELECT e.id, e.kind, e.platform, e.occurred_at, e.attributes FROM events e
                    WHERE e.platform = k.platform AND e.app = k.app AND e.openid = k.openid
                      AND e.occurred_at >= $3 AND e.occurred_at <= $4 AND e.verified
                    ORDER BY e.occurred_at DESC LIMIT $5) s
                UNION ALL
                SELECT s.* FROM tokens t CROSS JOIN LATERAL (
                    SELECT e.id, e.kind, e.platform, e.occurred_at, e.attributes FROM events e
                    WHERE e.member_id = t.id AND e.occurred_at >= $3 AND e.occurred_at <= $4 AND e.verified
                    ORDER BY e.occurred_at DESC LIMIT $5) s
            ) sample
            ORDER BY occurred_at DESC, id LIMIT $5
            """, [id, PostgresArray(tokenMembers), since, until, PortraitRules.sampleEvents + 1])
        var sample: [SampledEvent] = []
        var seen: Set<String> = []
        for row in rows {
            let eventID = try row.requiredString("id")
            // A subject found both by openid and by token is one event, counted once.
            guard seen.insert(eventID).inserted else { continue }
            sample.append(SampledEvent(id: eventID, occurredAt: Date(timeIntervalSince1970: try row.requiredDouble("occurred_at")),
                                       kind: EventKind(try row.requiredString("kind")), platform: try row.requiredString("platform"),
                                       title: try row.optionalString("title"), url: try row.optionalString("url"),
                                       topic: try row.optionalString("topic")))
        }
        let truncated = sample.count > PortraitRules.sampleEvents
        if truncated { sample.removeLast(sample.count - PortraitRules.sampleEvents) }

        let (activeDays, hours) = PortraitRules.activity(sample.map(\.occurredAt), now: now, timeZone: timeZone)
        let activity = MemberPortrait.Activity(
            firstSeen: try ends?.optionalDouble("first_seen").map(Date.init(timeIntervalSince1970:)),
            lastSeen: try ends?.optionalDouble("last_seen").map(Date.init(timeIntervalSince1970:)),
            activeDaysLast30: activeDays, hours: hours)
        return MemberPortrait(member: member, identities: identities, attributes: attributes, activity: activity,
                              interests: PortraitRules.interests(sample, tagGroups: groups, now: now), tags: tags,
                              loyalty: loyalty, sample: MemberPortrait.Sample(from: since, to: until, events: sample.count, truncated: truncated))
    }
}
