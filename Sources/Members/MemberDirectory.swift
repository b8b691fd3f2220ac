import Contracts
import Foundation
import PostgresClient

/// Resolves platform identities to members, creating a member on first sight.
///
/// A unionid links the apps of one WeChat open platform: an openid seen for the first time with a
/// unionid another identity already carries joins that identity's member. Concurrent first
/// sightings of one openid race on the identity's primary key; the loser drops the member it made
/// and takes the winner's, so one openid is always one member.
public struct MemberDirectory: Sendable {
    let database: PostgresPool

    public init(database: PostgresPool) { self.database = database }

    /// Member ids for every identity (one query for those already known).
    public func resolve(_ identities: [Identity: String?]) async throws -> [Identity: Int64] {
        guard !identities.isEmpty else { return [:] }
        let list = Array(identities.keys)
        // Arrays joined through unnest: the primary key is probed once per identity, where a long
        // row-constructor IN list would make the planner scan.
        let rows = try await database.query("""
            SELECT i.platform, i.app, i.openid, i.member_id, i.unionid
            FROM unnest($1::text[], $2::text[], $3::text[]) AS k(platform, app, openid)
            JOIN member_identities i ON i.platform = k.platform AND i.app = k.app AND i.openid = k.openid
            """, [PostgresArray(list.map(\.platform.rawValue)), PostgresArray(list.map(\.app)), PostgresArray(list.map(\.openid))])
        var found: [Identity: Int64] = [:]
        var missingUnionid: [Identity] = []
        for row in rows {
            guard let platform = Platform(rawValue: row.string("platform") ?? ""), let member = row.int("member_id") else { continue }
            let identity = Identity(platform: platform, app: row.string("app") ?? "", openid: row.string("openid") ?? "")
            found[identity] = Int64(member)
            if row.string("unionid") == nil, identities[identity] ?? nil != nil { missingUnionid.append(identity) }
        }
        for identity in missingUnionid {
            try await database.query("""
                UPDATE member_identities SET unionid = $4 WHERE platform = $1 AND app = $2 AND openid = $3 AND unionid IS NULL
                """, [identity.platform.rawValue, identity.app, identity.openid, identities[identity] ?? nil])
        }
        let missing = list.filter { found[$0] == nil }
        // An openid with a unionid may belong to a member already known on the platform: one by one.
        for identity in missing where identities[identity] ?? nil != nil {
            found[identity] = try await create(identity, unionid: identities[identity] ?? nil)
        }
        let plain = missing.filter { identities[$0] ?? nil == nil }
        if !plain.isEmpty {
            found.merge(try await createAll(plain)) { $1 }
        }
        return found
    }

    /// First sightings without a unionid, in one transaction: as many members as identities, the
    /// identities inserted in key order (so two batches racing on the same openids cannot
    /// deadlock), and the members of identities another worker inserted first deleted again.
    private func createAll(_ identities: [Identity]) async throws -> [Identity: Int64] {
        let sorted = identities.sorted { ($0.platform.rawValue, $0.app, $0.openid) < ($1.platform.rawValue, $1.app, $1.openid) }
        return try await database.transaction { connection in
            let ids = try connection.query("INSERT INTO members (level) SELECT '' FROM generate_series(1, $1) RETURNING id",
                                           [sorted.count]).compactMap { $0.int("id").map(Int64.init) }
            guard ids.count == sorted.count else { throw PostgresError(.usage, "expected \(sorted.count) new members, got \(ids.count)") }
            var rows: [String] = []
            var parameters: [any PostgresEncodable] = []
            for (index, (identity, id)) in zip(sorted, ids).enumerated() {
                rows.append("($\(index * 4 + 1),$\(index * 4 + 2),$\(index * 4 + 3),$\(index * 4 + 4))")
                parameters += [identity.platform.rawValue, identity.app, identity.openid, id] as [any PostgresEncodable]
            }
            let inserted = try connection.query("""
                INSERT INTO member_identities (platform, app, openid, member_id) VALUES \(rows.joined(separator: ","))
                ON CONFLICT (platform, app, openid) DO NOTHING RETURNING member_id
                """, parameters)
            let used = Set(inserted.compactMap { $0.int("member_id").map(Int64.init) })
            var result: [Identity: Int64] = [:]
            var lost: [Identity] = []
            for (identity, id) in zip(sorted, ids) {
                if used.contains(id) { result[identity] = id } else { lost.append(identity) }
            }
            let unused = ids.filter { !used.contains($0) }
            if !unused.isEmpty {
                try connection.query("DELETE FROM members WHERE id = ANY($1::bigint[])", [PostgresArray(unused)])
            }
            // Taken by another worker's batch that committed first: its member is the member.
            for identity in lost {
                guard let winner = try connection.query("""
                    SELECT member_id FROM member_identities WHERE platform = $1 AND app = $2 AND openid = $3
                    """, [identity.platform.rawValue, identity.app, identity.openid]).first?.int("member_id") else {
                    throw PostgresError(.usage, "identity vanished while resolving it")
                }
                result[identity] = Int64(winner)
            }
            return result
        }
    }

