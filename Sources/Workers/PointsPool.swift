import Contracts
import Foundation
import Jobs
import Loyalty
import PostgresClient
import RedisClient

/// The points pool: every qualifying event becomes the points and growth the brand's rules say,
/// within the caps, once.
///
/// Per batch: members are resolved (created on first sight), each event's matching rules are
/// decided in one Redis Lua call per member (pipelined across the batch), and one PostgreSQL
/// transaction writes the ledger, balances, levels and level-change events. The batch is acked
/// after the commit (``EnvelopeBatchHandler``). A worker that dies between the Redis decision and
/// the commit loses nothing: the redelivered events get the stored decisions back, and the
/// ledger's unique index stops a second write.
public struct PointsPool: EnvelopeProcessor {
    let rules: RuleBook
    let members: MemberDirectory
    let decider: PointsDecider
    let ledger: Ledger
    /// Whether the decider's counters are whole (see ``CounterReadiness``): after Redis lost its
    /// data the pool rebuilds them before deciding again.
    let readiness: CounterReadiness

    public init(rules: RuleBook, members: MemberDirectory, decider: PointsDecider, ledger: Ledger) {
        self.rules = rules
        self.members = members
        self.decider = decider
        self.ledger = ledger
        self.readiness = CounterReadiness(decider: decider, ledger: ledger)
    }

    public init(database: PostgresPool, redis: RedisPool, timeZone: TimeZone, pointsNews: any PointsNewsPolicy = AlwaysAnnounce()) {
        self.init(rules: RuleBook(store: RuleStore(database: database), calendar: BusinessCalendarStore(database: database),
                                  timeZone: timeZone), members: MemberDirectory(database: database),
                  decider: PointsDecider(redis: redis, calendar: PeriodCalendar(timeZone: timeZone)),
                  ledger: Ledger(database: database, news: pointsNews))
    }

    /// One rule's grant for one member, waiting for its decision.
    struct Pending {
        let index: Int
        let event: Envelope
        let member: Int64
        let subject: Identity
        let rule: PointsRule
    }

    public func process(_ events: [Envelope]) async throws {
        let program = try await rules.current()
        let subjects = events.map(Self.identity)
        try await bindPhones(events, subjects, levels: program.levels)
        let matches = events.map(program.granting)

        // Everyone the batch grants to: each event's subject, and referrers named by referral rules.
        var identities: [Identity: String?] = [:]
        var referrers: [Int: Identity] = [:]
        for (index, event) in events.enumerated() {
            guard let subject = subjects[index] else { continue }
            if identities[subject] == nil || event.subject.unionid != nil {
                identities.updateValue(event.subject.unionid, forKey: subject)
            }
            if matches[index].contains(where: { $0.referral == true }),
               let referrer = event.attributes["referredBy"]?.string, !referrer.isEmpty, referrer != subject.openid {
                let identity = Identity(platform: subject.platform, app: subject.app, openid: referrer)
                referrers[index] = identity
                if identities[identity] == nil { identities.updateValue(nil, forKey: identity) }
            }
        }
        let memberIDs = try await members.resolve(identities)
        // Subjects a member token proved (verified beacons) are that member, never created here.
        let tokenMembers = try await members.members(Set(events.compactMap(Self.tokenMember)))
        let resolved: [(member: Int64, subject: Identity)?] = events.indices.map { index in
            if let id = Self.tokenMember(events[index]) { return tokenMembers[id].map { ($0.member, $0.identity) } }
            guard let subject = subjects[index], let member = memberIDs[subject] else { return nil }
            return (member, subject)
        }
        var nicknames: [Int64: String] = [:]
        for (event, found) in zip(events, resolved) {
            if let found, let nickname = MemberDirectory.nickname(in: event) { nicknames[found.member] = nickname }
        }
        try await members.name(nicknames)

        var grants: [LedgerGrant] = []
        var reversals: [LedgerReversal] = []
        var requests: [DecisionRequest] = []
        var pending: [[Pending]] = []
        for (index, event) in events.enumerated() {
            guard let (member, subject) = resolved[index] else { continue }
            let matched = matches[index]
            requests.append(DecisionRequest(member: member, eventID: event.id, occurredAt: event.occurredAt,
                                            rules: matched.map { rule in
                                                let base = rule.baseGrant(for: event)
                                                return (rule, base.points, base.growth)
                                            }))
            pending.append(matched.map { Pending(index: index, event: event, member: member, subject: subject, rule: $0) })
            for rule in program.reversing(event) where rule.accepts(event.subject) {
                guard let key = rule.reversal?.key, let ref = Self.reference(event, key) else { continue }
                reversals.append(LedgerReversal(member: member, rule: rule.code, ref: ref, reason: "refund: \(rule.reason)",
                                                eventID: event.id, occurredAt: event.occurredAt, subject: subject))
            }
        }
        // One GET per batch, right before deciding, rather than a check inside the per-member Lua,
        // whose keys must all carry the member's `{m:<id>}` tag for Redis Cluster. A loss of Redis's
        // data between this check and the decision is a window of one batch per worker: that batch
        // decides against empty counters (the rebuild's settle delay lets it commit first, so the
        // ledger read includes it).
        if requests.contains(where: { !$0.rules.isEmpty }) { try await readiness.ensure(rules: program.rules) }
        let decisions = try await decider.decide(requests)

        // A referral grants the referrer too, once per new member: only where the new member's
        // own grant was not refused by the rule's once-only frequency.
        var referralRequests: [DecisionRequest] = []
        var referralPending: [[Pending]] = []
        for (decided, waiting) in zip(decisions, pending) {
            for (decision, item) in zip(decided, waiting) {
                grants += Self.grant(decision, item, calendar: program.calendar)
                guard item.rule.referral == true, decision.status != .frequency,
                      let referrer = referrers[item.index], let referrerID = memberIDs[referrer], referrerID != item.member else { continue }
                var forReferrer = item.rule
                forReferrer.frequency = .unlimited
                let base = item.rule.baseGrant(for: item.event)
                referralRequests.append(DecisionRequest(member: referrerID, eventID: item.event.id,
                                                        occurredAt: item.event.occurredAt,
                                                        rules: [(forReferrer, base.points, base.growth)]))
                referralPending.append([Pending(index: item.index, event: item.event, member: referrerID, subject: referrer, rule: forReferrer)])
            }
        }
        if !referralRequests.isEmpty {
            for (decided, waiting) in zip(try await decider.decide(referralRequests), referralPending) {
                for (decision, item) in zip(decided, waiting) { grants += Self.grant(decision, item, calendar: program.calendar) }
            }
        }
        try await ledger.apply(grants: grants, reversals: reversals, levels: program.levels)
    }

