import Contracts
import Foundation
import PostgresClient

/// How many members a segment selects, counted exactly in one statement: the count is what the
/// database held at `evaluatedAt` (the statement's `now()`, which tag expiries and event windows
/// are measured against too).
public struct SegmentReach: Sendable, Equatable {
    public let members: Int64
    public let evaluatedAt: Date
}

/// A saved segment with its reach now.
public struct EvaluatedSegment: Sendable, Equatable {
    public let segment: Segment
    public let reach: SegmentReach
}

/// A saved segment as the list shows it.
public struct StoredSegment: Sendable, Equatable {
    public let segment: Segment
    public let createdAt: Date
    public let updatedAt: Date
}

/// One page of a segment's members, in id order.
public struct SegmentPage: Sendable, Equatable {
    public let members: [Int64]
    /// The last id of this page when more follow (pass it as `after`); nil on the last page.
    public let next: Int64?
}

public enum SegmentSave: Sendable, Equatable {
    case saved(created: Bool, EvaluatedSegment)
    /// A `tag` clause names a tag that does not exist (the problem's path is the clause's).
    case unknownTag(DefinitionProblem)
}

public enum SegmentPreview: Sendable, Equatable {
    case evaluated(SegmentReach)
    case unknownTag(DefinitionProblem)
}

/// Saved segments in PostgreSQL, and who an expression selects now.
///
/// Members are the unmerged rows of `members` (a merged member is its survivor: its identities,
/// tags and events are the survivor's). Nothing is cached: a reach or a page is evaluated when asked,
/// so it reflects tags and events as they are.
///
/// The SQL shape (a left join per member set) and the figures that chose it are beside
/// ``SegmentMatch/sql(_:)``.
public struct SegmentStore: Sendable {
    let database: PostgresPool
    /// The program's level names, lowest first: read only when an expression has a `level` clause.
    /// The gateway reads them from the loyalty program (this module does not depend on it).
    let levels: @Sendable () async throws -> [String]

    public init(database: PostgresPool, levels: @escaping @Sendable () async throws -> [String]) {
        self.database = database
        self.levels = levels
    }

    /// Pages are at most this long: a broadcast reads 1,000 ids per call.
    public static let maximumPage = 1000

    // MARK: Saved segments

    /// Creates or replaces a segment, then counts it.
    public func put(_ segment: Segment) async throws -> SegmentSave {
        let match = String(decoding: segment.match.json.jsonBytes, as: UTF8.self)
        let tags = segment.match.tags()
        let outcome = try await database.transaction { connection -> Result<Bool, DefinitionProblem> in
            if let problem = try Self.unknownTag(tags, on: connection) { return .failure(problem) }
            let created = try connection.query("""
                INSERT INTO segments (code, name, match) VALUES ($1, $2, $3::jsonb)
                ON CONFLICT (code) DO UPDATE SET name = excluded.name, match = excluded.match, updated_at = now()
                RETURNING (xmax = 0) AS inserted
                """, [segment.code, segment.name, match]).first?.requiredBool("inserted")
            guard let created else { throw PostgresError(.column, "segment \(segment.code) was not stored") }
            return .success(created)
        }
        switch outcome {
        case .failure(let problem): return .unknownTag(problem)
        case .success(let created): return .saved(created: created, EvaluatedSegment(segment: segment, reach: try await reach(segment.match)))
        }
    }

    /// A saved segment and its reach now; nil when there is no such segment.
    public func get(_ code: String) async throws -> EvaluatedSegment? {
        guard let stored = try await load(code: code).first else { return nil }
        return EvaluatedSegment(segment: stored.segment, reach: try await reach(stored.segment.match))
    }

    public func list() async throws -> [StoredSegment] {
        try await load(code: nil)
    }

    /// False when there is no such segment.
    public func delete(_ code: String) async throws -> Bool {
        try await !database.query("DELETE FROM segments WHERE code = $1 RETURNING code", [code]).isEmpty
    }

    private func load(code: String?) async throws -> [StoredSegment] {
        try await database.query("""
            SELECT code, name, match::text AS match,
                   extract(epoch FROM created_at)::float8 AS created_at, extract(epoch FROM updated_at)::float8 AS updated_at
            FROM segments WHERE $1::text IS NULL OR code = $1 ORDER BY code
            """, [code]).map { row in
            let code = try row.requiredString("code")
            guard let json = try? JSONValue.parse(Array(try row.requiredString("match").utf8)) else {
                throw PostgresError(.column, "segment \(code): match is not JSON")
            }
            let match: SegmentMatch
            do { match = try SegmentMatch.parse(json) } catch {
                throw PostgresError(.column, "segment \(code): stored match no longer parses: \(error)")
            }
            return StoredSegment(segment: Segment(code: code, name: try row.requiredString("name"), match: match),
                                 createdAt: Date(timeIntervalSince1970: try row.requiredDouble("created_at")),
                                 updatedAt: Date(timeIntervalSince1970: try row.requiredDouble("updated_at")))
        }
    }

