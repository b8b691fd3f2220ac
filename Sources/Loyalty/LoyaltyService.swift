import Contracts
import Foundation
import Members
import PostgresClient
import RedisClient
import Jobs

/// What the loyalty program did with one event, or with one rule's grant for one event.
public enum LoyaltyOutcome: Sendable, Equatable {
    /// Written to the ledger and the spendable balance (`status` says whether a cap clamped it).
    case granted(event: String, rule: String, member: Int64, points: Int64, growth: Int64, status: Decision.Status)
    /// Written as pending: it matures at its due date unless a refund cancels it first.
    case pending(event: String, rule: String, member: Int64, points: Int64, growth: Int64, status: Decision.Status)
    /// The ledger already had this grant (a redelivery, a retried batch): nothing moved.
    case alreadyApplied(event: String, rule: String, member: Int64)
    /// The caps or the rule's frequency left nothing to grant.
    case refused(event: String, rule: String, member: Int64, status: Decision.Status)
    /// A refund took back what the rule had granted (or still held pending) for its reference.
    case reversed(event: String, rule: String, member: Int64, points: Int64, growth: Int64)
    /// A member's level moved with their growth (published through the outbox).
    case levelChanged(LevelChange)
    /// A `member.phone_bound` event bound the phone, merged two members, or had been applied.
    case phoneBound(event: String, PhoneBinding)
    /// The event names no member: a claimed beacon, a platform that issues no openids, a member
    /// token whose member is gone. Nothing is granted for it.
    case noMember(event: String)
}

/// The loyalty program as one service: every qualifying event becomes the points and growth the
/// brand's rules say, within the caps, once; referrals grant the referrer too; refunds take grants
/// back; a bound phone merges members.
///
/// Two steps, because a PostgreSQL transaction here is a synchronous body on one connection (no
/// awaiting Redis inside it), and because caps must be decided before anything is written:
/// - ``prepare(_:)``, before the transaction: members resolved (created on first sight), phone
///   bindings applied (each its own transaction, keyed by the event), each event's matching rules
///   decided in Redis (one Lua call per member and event, pipelined across the batch). Every step is
///   idempotent by key: a redelivered batch gets the stored decisions back and counts no cap twice.
/// - ``handle(_:in:)``, inside the caller's transaction (the pipeline's, with the events' history):
///   the ledger, balances, levels, maturity jobs and news. The ledger's unique index stops a second
///   write, so a worker that died between the two steps loses nothing.
public struct LoyaltyService: Sendable {
    /// The events the program looks at: every platform and server event, and of the beacons only
    /// the share (a member-token share can earn). Page views, dwell and clicks never reach it, so
    /// page analytics cannot crowd out points. FanFlow's own follow-ups (`fanflow.*`) are no one's
    /// behaviour and never match.
    public static let selector = EventSelector(["wechat.#", "alipay.#", "weibo.#", "qq.#", "server.#", "h5.share"])

    public var selector: EventSelector { Self.selector }

    let rules: RuleBook
    let members: MemberDirectory
    let decider: PointsDecider
    let ledger: Ledger
    /// Whether the decider's counters are whole (see ``CounterReadiness``): after Redis lost its
    /// data the service rebuilds them before deciding again.
    let readiness: CounterReadiness
    /// Other domains' parts of a merge a bound phone causes (tags' counts), beside Loyalty's own.
    let mergeParticipants: [any MemberMergeParticipant]

    public init(rules: RuleBook, members: MemberDirectory, decider: PointsDecider, ledger: Ledger,
                mergeParticipants: [any MemberMergeParticipant] = []) {
        self.mergeParticipants = mergeParticipants
        self.rules = rules
        self.members = members
        self.decider = decider
        self.ledger = ledger
        self.readiness = CounterReadiness(decider: decider, ledger: ledger)
    }

