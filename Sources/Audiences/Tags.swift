import Contracts
import Foundation
import PostgresClient

/// A tag of the brand's (`PUT /admin/v1/tags/{code}`): what rules, operators and modules set on
/// members, and what segments and broadcasts select by.
public struct Tag: Sendable, Equatable {
    public let code: String
    public let name: String
    public let group: String?
    public let description: String?

    public init(code: String, name: String, group: String? = nil, description: String? = nil) {
        self.code = code
        self.name = name
        self.group = group
        self.description = description
    }

    static let fields: Set<String> = ["name", "group", "description"]

    public static func parse(code: String, json: JSONValue) throws(DefinitionProblem) -> Tag {
        guard AudienceCode.isValid(code) else { throw DefinitionProblem("code", "a tag code is \(AudienceCode.rule)") }
        guard case .object(let object) = json else { throw DefinitionProblem("", #"a tag is {"name","group"?,"description"?}"#) }
        if let unknown = object.keys.sorted().first(where: { !fields.contains($0) }) {
            throw DefinitionProblem(unknown, "unknown field \(unknown)")
        }
        func text(_ field: String, limit: Int, required: Bool) throws(DefinitionProblem) -> String? {
            guard let value = object[field], value != .null else {
                if required { throw DefinitionProblem(field, "\(field) is required") }
                return nil
            }
            guard let text = value.string, !text.isEmpty, text.utf8.count <= limit, !text.utf8.contains(0) else {
                throw DefinitionProblem(field, "\(field) is a text of 1-\(limit) bytes")
            }
            return text
        }
        guard let name = try text("name", limit: 128, required: true) else { throw DefinitionProblem("name", "name is required") }
        return Tag(code: code, name: name, group: try text("group", limit: 64, required: false),
                   description: try text("description", limit: 1024, required: false))
    }
}

/// A tag with how many members hold it now.
public struct TagSummary: Sendable, Equatable {
    public let tag: Tag
    public let members: Int64
    public let createdAt: Date
    public let updatedAt: Date
}

/// One source's hold of a tag on a member.
public struct MemberTag: Sendable, Equatable {
    public let code: String
    /// `manual`, `rule:<code>`, or the module that set it.
    public let source: String
    public let since: Date
    /// When a rule's window slides past the events that earned it; nil: until let go.
    public let expiresAt: Date?
}

public enum TagDeletion: Sendable, Equatable {
    case deleted
    case unknown
    /// Rules set it: delete or change them first.
    case inUse(rules: [String])
}

public enum MemberTagChange: Sendable, Equatable {
    case changed([MemberTag])
    case unknownMember
    case unknownTags([String])
}

/// Tags and who holds them, in PostgreSQL. A member holds a tag while any source's row lasts and
/// is not past its `expires_at`; every reader here applies that, so a tag whose window passed is
/// gone at once, not when the expiry job next deletes its row.
public struct TagStore: Sendable {
    let database: PostgresPool

    public init(database: PostgresPool) { self.database = database }

    /// The condition a `member_tags` row `t` must meet to count now.
    static let current = "(t.expires_at IS NULL OR t.expires_at > now())"

    /// Creates or replaces a tag; true when it was new.
    public func put(_ tag: Tag) async throws -> Bool {
        let rows = try await database.query("""
            INSERT INTO tags (code, name, tag_group, description) VALUES ($1, $2, $3, $4)
            ON CONFLICT (code) DO UPDATE SET name = excluded.name, tag_group = excluded.tag_group,
                description = excluded.description, updated_at = now()
            RETURNING (xmax = 0) AS inserted
            """, [tag.code, tag.name, tag.group, tag.description])
        return try rows.first?.requiredBool("inserted") ?? false
    }

    public func get(_ code: String) async throws -> TagSummary? {
        try await summaries(where: "code = $1", [code]).first
    }

    public func list() async throws -> [TagSummary] {
        try await summaries(where: "TRUE", [])
    }

    private func summaries(where condition: String, _ parameters: [any PostgresEncodable]) async throws -> [TagSummary] {
        try await database.query("""
            SELECT code, name, tag_group, description,
                   extract(epoch FROM created_at)::float8 AS created_at, extract(epoch FROM updated_at)::float8 AS updated_at,
                   (SELECT count(DISTINCT t.member_id) FROM member_tags t WHERE t.tag = tags.code AND \(Self.current)) AS members
            FROM tags WHERE \(condition) ORDER BY code
            """, parameters).map { row in
            TagSummary(tag: Tag(code: try row.requiredString("code"), name: try row.requiredString("name"),
                                group: try row.optionalString("tag_group"), description: try row.optionalString("description")),
                       members: try row.requiredInt64("members"),
                       createdAt: Date(timeIntervalSince1970: try row.requiredDouble("created_at")),
                       updatedAt: Date(timeIntervalSince1970: try row.requiredDouble("updated_at")))
        }
    }

    /// Deletes a tag and every member's hold of it, unless a rule sets it.
    public func delete(_ code: String) async throws -> TagDeletion {
        try await database.transaction { connection in
            let rules = try connection.query("SELECT code FROM tag_rules WHERE definition->>'tag' = $1 ORDER BY code", [code])
                .map { row throws(PostgresRowError) in try row.requiredString("code") }
            guard rules.isEmpty else { return .inUse(rules: rules) }
            guard try !connection.query("DELETE FROM tags WHERE code = $1 RETURNING code", [code]).isEmpty else { return .unknown }
            try connection.query("DELETE FROM member_tags WHERE tag = $1", [code])
            return .deleted
        }
    }

    /// A member's tags now, each source on its own row; nil when there is no such member. A member
    /// merged into another is read as the one it became.
    public func tags(of member: Int64) async throws -> [MemberTag]? {
        try await database.transaction { connection in try Self.tags(of: member, on: connection) }
    }

    static func tags(of member: Int64, on connection: isolated PostgresConnection) throws -> [MemberTag]? {
        guard let id = try survivor(member, on: connection) else { return nil }
        return try connection.query("""
            SELECT t.tag, t.source, extract(epoch FROM t.created_at)::float8 AS since, extract(epoch FROM t.expires_at)::float8 AS expires_at
            FROM member_tags t WHERE t.member_id = $1 AND \(current) ORDER BY t.tag, t.source
            """, [id]).map { row throws(PostgresRowError) in
            MemberTag(code: try row.requiredString("tag"), source: try row.requiredString("source"),
                      since: Date(timeIntervalSince1970: try row.requiredDouble("since")),
                      expiresAt: try row.optionalDouble("expires_at").map(Date.init(timeIntervalSince1970:)))
        }
    }

    static func survivor(_ member: Int64, on connection: isolated PostgresConnection) throws -> Int64? {
        try connection.query("SELECT member_survivor(id) AS id FROM members WHERE id = $1", [member]).first?.requiredInt64("id")
    }

    /// Manual tagging: adds the `manual` source of `add` and lets go of the `manual` source of
    /// `remove` (a tag a rule also holds stays). Every code must be a known tag.
    public func change(member: Int64, add: [String], remove: [String]) async throws -> MemberTagChange {
        try await database.transaction { connection in
            guard let id = try Self.survivor(member, on: connection) else { return .unknownMember }
            let codes = Array(Set(add + remove))
            let known = Set(try connection.query("SELECT code FROM tags WHERE code = ANY($1::text[])", [PostgresArray(codes)])
                .map { row throws(PostgresRowError) in try row.requiredString("code") })
            let unknown = codes.filter { !known.contains($0) }.sorted()
            guard unknown.isEmpty else { return .unknownTags(unknown) }
            if !remove.isEmpty {
                try connection.query("DELETE FROM member_tags WHERE member_id = $1 AND source = 'manual' AND tag = ANY($2::text[])",
                                     [id, PostgresArray(remove)])
            }
            let adding = add.filter { !remove.contains($0) }
            if !adding.isEmpty {
                try connection.query("""
                    INSERT INTO member_tags (member_id, tag, source) SELECT $1, unnest($2::text[]), 'manual'
                    ON CONFLICT (member_id, tag, source) DO NOTHING
                    """, [id, PostgresArray(adding)])
            }
            return .changed(try Self.tags(of: id, on: connection) ?? [])
        }
    }
}