    public func resolve(_ identity: Identity, unionid: String? = nil) async throws -> Int64 {
        guard let member = try await resolve([identity: unionid])[identity] else {
            throw PostgresError(.usage, "identity was not resolved")
        }
        return member
    }

    /// Nicknames the brand's events carried (`nickname`, from its sign-up form or mini-program
    /// profile: WeChat no longer gives them out), for push templates' `{{nickname}}`. One statement;
    /// an unchanged name is not written again.
    public func name(_ nicknames: [Int64: String]) async throws {
        guard !nicknames.isEmpty else { return }
        var rows: [String] = []
        var parameters: [any PostgresEncodable] = []
        for (index, (member, nickname)) in nicknames.sorted(by: { $0.key < $1.key }).enumerated() {
            rows.append("($\(index * 2 + 1)::bigint, $\(index * 2 + 2)::text)")
            parameters += [member, nickname] as [any PostgresEncodable]
        }
        try await database.query("""
            UPDATE members m SET nickname = n.nickname, updated_at = now() FROM (VALUES \(rows.joined(separator: ","))) AS n(id, nickname)
            WHERE m.id = n.id AND m.nickname IS DISTINCT FROM n.nickname
            """, parameters)
    }

    /// A nickname as an event may carry it: trimmed, 1-64 characters.
    public static func nickname(in event: Envelope) -> String? {
        guard let text = event.attributes["nickname"]?.string?.trimmingCharacters(in: .whitespacesAndNewlines),
              (1...64).contains(text.count) else { return nil }
        return text
    }

    /// Members named by id (a member token's), as they stand now: a member merged into another
    /// stands for its survivor (followed at most 16 merges deep), and each comes with one of its
    /// identities (the first by platform, app, openid) for what is announced about its grants. An
    /// id with no member, or a member with no identity, is absent: it is never created here.
    public func members(_ ids: Set<Int64>) async throws -> [Int64: (member: Int64, identity: Identity)] {
        guard !ids.isEmpty else { return [:] }
        let rows = try await database.query("""
            WITH RECURSIVE chain (start, id, merged_into, depth) AS (
                SELECT m.id, m.id, m.merged_into, 0 FROM members m WHERE m.id = ANY($1::bigint[])
                UNION ALL
                SELECT c.start, m.id, m.merged_into, c.depth + 1 FROM chain c JOIN members m ON m.id = c.merged_into
                WHERE c.depth < 16
            )
            SELECT DISTINCT ON (c.start) c.start, c.id AS member_id, i.platform, i.app, i.openid
            FROM chain c JOIN member_identities i ON i.member_id = c.id
            WHERE c.merged_into IS NULL
            ORDER BY c.start, i.platform, i.app, i.openid
            """, [PostgresArray(ids.sorted())])
        var found: [Int64: (member: Int64, identity: Identity)] = [:]
        for row in rows {
            guard let start = row.int("start"), let member = row.int("member_id"),
                  let platform = Platform(rawValue: row.string("platform") ?? "") else { continue }
            found[Int64(start)] = (Int64(member), Identity(platform: platform, app: row.string("app") ?? "", openid: row.string("openid") ?? ""))
        }
        return found
    }

    /// The member of an identity if it exists, without creating one.
    public func lookup(_ identity: Identity) async throws -> Int64? {
        let rows = try await database.query("""
            SELECT member_id FROM member_identities WHERE platform = $1 AND app = $2 AND openid = $3
            """, [identity.platform.rawValue, identity.app, identity.openid])
        return rows.first?.int("member_id").map(Int64.init)
    }