    public init(database: PostgresPool, redis: RedisPool, timeZone: TimeZone, pointsNews: any PointsNewsPolicy = AlwaysAnnounce(),
                mergeParticipants: [any MemberMergeParticipant] = []) {
        self.init(rules: RuleBook(store: RuleStore(database: database), calendar: BusinessCalendarStore(database: database),
                                  timeZone: timeZone), members: MemberDirectory(database: database),
                  decider: PointsDecider(redis: redis, calendar: PeriodCalendar(timeZone: timeZone)),
                  ledger: Ledger(database: database, news: pointsNews), mergeParticipants: mergeParticipants)
    }

    /// What ``prepare(_:)`` decided, to be written by ``handle(_:in:)``.
    public struct Plan: Sendable {
        let levels: LevelTable
        /// ``PointsNewsPolicy`` asked before the transaction (it may read the push triggers).
        let announcing: Bool
        let grants: [LedgerGrant]
        let reversals: [LedgerReversal]
        /// Decision status by (event, rule, member), for the outcomes of written grants.
        let statuses: [Ledger.EntryKey: Decision.Status]
        /// Outcomes known before anything is written: refusals, phone bindings, events with no member.
        let decided: [LoyaltyOutcome]

        /// Whether the transaction has anything of Loyalty's to write.
        public var writes: Bool { !grants.isEmpty || !reversals.isEmpty }
    }

    /// One rule's grant for one member, waiting for its decision.
    struct Pending {
        let index: Int
        let event: Envelope
        let member: Int64
        let subject: Identity
        let rule: PointsRule
    }

