import Contracts
import Foundation
import Members
import PostgresClient

/// The profile attributes FanFlow names and checks; any other name is a brand's own attribute,
/// kept when it is a short scalar (``ProfileFields``).
public enum KnownProfileAttribute: String, CaseIterable, Sendable {
    case gender, city, province, country, birthday, language

    /// The three genders a profile may say; anything else is refused, not guessed at.
    public enum Gender: String, CaseIterable, Sendable { case male, female, unknown }

    /// A place name is 1-64 characters: the longest city or province names (内蒙古自治区, Llanfair…
    /// at 58) fit, and a paragraph does not.
    static let placeCharacters = 64
    /// Earliest birth year kept: a birthday before 1900 is a typo or a placeholder (0001-01-01).
    static let firstBirthYear = 1900
    /// The furthest-ahead zone (UTC+14, Kiribati): a birthday later than the event's date there is
    /// in the future everywhere.
    static let furthestZoneSeconds: Int64 = 14 * 3_600

    /// The value as it is kept, or why it is refused.
    func check(_ value: JSONValue, occurredAt: Date) -> Result<JSONValue, ProfileProblem> {
        switch self {
        case .gender:
            guard let text = value.string, Gender(rawValue: text) != nil else {
                return .failure(ProfileProblem("gender is one of male, female, unknown"))
            }
            return .success(.string(text))
        case .city, .province, .country:
            guard let text = value.string.map(ProfileFields.trimmed), (1...Self.placeCharacters).contains(text.count),
                  !text.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
                return .failure(ProfileProblem("\(rawValue) is a text of 1-\(Self.placeCharacters) characters"))
            }
            return .success(.string(text))
        case .birthday:
            guard let text = value.string, let days = Self.birthdayDays(text) else {
                return .failure(ProfileProblem("birthday is a real date YYYY-MM-DD, \(Self.firstBirthYear) or later"))
            }
            // Whole seconds of a plausible time (the edge refuses times outside 2000-2100): never traps.
            guard let seconds = Int64(exactly: occurredAt.timeIntervalSince1970.rounded(.down)),
                  days <= (seconds + Self.furthestZoneSeconds) / 86_400 else {
                return .failure(ProfileProblem("birthday is after the day of the event"))
            }
            return .success(.string(text))
        case .language:
            // A language tag as platforms write them: zh_CN, en, zh-Hant-TW (2-35 bytes, BCP 47's longest).
            guard let text = value.string, (2...35).contains(text.utf8.count), text.utf8.first.map(Self.isLetter) == true,
                  text.utf8.allSatisfy({ Self.isLetter($0) || ($0 >= 48 && $0 <= 57) || $0 == 45 || $0 == 95 }) else {
                return .failure(ProfileProblem("language is a language tag such as zh_CN or en (2-35 letters, digits, - and _)"))
            }
            return .success(.string(text))
        }
    }

    static func isLetter(_ byte: UInt8) -> Bool { (byte >= 65 && byte <= 90) || (byte >= 97 && byte <= 122) }

    /// Days since 1970-01-01 of a real `YYYY-MM-DD` date from 1900 on; nil for anything else.
    static func birthdayDays(_ text: String) -> Int64? {
        let bytes = Array(text.utf8)
        guard bytes.count == 10, bytes[4] == 45, bytes[7] == 45 else { return nil }
        func number(_ range: Range<Int>) -> Int64? {
            var value: Int64 = 0
            for byte in bytes[range] {
                guard byte >= 48, byte <= 57 else { return nil }
                value = value * 10 + Int64(byte - 48)  // at most 4 digits: far from overflow
            }
            return value
        }
        guard let year = number(0..<4), let month = number(5..<7), let day = number(8..<10),
              year >= Int64(firstBirthYear), (1...12).contains(month) else { return nil }
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
        let lengths: [Int64] = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
        guard (1...lengths[Int(month - 1)]).contains(day) else { return nil }
        // Days from civil (proleptic Gregorian), year 1900-9999: small numbers throughout.
        let y = month <= 2 ? year - 1 : year
        let era = y / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }
}

