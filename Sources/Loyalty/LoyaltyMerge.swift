import Members
import PostgresClient

/// Loyalty's part of a merge (``MemberMergeParticipant``): the absorbed member's ledger entries,
/// redemptions and verified product codes become the survivor's, both balances are recomputed from
/// their ledgers, and the survivor's level follows its new growth (a level change goes to the
/// outbox with the merge).
public struct LoyaltyMerge: MemberMergeParticipant {
    let levels: LevelTable

    public init(levels: LevelTable) { self.levels = levels }

    public func merge(_ absorbed: Int64, into survivor: Int64, cause eventID: String, on connection: isolated PostgresConnection) throws {
        // An entry the survivor already has for the same event and rule (a self-referral) stays behind.
        try connection.query("""
            UPDATE ledger l SET member_id = $1 WHERE l.member_id = $2 AND NOT EXISTS (
                SELECT 1 FROM ledger s WHERE s.member_id = $1 AND s.event_id = l.event_id AND s.rule = l.rule AND s.kind = l.kind)
            """, [survivor, absorbed])
        try connection.query("UPDATE product_codes SET verified_by = $1 WHERE verified_by = $2", [survivor, absorbed])
        try connection.query("""
            UPDATE redemptions r SET member_id = $1 WHERE r.member_id = $2
              AND NOT EXISTS (SELECT 1 FROM redemptions s WHERE s.member_id = $1 AND s.request_id = r.request_id)
            """, [survivor, absorbed])
        for id in [survivor, absorbed] {
            try connection.query("""
                UPDATE members SET
                  points = coalesce((SELECT sum(points) FROM ledger WHERE member_id = $1 AND kind NOT IN ('pending', 'cancelled')), 0),
                  growth = coalesce((SELECT sum(growth) FROM ledger WHERE member_id = $1 AND kind NOT IN ('pending', 'cancelled')), 0),
                  pending_points = coalesce((SELECT sum(points) FROM ledger WHERE member_id = $1 AND kind = 'pending' AND settled_at IS NULL), 0),
                  pending_growth = coalesce((SELECT sum(growth) FROM ledger WHERE member_id = $1 AND kind = 'pending' AND settled_at IS NULL), 0),
                  updated_at = now()
                WHERE id = $1
                """, [id])
        }
        // The survivor's growth grew by the absorbed member's: its level may change.
        _ = try Ledger.updateBalances([survivor: Ledger.Delta(cause: eventID)], levels: levels, on: connection, force: true)
    }
}
