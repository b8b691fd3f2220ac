import Contracts
import Foundation
import PostgresClient

/// A member as one platform app knows them.
public struct Identity: Sendable, Hashable {
    public let platform: Platform
    public let app: String
    public let openid: String
    public init(platform: Platform, app: String, openid: String) {
        self.platform = platform
        self.app = app
        self.openid = openid
    }
}

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
        var parameters: [any PostgresEncodable] = []
        var tuples: [String] = []
        for (index, identity) in list.enumerated() {
            tuples.append("($\(index * 3 + 1),$\(index * 3 + 2),$\(index * 3 + 3))")
            parameters += [identity.platform.rawValue, identity.app, identity.openid] as [any PostgresEncodable]
        }
        let rows = try await database.query("""
            SELECT platform, app, openid, member_id, unionid FROM member_identities
            WHERE (platform, app, openid) IN (\(tuples.joined(separator: ",")))
            """, parameters)
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
        for identity in list where found[identity] == nil {
            found[identity] = try await create(identity, unionid: identities[identity] ?? nil)
        }
        return found
    }

    public func resolve(_ identity: Identity, unionid: String? = nil) async throws -> Int64 {
        guard let member = try await resolve([identity: unionid])[identity] else {
            throw PostgresError(.usage, "identity was not resolved")
        }
        return member
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
}
