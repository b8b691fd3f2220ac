import Foundation
import Members
import PostgresClient

/// Audiences' part of a merge (``MemberMergeParticipant``): the absorbed member's hour buckets are
/// added to the survivor's, and the survivor is evaluated for every rule, so the merged member
/// holds the union of both members' tags (Members moved the holds themselves) and whatever their
/// summed events now earn.
public struct AudienceMerge: MemberMergeParticipant {
    public init() {}

    public func merge(_ absorbed: Int64, into survivor: Int64, cause eventID: String, on connection: isolated PostgresConnection) throws {
        try connection.query("""
            INSERT INTO tag_rule_counts (rule_id, member_id, hour, events)
            SELECT rule_id, $2, hour, events FROM tag_rule_counts WHERE rule_id IN (SELECT id FROM tag_rules) AND member_id = $1
            ON CONFLICT (rule_id, member_id, hour) DO UPDATE SET events = tag_rule_counts.events + excluded.events
            """, [absorbed, survivor])
        // By rule id first: the primary key's order, so these are index probes, not a scan.
        try connection.query("DELETE FROM tag_rule_counts WHERE rule_id IN (SELECT id FROM tag_rules) AND member_id = $1", [absorbed])
        let rules = try TagRuleStore.readable(on: connection)
        guard !rules.isEmpty else { return }
        var parameters = SQLParameters()
        let pairs = "SELECT DISTINCT rule_id, member_id FROM tag_rule_counts WHERE rule_id IN (SELECT id FROM tag_rules) AND member_id = \(parameters.add(survivor))"
        try TagEvaluation.evaluate(touched: pairs, rules: rules, now: Date(), &parameters, on: connection)
    }
}