    private func create(_ identity: Identity, unionid: String?) async throws -> Int64 {
        let platform = identity.platform.rawValue, app = identity.app, openid = identity.openid
        return try await database.transaction { connection in
            var member: Int64?
            var made = false
            if let unionid {
                member = try connection.query("""
                    SELECT member_id FROM member_identities WHERE platform = $1 AND unionid = $2 ORDER BY created_at LIMIT 1
                    """, [platform, unionid]).first?.int("member_id").map(Int64.init)
            }
            if member == nil {
                member = try connection.query("INSERT INTO members DEFAULT VALUES RETURNING id").first?.int("id").map(Int64.init)
                made = true
            }
            guard let member else { throw PostgresError(.usage, "no member id returned") }
            let inserted = try connection.query("""
                INSERT INTO member_identities (platform, app, openid, member_id, unionid) VALUES ($1, $2, $3, $4, $5)
                ON CONFLICT (platform, app, openid) DO NOTHING RETURNING member_id
                """, [platform, app, openid, member, unionid])
            if !inserted.isEmpty { return member }
            // Another worker saw this openid first and committed: its member is the member.
            if made { try connection.query("DELETE FROM members WHERE id = $1", [member]) }
            guard let winner = try connection.query("""
                SELECT member_id FROM member_identities WHERE platform = $1 AND app = $2 AND openid = $3
                """, [platform, app, openid]).first?.int("member_id") else {
                throw PostgresError(.usage, "identity vanished while resolving it")
            }
            return Int64(winner)
        }
    }

    /// Binds a verified phone number to the member, in a transaction of its own (see
    /// ``bindPhone(_:member:eventID:participants:on:)``).
    public func bindPhone(_ phone: String, member: Int64, eventID: String,
                          participants: [any MemberMergeParticipant]) async throws -> PhoneBinding {
        try await database.transaction { connection in
            try Self.bindPhone(phone, member: member, eventID: eventID, participants: participants, on: connection)
        }
    }

    /// Binds a verified phone number to the member, in the caller's transaction. A phone is one
    /// person: if another member has it, the two become one, the older surviving. Identities and
    /// tags move here; every domain that keeps rows by member moves its own (`participants`, in the
    /// same transaction); the merge is recorded, and the event id makes it idempotent.
    public static func bindPhone(_ phone: String, member: Int64, eventID: String, participants: [any MemberMergeParticipant],
                                 on connection: isolated PostgresConnection) throws -> PhoneBinding {
        if !(try connection.query("SELECT 1 FROM member_merges WHERE event_id = $1", [eventID]).isEmpty) { return .alreadyApplied }
        // A member merged before stands for its survivor.
        var current = member
        while let next = try connection.query("SELECT merged_into FROM members WHERE id = $1 FOR UPDATE", [current])
            .first?.int("merged_into").map(Int64.init) {
            current = next
        }
        guard let owner = try connection.query("SELECT id FROM members WHERE phone = $1 FOR UPDATE", [phone])
            .first?.int("id").map(Int64.init), owner != current else {
            try connection.query("UPDATE members SET phone = $2, updated_at = now() WHERE id = $1", [current, phone])
            return .bound(member: current)
        }
        let survivor = min(owner, current), absorbed = max(owner, current)
        try connection.query("UPDATE members SET phone = NULL WHERE id = $1", [absorbed])
        try connection.query("UPDATE member_identities SET member_id = $1 WHERE member_id = $2", [survivor, absorbed])
        try connection.query("""
            INSERT INTO member_tags AS t (member_id, tag, source, created_at, expires_at)
            SELECT $1, tag, source, created_at, expires_at FROM member_tags WHERE member_id = $2
            ON CONFLICT (member_id, tag, source) DO UPDATE SET created_at = least(t.created_at, excluded.created_at),
                expires_at = CASE WHEN t.expires_at IS NULL OR excluded.expires_at IS NULL THEN NULL
                                  ELSE greatest(t.expires_at, excluded.expires_at) END
            """, [survivor, absorbed])
        try connection.query("DELETE FROM member_tags WHERE member_id = $1", [absorbed])
        for participant in participants {
            try participant.merge(absorbed, into: survivor, cause: eventID, on: connection)
        }
        try connection.query("UPDATE members SET phone = $2, merged_into = NULL WHERE id = $1", [survivor, phone])
        try connection.query("UPDATE members SET merged_into = $1 WHERE id = $2", [survivor, absorbed])
        try connection.query("INSERT INTO member_merges (from_member, into_member, phone, event_id) VALUES ($1, $2, $3, $4)",
                             [absorbed, survivor, phone, eventID])
        return .merged(from: absorbed, into: survivor)
    }
}