    /// Phone bindings go first: a merge they cause decides which member the batch's grants go to.
    func bindPhones(_ events: [Envelope], _ subjects: [Identity?], levels: LevelTable) async throws {
        for (event, subject) in zip(events, subjects) where event.kind == .memberPhoneBound {
            guard let subject, let phone = event.attributes["phone"]?.string, !phone.isEmpty else { continue }
            let member = try await members.resolve(subject, unionid: event.subject.unionid)
            _ = try await members.bindPhone(phone, member: member, eventID: event.id, levels: levels)
        }
    }

    /// The platform identity an event's openid names: only where the platform is one that issues
    /// openids (the app is then the platform app that issued it). A beacon's openid (`h5`) names
    /// no identity: the page says neither which platform app issued it nor proves it is the
    /// visitor's, and reading it as, say, the brand's WeChat openid would let anyone earn on any
    /// member's account by naming its openid. So a claimed beacon earns nothing, even under a rule
    /// with `allowClaimed`; a beacon earns only with a member token (``tokenMember(_:)``).
    static func identity(_ event: Envelope) -> Identity? {
        guard tokenMember(event) == nil, let openid = event.subject.openid, !openid.isEmpty,
              [.wechat, .alipay, .weibo, .qq].contains(event.platform) else { return nil }
        return Identity(platform: event.platform, app: event.app, openid: openid)
    }

    /// The member a verified subject names by id (a beacon with a member token: the gateway puts
    /// the token's member there and nothing else). An unverified subject's member id is ignored.
    static func tokenMember(_ event: Envelope) -> Int64? {
        guard event.subject.verified, let member = event.subject.memberId, member > 0 else { return nil }
        return member
    }

    static func reference(_ event: Envelope, _ key: String) -> String? {
        switch event.attributes[key] {
        case .string(let text)?: return text
        case .integer(let value)?: return String(value)
        default: return nil
        }
    }

    static func grant(_ decision: Decision, _ item: Pending, calendar: BusinessCalendar) -> [LedgerGrant] {
        guard decision.points > 0 || decision.growth > 0 else { return [] }
        let due = item.rule.maturity(of: item.event.occurredAt, calendar: calendar)
        return [LedgerGrant(member: item.member, kind: due != nil ? .pending : .grant, rule: item.rule.code,
                            points: decision.points, growth: decision.growth, reason: item.rule.reason, eventID: item.event.id,
                            ref: item.rule.reversal.flatMap { reference(item.event, $0.key) }, occurredAt: item.event.occurredAt,
                            dueAt: due,
                            expiresAt: item.rule.pointsExpireAfterDays.map { item.event.occurredAt.addingTimeInterval(Double($0) * 86_400) },
                            subject: item.subject)]
    }
}