    /// Everything before the transaction: members, phone bindings, nicknames, Redis decisions.
    public func prepare(_ events: [Envelope]) async throws -> Plan {
        let events = events.filter(selector.matches)
        let program = try await rules.current()
        var decided: [LoyaltyOutcome] = []
        let subjects = events.map(Self.identity)
        decided += try await bindPhones(events, subjects, levels: program.levels)
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
            guard let (member, subject) = resolved[index] else {
                decided.append(.noMember(event: event.id))
                continue
            }
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

        var statuses: [Ledger.EntryKey: Decision.Status] = [:]
        func take(_ decision: Decision, _ item: Pending) {
            let grant = Self.grant(decision, item, calendar: program.calendar)
            if let grant {
                grants.append(grant)
                statuses[Ledger.EntryKey(eventID: grant.eventID, rule: grant.rule, member: grant.member, kind: grant.kind.rawValue)] = decision.status
            } else {
                decided.append(.refused(event: item.event.id, rule: item.rule.code, member: item.member, status: decision.status))
            }
        }
        // A referral grants the referrer too, once per new member: only where the new member's
        // own grant was not refused by the rule's once-only frequency.
        var referralRequests: [DecisionRequest] = []
        var referralPending: [[Pending]] = []
        for (decidedRules, waiting) in zip(decisions, pending) {
            for (decision, item) in zip(decidedRules, waiting) {
                take(decision, item)
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
            for (decidedRules, waiting) in zip(try await decider.decide(referralRequests), referralPending) {
                for (decision, item) in zip(decidedRules, waiting) { take(decision, item) }
            }
        }
        let announcing = grants.isEmpty ? false : await ledger.announcesGrants()
        return Plan(levels: program.levels, announcing: announcing, grants: grants, reversals: reversals, statuses: statuses,
                    decided: decided)
    }

    /// Writes what ``prepare(_:)`` decided, in the caller's transaction.
    public func handle(_ plan: Plan, in transaction: isolated PostgresConnection) throws -> [LoyaltyOutcome] {
        var outcomes = plan.decided
        guard plan.writes else { return outcomes }
        let written = try Ledger.write(grants: plan.grants, reversals: plan.reversals, levels: plan.levels,
                                       announcing: plan.announcing, on: transaction)
        for grant in plan.grants {
            let key = Ledger.EntryKey(eventID: grant.eventID, rule: grant.rule, member: grant.member, kind: grant.kind.rawValue)
            guard written.inserted.contains(key) else {
                outcomes.append(.alreadyApplied(event: grant.eventID, rule: grant.rule, member: grant.member))
                continue
            }
            let status = plan.statuses[key] ?? .granted
            switch grant.kind {
            case .grant:
                outcomes.append(.granted(event: grant.eventID, rule: grant.rule, member: grant.member, points: grant.points,
                                         growth: grant.growth, status: status))
            case .pending:
                outcomes.append(.pending(event: grant.eventID, rule: grant.rule, member: grant.member, points: grant.points,
                                         growth: grant.growth, status: status))
            }
        }
        for reversed in written.reversed {
            outcomes.append(.reversed(event: reversed.key.eventID, rule: reversed.key.rule, member: reversed.key.member,
                                      points: reversed.points, growth: reversed.growth))
        }
        outcomes += written.levelChanges.map(LoyaltyOutcome.levelChanged)
        return outcomes
    }

    /// Both steps, the write in a transaction of its own: for callers without a pipeline around
    /// them (tools, tests of the program alone).
    public func process(_ events: [Envelope]) async throws -> [LoyaltyOutcome] {
        let plan = try await prepare(events)
        guard plan.writes else { return plan.decided }
        return try await ledger.database.transaction { try self.handle(plan, in: $0) }
    }

    /// Phone bindings go first, each in its own transaction keyed by the event: a merge they cause
    /// decides which member the batch's grants go to, so it must be visible before members resolve.
    func bindPhones(_ events: [Envelope], _ subjects: [Identity?], levels: LevelTable) async throws -> [LoyaltyOutcome] {
        var outcomes: [LoyaltyOutcome] = []
        for (event, subject) in zip(events, subjects) where event.kind == .memberPhoneBound {
            guard let subject, let phone = event.attributes["phone"]?.string, !phone.isEmpty else { continue }
            let member = try await members.resolve(subject, unionid: event.subject.unionid)
            let binding = try await members.bindPhone(phone, member: member, eventID: event.id, participants: [LoyaltyMerge(levels: levels)] + mergeParticipants)
            outcomes.append(.phoneBound(event: event.id, binding))
        }
        return outcomes
    }

    /// The platform identity an event's openid names: only where the platform is one that issues
    /// openids (the app is then the platform app that issued it). A beacon's openid (`h5`) names
    /// no identity: the page says neither which platform app issued it nor proves it is the
    /// visitor's, and reading it as, say, the brand's WeChat openid would let anyone earn on any
    /// member's account by naming its openid. So a claimed beacon earns nothing, even under a rule
    /// with `allowClaimed`; a beacon earns only with a member token (``tokenMember(_:)``).
    static func identity(_ event: Envelope) -> Identity? { event.platformIdentity }

    static func tokenMember(_ event: Envelope) -> Int64? { event.tokenMember }

    static func reference(_ event: Envelope, _ key: String) -> String? {
        switch event.attributes[key] {
        case .string(let text)?: return text
        case .integer(let value)?: return String(value)
        default: return nil
        }
    }

    static func grant(_ decision: Decision, _ item: Pending, calendar: BusinessCalendar) -> LedgerGrant? {
        guard decision.points > 0 || decision.growth > 0 else { return nil }
        let due = item.rule.maturity(of: item.event.occurredAt, calendar: calendar)
        return LedgerGrant(member: item.member, kind: due != nil ? .pending : .grant, rule: item.rule.code,
                           points: decision.points, growth: decision.growth, reason: item.rule.reason, eventID: item.event.id,
                           ref: item.rule.reversal.flatMap { reference(item.event, $0.key) }, occurredAt: item.event.occurredAt,
                           dueAt: due,
                           expiresAt: item.rule.pointsExpireAfterDays.map { item.event.occurredAt.addingTimeInterval(Double($0) * 86_400) },
                           subject: item.subject)
    }
}