/// Why one field of an event was not kept.
public struct ProfileProblem: Error, Sendable, Equatable, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// Where a profile attribute came from: a platform's own profile (`wechat`, `alipay`…) or the
/// brand's `member.profile_updated` (`server:<the server app that signed it>`).
public enum ProfileSource: Sendable, Equatable, CustomStringConvertible {
    case platform(Platform)
    case server(app: String?)

    public var description: String {
        switch self {
        case .platform(let platform): platform.rawValue
        case .server(let app?): "server:\(app)"
        case .server(nil): "server"
        }
    }
}

/// The profile fields one event carries, checked.
public struct ProfileFields: Sendable, Equatable {
    public let source: ProfileSource
    /// Kept values by attribute name.
    public let values: [String: JSONValue]
    /// Refused fields by attribute name, with why.
    public let refused: [String: ProfileProblem]

    /// At most 32 attributes in one event: a profile, not a data dump. An event with more is
    /// refused whole (which 32 would be kept is not the sender's to guess).
    public static let maximumPerEvent = 32
    /// A brand's own attribute is a scalar of at most 256 bytes (a text's UTF-8).
    public static let maximumValueBytes = 256
    /// A brand's own attribute name: 1-64 bytes of letters, digits, `_`, `-` and `.`.
    public static let maximumNameBytes = 64
    /// Attributes that are not profile fields: what the gateway adds to every server event, and the
    /// nickname, which is the member's own (`members.nickname`, written for every event that has one).
    static let notProfile: Set<String> = ["sourceApp", "sourceEventId", "nickname"]

    /// The profile an event carries; nil when it carries none. `member.profile_updated` (a server
    /// event) carries every attribute but ``notProfile``; an event a platform delivered (a webhook:
    /// no `sourceEventId`) carries the known names only, when its attributes have them. Business
    /// events of other kinds carry none: an order's `city` is where it shipped, not a profile.
    public static func of(_ event: Envelope) -> ProfileFields? {
        let serverEvent = event.attributes["sourceEventId"] != nil
        let candidates: [String: JSONValue]
        let source: ProfileSource
        if event.kind == .memberProfileUpdated {
            candidates = event.attributes.filter { !notProfile.contains($0.key) }
            source = .server(app: event.attributes["sourceApp"]?.string)
        } else if !serverEvent {
            candidates = event.attributes.filter { KnownProfileAttribute(rawValue: $0.key) != nil }
            source = .platform(event.platform)
        } else {
            return nil
        }
        guard !candidates.isEmpty else { return nil }
        guard candidates.count <= maximumPerEvent else {
            let problem = ProfileProblem("at most \(maximumPerEvent) profile attributes in one event, got \(candidates.count)")
            return ProfileFields(source: source, values: [:], refused: candidates.mapValues { _ in problem })
        }
        var values: [String: JSONValue] = [:]
        var refused: [String: ProfileProblem] = [:]
        for (name, value) in candidates {
            switch check(name: name, value: value, occurredAt: event.occurredAt) {
            case .success(let kept): values[name] = kept
            case .failure(let problem): refused[name] = problem
            }
        }
        return ProfileFields(source: source, values: values, refused: refused)
    }

    static func check(name: String, value: JSONValue, occurredAt: Date) -> Result<JSONValue, ProfileProblem> {
        if let known = KnownProfileAttribute(rawValue: name) { return known.check(value, occurredAt: occurredAt) }
        guard (1...maximumNameBytes).contains(name.utf8.count), name.utf8.allSatisfy({
            KnownProfileAttribute.isLetter($0) || ($0 >= 48 && $0 <= 57) || $0 == 45 || $0 == 46 || $0 == 95
        }) else {
            return .failure(ProfileProblem("an attribute name is 1-\(maximumNameBytes) letters, digits, _, - and ."))
        }
        switch value {
        case .string(let text) where text.utf8.count <= maximumValueBytes && !text.utf8.contains(0): return .success(value)
        case .integer, .bool: return .success(value)
        case .number(let number) where number.isFinite: return .success(value)
        default: return .failure(ProfileProblem("\(name) is a text of at most \(maximumValueBytes) bytes, a number or a boolean"))
        }
    }

