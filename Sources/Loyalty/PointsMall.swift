import Foundation
import PostgresClient

/// The points mall (积分商城): gifts with stock, redeemed with points.
public struct PointsMall: Sendable {
    public struct Gift: Codable, Sendable, Equatable {
        public var id: String
        public var name: String
        public var points: Int64
        public var stock: Int64
        public init(id: String, name: String, points: Int64, stock: Int64) {
            self.id = id
            self.name = name
            self.points = points
            self.stock = stock
        }
    }

    public struct Redemption: Encodable, Sendable, Equatable {
        public let redemptionId: Int64
        public let requestId: String
        public let giftId: String
        public let quantity: Int
        public let points: Int64
        /// The member's balance right after this redemption (not re-read on a replay).
        public let balance: Int64?
        public let createdAt: String
    }

    public enum Refusal: Error, Equatable {
        case unknownGift, outOfStock, insufficientPoints
    }

    let database: PostgresPool

    public init(database: PostgresPool) { self.database = database }

    public func putGift(_ gift: Gift) async throws {
        try await database.query("""
            INSERT INTO gifts (id, name, points, stock) VALUES ($1, $2, $3, $4)
            ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, points = EXCLUDED.points, stock = EXCLUDED.stock, updated_at = now()
            """, [gift.id, gift.name, gift.points, gift.stock])
    }

    public func gift(_ id: String) async throws -> Gift? {
        try await database.query("SELECT id, name, points, stock FROM gifts WHERE id = $1", [id]).first.map {
            Gift(id: $0.string("id") ?? "", name: $0.string("name") ?? "", points: Int64($0.int("points") ?? 0),
                 stock: Int64($0.int("stock") ?? 0))
        }
    }

    /// A retried request (same member and request id) gets its first answer back.
    struct Replay: Error { let redemption: Redemption }

    /// Redeems in one transaction: stock and balance are each decremented only where enough is
    /// left (so neither goes negative however many requests race), and the ledger records the spend.
    public func redeem(member: Int64, giftID: String, quantity: Int, requestID: String) async throws -> Result<Redemption, Refusal> {
        do {
            return try await database.transaction { connection -> Result<Redemption, Refusal> in
                if let existing = try Self.existing(member, requestID, on: connection) { return .success(existing) }
                let gift = try connection.query("""
                    UPDATE gifts SET stock = stock - $2, updated_at = now() WHERE id = $1 AND stock >= $2 RETURNING name, points
                    """, [giftID, quantity])
                guard let row = gift.first, let name = row.string("name") else {
                    let known = try !connection.query("SELECT 1 FROM gifts WHERE id = $1", [giftID]).isEmpty
                    throw known ? Refusal.outOfStock : Refusal.unknownGift
                }
                // A gift's points are any positive Int64 the admin API took: the product could
                // trap. No balance covers a cost past Int64, so that is insufficient points.
                guard let cost = Self.cost(points: Int64(row.int("points") ?? 0), quantity: quantity) else {
                    throw Refusal.insufficientPoints // rolls the stock back too
                }
                guard let balance = try connection.query("""
                    UPDATE members SET points = points - $2, updated_at = now() WHERE id = $1 AND points >= $2 RETURNING points
                    """, [member, cost]).first?.int("points") else {
                    throw Refusal.insufficientPoints // rolls the stock back too
                }
                let inserted = try connection.query("""
                    INSERT INTO redemptions (member_id, request_id, gift_id, quantity, points) VALUES ($1, $2, $3, $4, $5)
                    ON CONFLICT (member_id, request_id) DO NOTHING
                    RETURNING id, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS at
                    """, [member, requestID, giftID, quantity, cost])
                guard let redemption = inserted.first, let id = redemption.int("id") else {
                    // The same request committed meanwhile on another connection: undo ours, answer with its.
                    throw Replay(redemption: try Self.existing(member, requestID, on: connection)
                        ?? Redemption(redemptionId: 0, requestId: requestID, giftId: giftID, quantity: quantity, points: cost,
                                      balance: nil, createdAt: ""))
                }
                try connection.query("""
                    INSERT INTO ledger (member_id, kind, points, growth, reason, event_id, ref, occurred_at)
                    VALUES ($1, 'redemption', $2, 0, $3, $4, $5, now())
                    """, [member, -cost, "redeemed \(quantity) × \(name)", "redemption:\(id)", giftID])
                return .success(Redemption(redemptionId: Int64(id), requestId: requestID, giftId: giftID, quantity: quantity,
                                           points: cost, balance: Int64(balance), createdAt: redemption.string("at") ?? ""))
            }
        } catch let replay as Replay {
            return .success(replay.redemption)
        } catch let refusal as Refusal {
            return .failure(refusal)
        }
    }

    /// Points × quantity, or nil where the product would overflow (or quantity is not positive).
    static func cost(points: Int64, quantity: Int) -> Int64? {
        guard quantity > 0 else { return nil }
        let (product, overflow) = points.multipliedReportingOverflow(by: Int64(quantity))
        return overflow ? nil : product
    }

    static func existing(_ member: Int64, _ requestID: String, on connection: isolated PostgresConnection) throws -> Redemption? {
        try connection.query("""
            SELECT id, gift_id, quantity, points, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS at
            FROM redemptions WHERE member_id = $1 AND request_id = $2
            """, [member, requestID]).first.map {
            Redemption(redemptionId: Int64($0.int("id") ?? 0), requestId: requestID, giftId: $0.string("gift_id") ?? "",
                       quantity: $0.int("quantity") ?? 0, points: Int64($0.int("points") ?? 0), balance: nil,
                       createdAt: $0.string("at") ?? "")
        }
    }
}
