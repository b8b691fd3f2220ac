import Contracts

/// The two reference programs, applied with `POST /admin/v1/points-rules/presets/{name}`.
/// Applying one again restores its rules as shipped (an upsert by code); other rules are untouched.
public enum ProgramPreset: String, Sendable, CaseIterable {
    case community
    case membership

    public var rules: [PointsRule] {
        switch self {
        case .community:
            return [
                PointsRule(code: "community.post-comment", kinds: [.communityPost, .communityComment], points: 3, growth: 3,
                           caps: .init(daily: .init(points: 15)), reason: "community post or comment"),
                PointsRule(code: "community.share-moments", kinds: [.communityShare], conditions: ["channel": "moments"],
                           points: 3, growth: 3,
                           caps: .init(daily: .init(points: 15), monthly: .init(points: 90, growth: 90)),
                           reason: "community share to moments"),
            ]
        case .membership:
            return [
                PointsRule(code: "member.checkin", kinds: [.memberCheckin], frequency: .daily, points: 1, growth: 3,
                           reason: "daily check-in"),
                // 10 yuan (1000 fen) = 1 point and 1 growth, granted 15 days after delivery unless refunded.
                PointsRule(code: "mall.purchase", kinds: [.orderDelivered], points: 1, growth: 1,
                           perAmount: .init(attribute: "amount", unit: 1000), reason: "purchase",
                           maturesAfterDays: 15, reversal: .init(kind: .orderRefunded, key: "orderId")),
                PointsRule(code: "member.post", kinds: [.communityPost], points: 2, growth: 5, reason: "community post"),
                PointsRule(code: "member.referral", kinds: [.memberRegistered], frequency: .once, points: 3, growth: 5,
                           reason: "referral", referral: true),
                PointsRule(code: "code.verified", kinds: [.codeVerified], points: 5, growth: 50,
                           reason: "product code verified"),
            ]
        }
    }

    /// The level table a preset sets, if any.
    public var levels: LevelTable? {
        switch self {
        case .community: return nil
        case .membership: return .standard
        }
    }
}