    static func trimmed(_ text: String) -> String { text.trimmingCharacters(in: .whitespacesAndNewlines) }
}

/// What the profile handler did with a batch.
public enum ProfileOutcome: Sendable, Equatable {
    /// A member's attribute took the value of a newer event.
    case updated(member: Int64, attribute: String)
    /// A field was refused (its value out of range); the event's other fields were still kept.
    case refused(event: String, attribute: String, reason: String)
}

/// Profile attributes, live: each verified event that carries profile fields (``ProfileFields``)
/// writes them to its member's `member_attributes` inside the batch's transaction. The newest
/// `occurredAt` wins per attribute: an older event arriving late, a redelivery or a retried batch
/// changes nothing (an equal time keeps the value stored first).
///
/// Subjects resolve as tag rules resolve them: a member token's member through merges
/// (`member_survivor`), an openid through its identity, which merges move to the survivor.
public struct ProfileAttributeService: Sendable {
    /// Platform events and the brand's server events (routed under the member's platform).
    /// Beacons never carry a profile: a page is not a source of truth about a person.
    public static let selector = EventSelector(["wechat.#", "alipay.#", "weibo.#", "qq.#"])

    public var selector: EventSelector { Self.selector }

    let members: MemberDirectory

    public init(database: PostgresPool) {
        members = MemberDirectory(database: database)
    }

    public struct Plan: Sendable {
        let updates: [Update]
        let refused: [ProfileOutcome]
    }

    struct Update: Sendable {
        let event: String
        let identity: Identity?
        let tokenMember: Int64?
        let occurredAt: Date
        let fields: ProfileFields
    }

    /// Checks every verified event's profile fields and makes sure their subjects are members (a
    /// first sighting creates one, as for points and tag rules).
    public func prepare(_ events: [Envelope]) async throws -> Plan {
        var updates: [Update] = []
        var refused: [ProfileOutcome] = []
        var identities: [Identity: String?] = [:]
        for event in events where event.subject.verified {
            guard let fields = ProfileFields.of(event) else { continue }
            let identity = event.platformIdentity, tokenMember = event.tokenMember
            guard identity != nil || tokenMember != nil else { continue }
            for (name, problem) in fields.refused.sorted(by: { $0.key < $1.key }) {
                refused.append(.refused(event: event.id, attribute: name, reason: problem.description))
            }
            guard !fields.values.isEmpty else { continue }
            updates.append(Update(event: event.id, identity: identity, tokenMember: tokenMember, occurredAt: event.occurredAt, fields: fields))
            if let identity, identities[identity] == nil || event.subject.unionid != nil {
                identities.updateValue(event.subject.unionid, forKey: identity)
            }
        }
        _ = try await members.resolve(identities)
        return Plan(updates: updates, refused: refused)
    }

