import Contracts
import Foundation
import PostgresClient

/// One-item-one-code (一物一码): codes printed on products, imported in bulk and verified once.
public struct ProductCodes: Sendable {
    public struct Code: Sendable, Equatable {
        public let code: String
        public let sku: String
        public let batch: String?
        public init(code: String, sku: String, batch: String? = nil) {
            self.code = code
            self.sku = sku
            self.batch = batch
        }
    }

    public struct Verified: Sendable, Encodable, Equatable {
        public let code: String
        public let sku: String
        public let memberId: Int64
        public let verifiedAt: String
    }

    public enum Refusal: Error, Equatable {
        /// No such code was ever imported (a counterfeit, or a typo).
        case unknown
        /// Verified before, by this member or another.
        case alreadyVerified(byThisMember: Bool, at: String)
    }

    public static let maximumImport = 100_000

    let database: PostgresPool

    public init(database: PostgresPool) { self.database = database }

    /// A code or SKU as printed: 1-128 visible ASCII characters, no separators.
    public static func isValid(_ text: String) -> Bool {
        (1...128).contains(text.utf8.count) && text.utf8.allSatisfy { $0 > 32 && $0 < 127 && $0 != 44 && $0 != 34 }
    }

    /// Imports codes through COPY; codes already imported are left as they are. Returns how many were new.
    public func importCodes(_ codes: [Code]) async throws -> Int {
        let rows = codes.map { [$0.code, $0.sku, $0.batch] as [String?] }
        return try await database.transaction { connection in
            try connection.execute("CREATE TEMP TABLE import_codes (code text, sku text, batch text) ON COMMIT DROP")
            try connection.copyIn("COPY import_codes (code, sku, batch) FROM STDIN", rows: rows)
            return try connection.query("""
                INSERT INTO product_codes (code, sku, batch) SELECT DISTINCT ON (code) code, sku, batch FROM import_codes
                ON CONFLICT (code) DO NOTHING
                """).affectedRows
        }
    }

    /// Marks the code verified by `member` and, in the same transaction, queues the `code.verified`
    /// event that grants the rule (through the outbox, so the grant cannot be lost after the commit).
    public func verify(_ code: String, member: Int64) async throws -> Result<Verified, Refusal> {
        try await database.transaction { connection -> Result<Verified, Refusal> in
            let claimed = try connection.query("""
                UPDATE product_codes SET verified_by = $2, verified_at = now() WHERE code = $1 AND verified_by IS NULL
                RETURNING sku, to_char(verified_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS at
                """, [code, member])
            guard let row = claimed.first, let sku = row.string("sku") else {
                let existing = try connection.query("""
                    SELECT verified_by, to_char(verified_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS at
                    FROM product_codes WHERE code = $1
                    """, [code])
                guard let found = existing.first else { return .failure(.unknown) }
                return .failure(.alreadyVerified(byThisMember: found.int("verified_by").map(Int64.init) == member,
                                                 at: found.string("at") ?? ""))
            }
            let identity = try connection.query("""
                SELECT platform, app, openid, unionid FROM member_identities WHERE member_id = $1 ORDER BY created_at LIMIT 1
                """, [member]).first
            let now = Date()
            let event = Envelope(id: "fanflow:code:\(code)",
                                 platform: identity.flatMap { Platform(rawValue: $0.string("platform") ?? "") } ?? .fanflow,
                                 app: identity?.string("app") ?? "", kind: .codeVerified,
                                 subject: .init(openid: identity?.string("openid"), unionid: identity?.string("unionid")),
                                 occurredAt: now, receivedAt: now,
                                 attributes: ["code": .string(code), "sku": .string(sku), "memberId": .integer(member)])
            try Outbox.insert(event, on: connection)
            return .success(Verified(code: code, sku: sku, memberId: member, verifiedAt: row.string("at") ?? ""))
        }
    }
}