    // MARK: Evaluating

    /// The reach of an expression that is not saved, after checking its tags exist.
    public func preview(_ match: SegmentMatch) async throws -> SegmentPreview {
        let tags = match.tags()
        if !tags.isEmpty, let problem = try await database.transaction({ connection in try Self.unknownTag(tags, on: connection) }) {
            return .unknownTag(problem)
        }
        return .evaluated(try await reach(match))
    }

    /// How many members `match` selects now, exactly.
    public func reach(_ match: SegmentMatch) async throws -> SegmentReach {
        var query = SegmentQuery(levels: try await levelNames(match))
        let sql = Self.reachSQL(match, &query)
        guard let row = try await evaluate(sql, query.parameters).first else { throw PostgresError(.column, "a count returned no row") }
        return SegmentReach(members: try row.requiredInt64("reach"), evaluatedAt: Date(timeIntervalSince1970: try row.requiredDouble("evaluated_at")))
    }

    /// Up to `limit` (1-1000) members `match` selects now, with ids above `after`, in id order.
    public func members(_ match: SegmentMatch, after: Int64, limit: Int) async throws -> [Int64] {
        var query = SegmentQuery(levels: try await levelNames(match), after: after)
        let sql = Self.membersSQL(match, limit: Self.pageSize(limit), &query)
        return try await evaluate(sql, query.parameters).map { row in try row.requiredInt64("id") }
    }

    /// Up to `limit` (1-1000) members of a saved segment, with ids above `after`, in id order; nil
    /// when there is no such segment. A broadcast pages through a segment with this, passing the
    /// last id it got as `after`.
    public func members(segment code: String, after: Int64, limit: Int) async throws -> [Int64]? {
        guard let stored = try await load(code: code).first else { return nil }
        return try await members(stored.segment.match, after: after, limit: limit)
    }

    /// A page of a saved segment's members and whether more follow; nil when there is no such segment.
    public func page(segment code: String, after: Int64, limit: Int) async throws -> SegmentPage? {
        let size = Self.pageSize(limit)
        // One more than asked: a full page is not taken to mean more follow.
        guard var ids = try await members(segment: code, after: after, limit: size + 1) else { return nil }
        guard ids.count > size else { return SegmentPage(members: ids, next: nil) }
        ids.removeLast(ids.count - size)
        return SegmentPage(members: ids, next: ids.last)
    }

    static func pageSize(_ limit: Int) -> Int { min(max(limit, 1), maximumPage + 1) }

    private func levelNames(_ match: SegmentMatch) async throws -> [String] {
        match.usesLevels ? try await levels() : []
    }

    /// Runs one evaluating statement with room for its hashes.
    private func evaluate(_ sql: String, _ parameters: SQLParameters) async throws -> PostgresRows {
        let values = parameters.values
        return try await database.transaction { connection in
            try connection.query("SET LOCAL work_mem = '\(Self.workMemory)'")
            // Reach over a million members is planned above the JIT threshold; compiling it costs
            // more than it saves for a statement that runs once (2.1 s on a comparable backfill
            // step, measured).
            try connection.query("SET LOCAL jit = off")
            return try connection.query(sql, values)
        }
    }

    /// Memory each hash of a statement may take before it spills to disk. The default 4MB holds
    /// about 100,000 member ids; measured on 1,000,000 members, `any(tag, points) and not(app)`
    /// (sets of 400,000 and 333,000) built hashes of 17-33MB, so 64MB keeps a million-member set
    /// in one batch. Only admin calls and broadcasts run these, a few at a time.
    static let workMemory = "64MB"

    /// `SELECT count(*)` over the unmerged members `match` selects, and the statement's time.
    static func reachSQL(_ match: SegmentMatch, _ query: inout SegmentQuery) -> String {
        "SELECT count(*) AS reach, extract(epoch FROM now())::float8 AS evaluated_at\n" + SegmentQuery.from(match, &query)
    }

    static func membersSQL(_ match: SegmentMatch, limit: Int, _ query: inout SegmentQuery) -> String {
        "SELECT m.id\n" + SegmentQuery.from(match, &query) + "\nORDER BY m.id LIMIT \(query.parameters.add(Int64(limit)))"
    }

    /// The first `tag` clause whose tag does not exist, as a problem at its path.
    static func unknownTag(_ tags: [(code: String, path: String)], on connection: isolated PostgresConnection) throws -> DefinitionProblem? {
        guard !tags.isEmpty else { return nil }
        let known = Set(try connection.query("SELECT code FROM tags WHERE code = ANY($1::text[])", [PostgresArray(tags.map(\.code))])
            .map { row throws(PostgresRowError) in try row.requiredString("code") })
        guard let missing = tags.first(where: { !known.contains($0.code) }) else { return nil }
        return DefinitionProblem(missing.path, "no tag \(missing.code); create it with PUT /admin/v1/tags/{code}")
    }
}