    public func handle(_ plan: Plan, firstStored: Set<String>, in connection: isolated PostgresConnection) throws -> [ProfileOutcome] {
        var columns = Columns()
        for update in plan.updates {
            // Microseconds, as timestamptz keeps them and as the event's history row has them; a
            // time the edge let through (2000-2100) is far inside Int64, and any other is skipped.
            guard let micros = Int64(exactly: (update.occurredAt.timeIntervalSince1970 * 1_000_000).rounded()) else { continue }
            for (name, value) in update.fields.values {
                columns.append(update, name: name, value: value, micros: micros)
            }
        }
        guard !columns.names.isEmpty else { return plan.refused }
        // One row per member and name (the newest of the batch, ties by event id), written in key
        // order: ON CONFLICT may touch a row once per statement, and two batches writing the same
        // members lock them in the same order.
        let rows = try connection.query("""
            WITH fields AS (
                SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[],
                                     $8::bigint[], $9::text[])
                    AS f (platform, app, openid, token_member, name, value, source, micros, event_id)
            ), resolved AS (
                SELECT CASE WHEN f.token_member <> 0 THEN (SELECT member_survivor(m.id) FROM members m WHERE m.id = f.token_member)
                            ELSE i.member_id END AS member_id,
                       f.name, f.value, f.source, timestamptz 'epoch' + f.micros * interval '1 microsecond' AS occurred_at, f.event_id
                FROM fields f
                LEFT JOIN member_identities i ON f.token_member = 0 AND i.platform = f.platform AND i.app = f.app AND i.openid = f.openid
            ), newest AS (
                SELECT DISTINCT ON (member_id, name) * FROM resolved WHERE member_id IS NOT NULL
                ORDER BY member_id, name, occurred_at DESC, event_id DESC
            )
            INSERT INTO member_attributes AS a (member_id, name, value, source, occurred_at)
            SELECT member_id, name, value::jsonb, source, occurred_at FROM newest ORDER BY member_id, name
            ON CONFLICT (member_id, name) DO UPDATE SET value = excluded.value, source = excluded.source, occurred_at = excluded.occurred_at
                WHERE excluded.occurred_at > a.occurred_at
            RETURNING member_id, name
            """, [PostgresArray(columns.platforms), PostgresArray(columns.apps), PostgresArray(columns.openids),
                  PostgresArray(columns.tokenMembers), PostgresArray(columns.names), PostgresArray(columns.values),
                  PostgresArray(columns.sources), PostgresArray(columns.micros), PostgresArray(columns.events)])
        var outcomes = plan.refused
        for row in rows {
            outcomes.append(.updated(member: try row.requiredInt64("member_id"), attribute: try row.requiredString("name")))
        }
        return outcomes
    }

    /// The batch's fields, as columns for one statement.
    struct Columns {
        var platforms: [String] = [], apps: [String] = [], openids: [String] = [], tokenMembers: [Int64] = []
        var names: [String] = [], values: [String] = [], sources: [String] = [], micros: [Int64] = [], events: [String] = []

        mutating func append(_ update: Update, name: String, value: JSONValue, micros: Int64) {
            platforms.append(update.identity?.platform.rawValue ?? "")
            apps.append(update.identity?.app ?? "")
            openids.append(update.identity?.openid ?? "")
            tokenMembers.append(update.tokenMember ?? 0)
            names.append(name)
            values.append(String(decoding: value.jsonBytes, as: UTF8.self))
            sources.append(update.fields.source.description)
            self.micros.append(micros)
            events.append(update.event)
        }
    }
}

/// Profile attributes' part of a merge (``MemberMergeParticipant``): the absorbed member's
/// attributes join the survivor's, the newer of the two winning per name, as if both members'
/// events had been one member's all along.
public struct ProfileAttributeMerge: MemberMergeParticipant {
    public init() {}

    public func merge(_ absorbed: Int64, into survivor: Int64, cause eventID: String, on connection: isolated PostgresConnection) throws {
        try connection.query("""
            INSERT INTO member_attributes AS a (member_id, name, value, source, occurred_at)
            SELECT $2, name, value, source, occurred_at FROM member_attributes WHERE member_id = $1 ORDER BY name
            ON CONFLICT (member_id, name) DO UPDATE SET value = excluded.value, source = excluded.source, occurred_at = excluded.occurred_at
                WHERE excluded.occurred_at > a.occurred_at
            """, [absorbed, survivor])
        try connection.query("DELETE FROM member_attributes WHERE member_id = $1", [absorbed])
    }
}
