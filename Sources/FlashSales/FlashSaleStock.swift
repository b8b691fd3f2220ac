import Foundation
import RedisClient
import Synchronization

/// A campaign's live stock in Redis: every decision is one Lua call, all of its keys under one
/// hash tag (so the scripts run unchanged on Redis Cluster). The scripts are resource files,
/// `Sources/FlashSales/Resources/*.lua` (``FlashSaleScripts``).
///
/// A stripe's hash holds `initial`, `remaining`, `reserved`, `paid` (units), the per-member
/// `limit`, the window (`start`, `end`, epoch ms) and the payment `timeout` (s). A member's units
/// (reserved or paid) are counted under `held:<member>`; a request id's answer under
/// `req:<member>:<requestId>`, so a retry gets the same reservation, not a second unit.
///
/// Each reservation has a hold record, `hold:<reservation>` (`state`, `q`, `member`, `req`, `at`),
/// and every change of it is one compare-and-set in ``holdScript``, so its units leave stock once
/// and come back at most once, whoever gets there first:
///
///     held ─confirm (gateway, publish confirmed)→ confirmed ─order (orders pool)→ ordered ─pay→ paid
///       │                                                                        └─expire / late pay→ released
///       └─rollback (gateway, publish unconfirmed) / reclaim (periodic reconcile, no order after 2 min)→ released
///
/// `held` and `confirmed` may also become `ordered` directly (the orders pool can be faster than
/// the gateway's confirm); only `released` and `paid` move units, and only from a state that still
/// holds them. The orders pool finding a hold already `released` writes the order cancelled. Holds
/// still `held` are indexed by time in the stripe's `holds` sorted set, so a reserve whose reply
/// was lost (nobody knows the unit is held) is found and returned (``Reconciler/reclaim``).
///
/// Most campaigns have one stripe, tag `{fs:<id>}`. A very large one may spread its stock over K
/// stripes (`stockSlots`), tags `{fs:<id>#k}`, which Redis Cluster places on different shards: a
/// member's counters, answers, holds and units all live on the stripe `member mod K`, so each
/// decision is still one call on one stripe. A stripe that runs dry borrows from the others (``borrow``).
public struct FlashSaleStock: Sendable {
    let redis: RedisPool
    /// How long a request id's answer is remembered.
    public var requestTTLMilliseconds: Int = 86_400_000
    /// How long "every stripe is empty" is believed before the stripes are asked again. Units that
    /// come back (an expiry, a rollback) clear it at once; this only bounds a race with them.
    static let drainedMilliseconds = 1000

    /// Striped campaigns this process found drained, and until when it believes so without asking.
    let drained = DrainedCampaigns()

    public init(redis: RedisPool) { self.redis = redis }

    /// A gateway's own short memory of "every stripe is empty", so the crowd after a sell-out costs
    /// one Redis call per attempt, as on an unstriped campaign. Units that come back through this
    /// process clear it at once; through another, within ``memory``.
    final class DrainedCampaigns: Sendable {
        static let memory = Duration.milliseconds(200)
        private let until = Mutex<[String: ContinuousClock.Instant]>([:])

        func isDrained(_ sale: String) -> Bool { until.withLock { ($0[sale] ?? .now) > .now } }
        func remember(_ sale: String) {
            until.withLock { until in
                if until.count > 1000 { until.removeAll() }
                until[sale] = .now + Self.memory
            }
        }
        func forget(_ sale: String) { _ = until.withLock { $0.removeValue(forKey: sale) } }
    }

    /// The keys of one stripe of a campaign.
    public struct Stripe: Sendable, Equatable {
        public let index: Int
        let tag: String
        public func key(_ rest: String) -> String { "fanflow:{\(tag)}:\(rest)" }
    }

    public static func stripes(_ sale: String, slots: Int) -> [Stripe] {
        slots <= 1 ? [Stripe(index: 0, tag: "fs:\(sale)")] : (0..<slots).map { Stripe(index: $0, tag: "fs:\(sale)#\($0)") }
    }

    /// The stripe holding `member`'s counters and units.
    public static func home(_ sale: String, slots: Int, member: Int64) -> Stripe {
        let stripes = stripes(sale, slots: slots)
        return stripes[Int(member.magnitude % UInt64(stripes.count))]
    }

    /// Set for a moment when a striped campaign's stripes were all found empty, so the crowd after
    /// a sell-out costs one more call per attempt, not one per stripe.
    static func drainedKey(_ sale: String) -> String { "fanflow:{fs:\(sale)}:drained" }

    /// What a reservation attempt got.
    public enum Answer: Sendable, Equatable {
        /// Reserved by this call (publish it, then ``confirm``), or by an earlier call with this
        /// request id that is still publishing (`inFlight`) or was confirmed (`confirmed`).
        case reserved(Reservation, state: State)
        case refused(Refusal)

        public enum State: Sendable, Equatable { case new, inFlight, confirmed }
    }

    public struct Reservation: Sendable, Equatable {
        public let id: String
        public let payBy: Date
        public let quantity: Int
    }

    public enum Refusal: String, Sendable, Equatable {
        case soldOut = "sold_out"
        case limitReached = "limit_reached"
        case notStarted = "not_started"
        case ended = "ended"
        case notEligible = "not_eligible"
        case rateLimited = "rate_limited"
        case notLoaded = "not_loaded"
    }

    /// KEYS: stripe. ARGV: initial, limit, start, end, timeout, audience flag, then for a new
    /// stripe remaining, reserved, paid; then the change of `initial` for an existing stripe, or
    /// empty to move it to ARGV[1].
    static var loadScript: RedisScript { get throws { try FlashSaleScripts.named("load") } }

    /// KEYS: sale, held, request, rate, audience, hold, holds. ARGV: now (ms), quantity, reservation
    /// id, rate limit per window (0 = none), window (ms), request TTL (ms), member id, request id.
    /// A reservation's hold record starts `held`, indexed by time until something settles it.
    static var reserveScript: RedisScript { get throws { try FlashSaleScripts.named("reserve") } }

    /// One change of a reservation's hold, compare-and-set: it happens only from one of the states
    /// in `from`, and only `released` (units back to stock and to the member's limit) and `paid`
    /// (reserved to paid) move units. Answers whether this call made the change and the state
    /// after it (none: no record), or that Redis no longer holds the campaign (rebuild it:
    /// ``Reconciler``): ``ScriptReply/Hold``.
    ///
    /// A missing record (Redis lost it, or the reservation predates hold records) is handled as
    /// `missing` says: `none` changes nothing; `adopt` (an order arriving) takes the units from
    /// stock again if there are enough, else the hold is `released` (cancelled, never oversold),
    /// unless the request's answer (fix = 1) still names the reservation: then it was reserved by
    /// the earlier scheme, which kept no record, and its units are counted already;
    /// `assume` (expiry or payment of an existing order) treats it as `ordered`, unless a `settled`
    /// mark of the earlier scheme says it was settled already.
    ///
    /// With `fix` = 1 the request's answer (KEYS[5]) follows the hold while it is still this
    /// reservation's pending one: deleted once released (the request id may try again), `ok` once
    /// confirmed, ordered or paid.
    ///
    /// KEYS: sale, held, hold, holds, request (or any key of the stripe), legacy settled mark.
    /// ARGV: to, from (comma-separated), quantity and member (for a missing record), missing, fix,
    /// reservation id.
    static var holdScript: RedisScript { get throws { try FlashSaleScripts.named("hold") } }

    /// KEYS: a donor stripe. ARGV: units wanted. Gives up half of what it has left (at least what
    /// is wanted, at most what it has), so a dry stripe does not come back for every unit.
    static var lendScript: RedisScript { get throws { try FlashSaleScripts.named("lend") } }

    /// KEYS: the drained mark. ARGV: "check", or "set" and its TTL (ms). Scripts, not plain
    /// commands, so these ride the coalesced pipelines with the reservations.
    static var drainedScript: RedisScript { get throws { try FlashSaleScripts.named("drained") } }

    /// KEYS: a stripe. ARGV: units lent to it. 0 when the stripe is gone (Redis lost it).
    static var creditScript: RedisScript { get throws { try FlashSaleScripts.named("credit") } }

    /// Loads (or updates) a campaign. A new campaign's counters start from `books` (what
    /// PostgreSQL already holds for it, zero for a new one); an existing one keeps its counters and
    /// moves `initial` and `remaining` by the change in stock. Returns false when the new stock is
    /// below what is already reserved or paid.
    public func load(_ sale: FlashSale, books: Inventory, audience: [Int64]) async throws -> Bool {
        let end = Self.milliseconds(sale.endAt)
        let stripes = Self.stripes(sale.id, slots: sale.stockSlots)
        if sale.audienceTag != nil {
            var members = Array(repeating: [Int64](), count: stripes.count)
            for member in audience { members[Self.home(sale.id, slots: sale.stockSlots, member: member).index].append(member) }
            for stripe in stripes {
                let key = stripe.key("audience")
                _ = try await redis.connection.command(["DEL", key])
                let own = members[stripe.index]
                for chunk in stride(from: 0, to: own.count, by: 5000) {
                    _ = try await redis.connection.command(["SADD", key] + own[chunk..<min(chunk + 5000, own.count)].map(String.init))
                }
                _ = try await redis.connection.command(["PEXPIREAT", key, String(end + 30 * 86_400_000)])
            }
        }
        guard stripes.count > 1 else {
            return try await loadStripe(stripes[0], sale, initial: Int64(sale.stock), fresh: books, delta: nil)
        }
        let live = try await stripeInventories(sale.id, slots: sale.stockSlots)
        if live.allSatisfy({ $0 == nil }) {
            // New: the remaining units spread evenly; what the books hold as reserved or paid is
            // counted on the first stripe (sums are what matter until a reconcile places it).
            for (stripe, share) in zip(stripes, Self.shares(books.remaining, over: stripes.count)) {
                let fresh = stripe.index == 0 ? Inventory(initial: share + books.reserved + books.paid, remaining: share,
                                                         reserved: books.reserved, paid: books.paid)
                                              : Inventory(initial: share, remaining: share, reserved: 0, paid: 0)
                _ = try await loadStripe(stripe, sale, initial: fresh.initial, fresh: fresh, delta: nil)
            }
            return true
        }
        let present = live.compactMap { $0 }
        guard present.count == stripes.count else {
            throw RedisError(.server, "flash sale \(sale.id) lost \(stripes.count - present.count) of its \(stripes.count) stripes; reconcile it")
        }
        let deltas = Self.deltas(Int64(sale.stock) - present.reduce(0) { $0 + $1.initial }, remaining: present.map(\.remaining))
        guard let deltas else { return false }
        var applied: [(Stripe, Int64)] = []
        for (stripe, delta) in zip(stripes, deltas) {
            if try await loadStripe(stripe, sale, initial: 0, fresh: nil, delta: delta) {
                applied.append((stripe, delta))
                continue
            }
            // A stripe sold what the snapshot said it had: undo, and say the stock is too low now.
            for (done, change) in applied where change != 0 {
                _ = try await loadStripe(done, sale, initial: 0, fresh: nil, delta: -change)
            }
            return false
        }
        return true
    }

    func loadStripe(_ stripe: Stripe, _ sale: FlashSale, initial: Int64, fresh: Inventory?, delta: Int64?) async throws -> Bool {
        try await evaluate(Self.loadScript, keys: [stripe.key("sale")], arguments: [
            String(initial), String(sale.perMemberLimit), String(Self.milliseconds(sale.startAt)), String(Self.milliseconds(sale.endAt)),
            String(sale.paymentTimeoutSeconds), sale.audienceTag == nil ? "0" : "1", String(fresh?.remaining ?? 0),
            String(fresh?.reserved ?? 0), String(fresh?.paid ?? 0), delta.map(String.init) ?? "",
        ]).decoded(ScriptReply.load)
    }

    /// `total` split into `count` near-equal shares.
    static func shares(_ total: Int64, over count: Int) -> [Int64] {
        let each = total / Int64(count), extra = Int(total % Int64(count))
        return (0..<count).map { each + ($0 < extra ? 1 : 0) }
    }

    /// How a change of stock falls on the stripes: more stock spread evenly; less taken from the
    /// stripes with the most left. Nil when the stripes do not have that much left.
    static func deltas(_ change: Int64, remaining: [Int64]) -> [Int64]? {
        if change >= 0 { return shares(change, over: remaining.count) }
        var owed = -change
        var deltas = Array(repeating: Int64(0), count: remaining.count)
        for index in remaining.indices.sorted(by: { remaining[$0] > remaining[$1] }) where owed > 0 {
            let taken = min(owed, max(remaining[index], 0))
            deltas[index] = -taken
            owed -= taken
        }
        return owed == 0 ? deltas : nil
    }

    static func milliseconds(_ date: Date) -> Int64 { Int64((date.timeIntervalSince1970 * 1000).rounded()) }

    /// One attempt: window, audience, per-member limit, stock, and the request id's earlier answer,
    /// in one call on the member's stripe. When a striped campaign's stripe is dry, it borrows from
    /// the others and tries again before answering `sold_out`.
    public func reserve(sale: String, slots: Int, member: Int64, quantity: Int, requestID: String, now: Date = Date(),
                        ratePerSecond: Int) async throws -> Answer {
        // 32 characters of [0-9a-f]: what WeChat Pay's out_trade_no and Alipay's allow.
        let reservationID = Self.hexID()
        let stripe = Self.home(sale, slots: slots, member: member)
        func attempt(rate: Int) async throws -> Answer {
            try await reserve(on: stripe, sale: sale, member: member, quantity: quantity, requestID: requestID, reservationID: reservationID,
                              now: now, ratePerSecond: rate)
        }
        var answer = try await attempt(rate: ratePerSecond)
        // Twice at most: units borrowed can be taken by the stripe's other members first.
        for _ in 0..<2 where slots > 1 && answer == .refused(.soldOut) {
            guard try await borrow(into: stripe, sale: sale, slots: slots, quantity: quantity) else { break }
            answer = try await attempt(rate: 0)  // the attempt was counted once already
        }
        return answer
    }

    private static let hexDigits = Array("0123456789abcdef".utf8)

    /// A random UUID as 32 lowercase hex digits.
    static func hexID() -> String {
        let uuid = UUID().uuid
        var out: [UInt8] = []
        out.reserveCapacity(32)
        withUnsafeBytes(of: uuid) { raw in
            for byte in raw {
                out.append(hexDigits[Int(byte >> 4)])
                out.append(hexDigits[Int(byte & 0x0F)])
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    func reserve(on stripe: Stripe, sale: String, member: Int64, quantity: Int, requestID: String, reservationID: String, now: Date,
                 ratePerSecond: Int) async throws -> Answer {
        let reply = try await evaluate(Self.reserveScript, keys: [
            stripe.key("sale"), stripe.key("held:\(member)"), stripe.key("req:\(member):\(requestID)"),
            stripe.key("rate:\(member)"), stripe.key("audience"), stripe.key("hold:\(reservationID)"), stripe.key("holds"),
        ], arguments: [
            String(Self.milliseconds(now)), String(quantity), reservationID, String(ratePerSecond), "1000",
            String(requestTTLMilliseconds), String(member), requestID,
        ])
        switch try ScriptReply.Reserve.decode(reply) {
        case .refused(let refusal):
            return .refused(refusal)
        case .answer(let confirmed, let id, let payBy, let units):
            let reservation = Reservation(id: id, payBy: Date(timeIntervalSince1970: Double(payBy) / 1000), quantity: units)
            let state: Answer.State = confirmed ? .confirmed : (id == reservationID ? .new : .inFlight)
            return .reserved(reservation, state: state)
        }
    }

    /// Moves units from other stripes to a dry one, `quantity` at least where there is that much.
    /// Each move is two calls (a donor gives, then the dry stripe is credited), never one across
    /// stripes, which Redis Cluster would refuse: a gateway that dies between the two loses the
    /// units in transit from Redis (stock undersold, never oversold) until `reconcile --repair`.
    /// False when every stripe is empty.
    func borrow(into home: Stripe, sale: String, slots: Int, quantity: Int) async throws -> Bool {
        if drained.isDrained(sale) { return false }
        if try await evaluate(Self.drainedScript, keys: [Self.drainedKey(sale)], arguments: ["check"]).decoded(ScriptReply.drained) {
            drained.remember(sale)
            return false
        }
        let stripes = Self.stripes(sale, slots: slots)
        var moved: Int64 = 0
        for step in 1..<stripes.count where moved < Int64(quantity) {
            let donor = stripes[(home.index + step) % stripes.count]
            let lent = try await evaluate(Self.lendScript, keys: [donor.key("sale")], arguments: [String(Int64(quantity) - moved)])
                .decoded(ScriptReply.lend)
            guard lent > 0 else { continue }
            if try await !evaluate(Self.creditScript, keys: [home.key("sale")], arguments: [String(lent)]).decoded(ScriptReply.credit) {
                _ = try await evaluate(Self.creditScript, keys: [donor.key("sale")], arguments: [String(lent)]).decoded(ScriptReply.credit)
                return false
            }
            moved += lent
        }
        if moved == 0 {
            drained.remember(sale)
            _ = try await evaluate(Self.drainedScript, keys: [Self.drainedKey(sale)], arguments: ["set", String(Self.drainedMilliseconds)])
        }
        return moved > 0
    }

    /// Where a reservation's hold stands (see ``FlashSaleStock``).
    public enum HoldState: String, Sendable, Equatable, CaseIterable {
        /// Reserved; the gateway has not heard the broker confirm its publish.
        case held
        /// Its publish was confirmed: the order is on its way.
        case confirmed
        /// The orders pool wrote its order.
        case ordered
        /// Its units are back in stock (rolled back, reclaimed, expired, or paid too late).
        case released
        case paid
    }

    /// What one change of a hold did.
    public struct HoldChange: Sendable, Equatable {
        /// This call made the change (and moved the units, if the change moves any).
        public let won: Bool
        /// The state after the call; nil when Redis holds no record of the reservation.
        public let state: HoldState?
    }

    /// A campaign's state in Redis is gone (a Redis that lost its data): rebuild it from
    /// PostgreSQL with ``Reconciler`` before its holds can change.
    public struct CampaignLost: Error, CustomStringConvertible {
        public let sale: String
        public var description: String { "Redis no longer holds flash sale \(sale); it is rebuilt by reconcile" }
    }

    enum Missing: String { case none, adopt, assume }

    /// One change of a hold, as ``holdScript`` takes it.
    struct HoldCall {
        let sale: String
        let slots: Int
        let member: Int64
        let reservationID: String
        let quantity: Int
        let to: HoldState
        let from: [HoldState]
        let missing: Missing
        /// The request whose answer follows the hold, when known.
        let requestID: String?

        func call() throws -> RedisCoalescer.Call {
            let stripe = FlashSaleStock.home(sale, slots: slots, member: member)
            return (try FlashSaleStock.holdScript, [
                stripe.key("sale"), stripe.key("held:\(member)"), stripe.key("hold:\(reservationID)"), stripe.key("holds"),
                stripe.key(requestID.map { "req:\(member):\($0)" } ?? "hold:\(reservationID)"), stripe.key("settled:\(reservationID)"),
            ], [to.rawValue, from.map(\.rawValue).joined(separator: ","), String(quantity), String(member), missing.rawValue,
                requestID == nil ? "0" : "1", reservationID])
        }
    }

    /// Applies hold changes in one pipelined round trip; answers in order.
    func change(_ calls: [HoldCall]) async throws -> [HoldChange] {
        guard !calls.isEmpty else { return [] }
        let replies = try await redis.evalSHA(try calls.map { try $0.call() })
        guard replies.count == calls.count else { throw RedisError(.protocolError, "\(replies.count) replies to \(calls.count) hold changes") }
        var changes: [HoldChange] = []
        var refilled: Set<String> = []  // striped campaigns that got units back
        for (call, reply) in zip(calls, replies) {
            if case .error(let message) = reply { throw RedisError(.server, message) }
            let change: HoldChange
            switch try ScriptReply.Hold.decode(reply) {
            case .lost: throw CampaignLost(sale: call.sale)
            case .change(let won, let state): change = HoldChange(won: won, state: state)
            }
            if change.won && call.to == .released && call.slots > 1 { refilled.insert(call.sale) }
            changes.append(change)
        }
        // Units came back: members of a striped campaign's dry stripes may borrow again.
        for sale in refilled { try await undrain(sale) }
        return changes
    }

    func change(_ call: HoldCall) async throws -> HoldChange { try await change([call])[0] }

    /// After the broker confirmed the reservation's publish: `held` becomes `confirmed`. The
    /// answer says where the hold stands: `released` means a reclaim got there first (the order
    /// will be cancelled), so the reservation is not the member's.
    @discardableResult
    public func confirm(sale: String, slots: Int, member: Int64, requestID: String, _ reservation: Reservation) async throws -> HoldChange {
        try await change(HoldCall(sale: sale, slots: slots, member: member,
                                  reservationID: reservation.id, quantity: reservation.quantity, to: .confirmed, from: [.held],
                                  missing: .none, requestID: requestID))
    }

    /// After the publish was not confirmed (the broker may still have taken it): `held` becomes
    /// `released`, the unit goes back and the request id is free to try again. When the order got
    /// there first (`ordered`), the reservation stands.
    @discardableResult
    public func rollback(sale: String, slots: Int, member: Int64, requestID: String, _ reservation: Reservation) async throws -> HoldChange {
        try await change(HoldCall(sale: sale, slots: slots, member: member,
                                  reservationID: reservation.id, quantity: reservation.quantity, to: .released, from: [.held],
                                  missing: .none, requestID: requestID))
    }

    /// A reservation the orders pool is writing an order for.
    public struct Arrival: Sendable, Equatable {
        public let sale: String
        public let slots: Int
        public let member: Int64
        public let reservationID: String
        public let quantity: Int
        public let requestID: String?

        public init(sale: String, slots: Int, member: Int64, reservationID: String, quantity: Int, requestID: String?) {
            self.sale = sale
            self.slots = slots
            self.member = member
            self.reservationID = reservationID
            self.quantity = quantity
            self.requestID = requestID
        }
    }

    /// The orders pool's step, before it writes the orders: each hold `held` or `confirmed`
    /// becomes `ordered`. A hold found `released` (rolled back by its gateway, or reclaimed) must be
    /// written as a cancelled order with no expiry. A record Redis lost is adopted: its units are
    /// taken from stock again if there are enough, else it is released.
    public func order(_ arrivals: [Arrival]) async throws -> [HoldChange] {
        try await change(arrivals.map { a in
            HoldCall(sale: a.sale, slots: a.slots, member: a.member, reservationID: a.reservationID,
                     quantity: a.quantity, to: .ordered, from: [.held, .confirmed], missing: .adopt, requestID: a.requestID)
        })
    }

    /// Moves a paid order's units from reserved to paid, once however often it is called.
    @discardableResult
    public func markPaid(sale: String, slots: Int, member: Int64, reservationID: String, quantity: Int) async throws -> Bool {
        try await change(HoldCall(sale: sale, slots: slots, member: member,
                                  reservationID: reservationID, quantity: quantity, to: .paid, from: [.ordered, .confirmed, .held],
                                  missing: .assume, requestID: nil)).won
    }

    /// Returns an expired (or too-late paid) order's units, once however often it is called.
    @discardableResult
    public func release(sale: String, slots: Int, member: Int64, reservationID: String, quantity: Int) async throws -> Bool {
        try await change(HoldCall(sale: sale, slots: slots, member: member,
                                  reservationID: reservationID, quantity: quantity, to: .released, from: [.ordered, .confirmed, .held],
                                  missing: .assume, requestID: nil)).won
    }

    /// A hold as its record says.
    public struct Hold: Sendable, Equatable {
        public let reservationID: String
        public let stripe: Stripe
        public let state: HoldState
        public let member: Int64
        public let quantity: Int
        public let requestID: String?
        public let reservedAt: Date
    }

    /// Holds of the campaign still `held` (never confirmed, never ordered) reserved before `before`,
    /// oldest first, at most `limit` in all. Index entries whose record is gone are dropped.
    public func unconfirmedHolds(sale: String, slots: Int, before: Date, limit: Int = 100_000) async throws -> [Hold] {
        var holds: [Hold] = []
        let page = 1000
        for stripe in Self.stripes(sale, slots: slots) {
            var offset = 0
            while holds.count < limit {
                // The index's score is the reservation's time (ms), the one its age is judged by.
                let reply = try await redis.connection.command(["ZRANGEBYSCORE", stripe.key("holds"), "-inf", "(\(Self.milliseconds(before))",
                                                                "WITHSCORES", "LIMIT", String(offset), String(page)])
                if case .error(let message) = reply { throw RedisError(.server, message) }
                guard let flat = reply.array, flat.count % 2 == 0 else { throw RedisError(.protocolError, "unexpected ZRANGEBYSCORE reply \(reply)") }
                var indexed: [(id: String, at: Double)] = []
                for pair in stride(from: 0, to: flat.count, by: 2) {
                    guard let id = flat[pair].string, let at = flat[pair + 1].string.flatMap(Double.init) else {
                        throw RedisError(.protocolError, "unreadable hold index entry \(flat[pair]) \(flat[pair + 1])")
                    }
                    indexed.append((id, at))
                }
                offset += indexed.count
                let records = indexed.isEmpty ? [] : try await redis.connection.pipeline(indexed.map {
                    ["HMGET", stripe.key("hold:\($0.id)"), "state", "q", "member", "req"]
                })
                var gone: [String] = []
                for (entry, record) in zip(indexed, records) {
                    if case .error(let message) = record { throw RedisError(.server, message) }
                    let fields = record.array?.map(\.string) ?? []
                    // A record that expired or was dropped leaves its index entry behind: drop it too.
                    guard fields.count == 4, let stateText = fields[0] else {
                        gone.append(entry.id)
                        continue
                    }
                    guard let state = HoldState(rawValue: stateText), let quantity = fields[1].flatMap({ Int($0) }),
                          let member = fields[2].flatMap({ Int64($0) }) else {
                        throw RedisError(.protocolError, "unreadable hold record \(entry.id): \(fields)")
                    }
                    guard state == .held else { continue }
                    holds.append(Hold(reservationID: entry.id, stripe: stripe, state: state, member: member, quantity: quantity, requestID: fields[3],
                                      reservedAt: Date(timeIntervalSince1970: entry.at / 1000)))
                }
                if !gone.isEmpty {
                    _ = try await redis.connection.command(["ZREM", stripe.key("holds")] + gone)
                    offset -= gone.count
                }
                if indexed.count < page { break }
            }
        }
        return holds
    }

    /// Returns holds still `held` (never confirmed, never ordered) whose order never came: the
    /// same compare-and-set as a rollback, so a late order finds them released and is cancelled.
    /// Answers the reservations whose units this call returned.
    public func reclaim(sale: String, slots: Int, _ holds: [Hold]) async throws -> [String] {
        let calls = holds.filter { $0.state == .held }.map { hold in
            HoldCall(sale: sale, slots: slots, member: hold.member, reservationID: hold.reservationID, quantity: hold.quantity,
                     to: .released, from: [.held], missing: .none, requestID: hold.requestID)
        }
        return zip(calls, try await change(calls)).filter { $0.1.won }.map(\.0.reservationID)
    }

    /// Units came back to a stripe: members of the dry ones may borrow again.
    func undrain(_ sale: String) async throws {
        drained.forget(sale)
        _ = try await redis.connection.command(["DEL", Self.drainedKey(sale)])
    }

    /// The campaign's counters as Redis has them, summed over its stripes; nil when it is not
    /// loaded, or when Redis lost any of its stripes.
    public func inventory(sale: String, slots: Int) async throws -> Inventory? {
        let stripes = try await stripeInventories(sale, slots: slots)
        guard stripes.allSatisfy({ $0 != nil }) else { return nil }
        return stripes.compactMap { $0 }.reduce(Inventory(initial: 0, remaining: 0, reserved: 0, paid: 0)) {
            Inventory(initial: $0.initial + $1.initial, remaining: $0.remaining + $1.remaining, reserved: $0.reserved + $1.reserved,
                      paid: $0.paid + $1.paid)
        }
    }

    /// Each stripe's counters, nil for a stripe Redis does not hold.
    public func stripeInventories(_ sale: String, slots: Int) async throws -> [Inventory?] {
        let stripes = Self.stripes(sale, slots: slots)
        let replies = try await redis.connection.pipeline(stripes.map { ["HMGET", $0.key("sale"), "initial", "remaining", "reserved", "paid"] })
        return try replies.map { reply in
            if case .error(let message) = reply { throw RedisError(.server, message) }
            guard let values = reply.array?.map({ $0.string.flatMap { Int64($0) } }), values.count == 4,
                  let initial = values[0], let remaining = values[1], let reserved = values[2], let paid = values[3] else { return nil }
            return Inventory(initial: initial, remaining: remaining, reserved: reserved, paid: paid)
        }
    }

    func evaluate(_ script: RedisScript, keys: [String], arguments: [String]) async throws -> RedisReply {
        let reply = try await redis.evalSHA([(script, keys, arguments)]).first ?? .null
        if case .error(let message) = reply { throw RedisError(.server, message) }
        return reply
    }
}

extension FlashSaleStock {
    /// Rewrites a campaign's Redis state from PostgreSQL's orders: each stripe's counters, each
    /// member's held units (dropping units held for reservations that never became orders), and
    /// each order's hold record (`ordered`, `paid`, or `released` for expired, refunded and
    /// cancelled ones, so a redelivered expiry or a retried payment still changes nothing). Holds
    /// with no order are marked `released` (a late order for one is cancelled, never oversold).
    /// Request ids' answers cannot be rebuilt: a member who retries an old request id after a
    /// Redis loss is held to the per-member limit instead.
    public func restore(_ sale: FlashSale, books: Inventory, orders: [FlashSaleStore.OrderState]) async throws {
        let end = Self.milliseconds(sale.endAt)
        let keep = String(end + 30 * 86_400_000)
        let stripes = Self.stripes(sale.id, slots: sale.stockSlots)
        // Held units with no order behind them (a gateway died before publishing) go, and so do
        // those reservations' pending answers, which would otherwise say in_flight until they expire.
        var stale: [String] = []
        var orphans: [String] = []  // hold records with no order
        let known = Set(orders.map { Self.home(sale.id, slots: sale.stockSlots, member: $0.member).key("hold:\($0.reservationID)") })
        for stripe in stripes {
            stale += try await keys(matching: stripe.key("held:*"))
            stale.append(stripe.key("holds"))
            orphans += try await keys(matching: stripe.key("hold:*")).filter { !known.contains($0) }
            let answers = try await keys(matching: stripe.key("req:*"))
            for chunk in stride(from: 0, to: answers.count, by: 1000) {
                let batch = Array(answers[chunk..<min(chunk + 1000, answers.count)])
                let values = try await redis.connection.pipeline(batch.map { ["GET", $0] })
                stale += zip(batch, values).filter { $0.1.string?.hasPrefix("pending:") == true }.map(\.0)
            }
        }
        var commands: [[String]] = stale.map { ["DEL", $0] }
        // A `held` one is released: its gateway is gone or will find it so (503), and a late order
        // for it is cancelled. Others (confirmed, or ordered by a pool still writing its batch)
        // lose their record and their request's answer, so a late order takes its units anew if
        // there are enough (the counters rebuilt below do not count them).
        if !orphans.isEmpty {
            for chunk in stride(from: 0, to: orphans.count, by: 1000) {
                let batch = Array(orphans[chunk..<min(chunk + 1000, orphans.count)])
                let records = try await redis.connection.pipeline(batch.map { ["HMGET", $0, "state", "member", "req"] })
                for (key, record) in zip(batch, records) {
                    let fields = record.array?.map(\.string) ?? []
                    if fields.first.flatMap({ $0.flatMap(HoldState.init(rawValue:)) }) == .held {
                        commands.append(["HSET", key, "state", HoldState.released.rawValue])
                        continue
                    }
                    commands.append(["DEL", key])
                    if fields.count == 3, let member = fields[1].flatMap({ Int64($0) }), let request = fields[2] {
                        commands.append(["DEL", Self.home(sale.id, slots: sale.stockSlots, member: member).key("req:\(member):\(request)")])
                    }
                }
            }
        }
        var counters = zip(stripes, Self.shares(books.remaining, over: stripes.count)).map { Inventory(initial: $1, remaining: $1, reserved: 0, paid: 0) }
        var held: [Int64: Int] = [:]
        for order in orders {
            let stripe = Self.home(sale.id, slots: sale.stockSlots, member: order.member)
            let units = Int64(order.quantity)
            let state: HoldState
            switch order.status {
            case .reserved:
                held[order.member, default: 0] += order.quantity
                counters[stripe.index].reserved += units
                counters[stripe.index].initial += units
                state = .ordered
            case .paid:
                held[order.member, default: 0] += order.quantity
                counters[stripe.index].paid += units
                counters[stripe.index].initial += units
                state = .paid
            case .expired, .refundRequired, .cancelled:
                state = .released
            }
            commands += [
                ["HSET", stripe.key("hold:\(order.reservationID)"), "state", state.rawValue, "q", String(order.quantity), "member", String(order.member)],
                ["PEXPIREAT", stripe.key("hold:\(order.reservationID)"), keep],
            ]
        }
        for (stripe, count) in zip(stripes, counters) {
            commands += [
                ["DEL", stripe.key("sale")],
                ["HSET", stripe.key("sale"), "initial", String(count.initial), "remaining", String(count.remaining),
                 "reserved", String(count.reserved), "paid", String(count.paid), "limit", String(sale.perMemberLimit),
                 "start", String(Self.milliseconds(sale.startAt)), "end", String(end), "timeout", String(sale.paymentTimeoutSeconds),
                 "audience", sale.audienceTag == nil ? "0" : "1"],
                ["PEXPIREAT", stripe.key("sale"), keep],
            ]
        }
        for (member, units) in held {
            commands.append(["SET", Self.home(sale.id, slots: sale.stockSlots, member: member).key("held:\(member)"), String(units),
                             "PXAT", keep])
        }
        if stripes.count > 1 { commands.append(["DEL", Self.drainedKey(sale.id)]) }
        for chunk in stride(from: 0, to: commands.count, by: 1000) {
            for reply in try await redis.connection.pipeline(Array(commands[chunk..<min(chunk + 1000, commands.count)])) {
                if case .error(let message) = reply { throw RedisError(.server, message) }
            }
        }
    }

    /// The key that lets one process at a time rebuild a lost campaign (``Reconciler/rebuild``).
    static func rebuildKey(_ sale: String) -> String { "fanflow:{fs:\(sale)}:rebuilding" }

    /// Takes the campaign's rebuild lock for `milliseconds` (SET NX PX): false when another
    /// process holds it. The expiry frees it if that process dies mid-rebuild.
    func lockRebuild(_ sale: String, token: String, milliseconds: Int) async throws -> Bool {
        let reply = try await redis.connection.command(["SET", Self.rebuildKey(sale), token, "NX", "PX", String(milliseconds)])
        if case .error(let message) = reply { throw RedisError(.server, message) }
        return reply.string == "OK"
    }

    /// Frees the rebuild lock if this process still holds it. GET then DEL, not atomic: a lock
    /// that expired and was taken by another process in between could be freed, which needs a
    /// rebuild longer than its 60 s expiry (one of 10,000 orders takes well under a second).
    func unlockRebuild(_ sale: String, token: String) async throws {
        let key = Self.rebuildKey(sale)
        if try await redis.connection.command(["GET", key]).string == token { _ = try await redis.connection.command(["DEL", key]) }
    }

    /// Every key matching `pattern`, by SCAN (never KEYS, which blocks Redis).
    func keys(matching pattern: String) async throws -> [String] {
        var cursor = "0", found: [String] = []
        repeat {
            let reply = try await redis.connection.command(["SCAN", cursor, "MATCH", pattern, "COUNT", "1000"])
            guard let parts = reply.array, parts.count == 2, let next = parts[0].string else {
                throw RedisError(.protocolError, "unexpected SCAN reply \(reply)")
            }
            found += parts[1].array?.compactMap(\.string) ?? []
            cursor = next
        } while cursor != "0"
        return found
    }
}

extension FlashSaleStock {
    /// Loads a campaign as the books have it: its stock and window, counters from PostgreSQL for a
    /// campaign Redis does not hold yet, and the members of its audience tag. False when the stock
    /// is below what Redis already holds as reserved or paid.
    public func load(_ sale: FlashSale, from store: FlashSaleStore) async throws -> Bool {
        let books = try await store.inventory(sale.id)
            ?? Inventory(initial: Int64(sale.stock), remaining: Int64(sale.stock), reserved: 0, paid: 0)
        var audience: [Int64] = []
        if let tag = sale.audienceTag { audience = try await store.audience(tag: tag) }
        return try await load(sale, books: books, audience: audience)
    }
}

/// The flash-sale Lua scripts, read once from the module's resource folder (`Resources/*.lua`,
/// shipped as `fanflow_FlashSales.resources` beside the executable). Processes call ``check()``
/// at start, so a missing file stops them with its name instead of failing the first sale.
public enum FlashSaleScripts {
    public struct Missing: Error, CustomStringConvertible {
        public let description: String
    }

    static let names = ["load", "reserve", "hold", "lend", "drained", "credit"]

    static let loaded: Result<[String: RedisScript], Missing> = {
        guard let folder = Bundle.module.url(forResource: "Resources", withExtension: nil) else {
            return .failure(Missing(description: "the flash-sale scripts folder (Resources) is missing from fanflow_FlashSales.resources beside the executable"))
        }
        var scripts: [String: RedisScript] = [:]
        for name in names {
            guard let source = try? String(contentsOf: folder.appendingPathComponent("\(name).lua"), encoding: .utf8), !source.isEmpty else {
                return .failure(Missing(description: "the flash-sale script \(name).lua is missing or empty in \(folder.path)"))
            }
            scripts[name] = RedisScript(source)
        }
        return .success(scripts)
    }()

    /// Throws ``Missing`` naming the file when a script cannot be read.
    public static func check() throws(Missing) { _ = try loaded.get() }

    static func named(_ name: String) throws(Missing) -> RedisScript {
        guard let script = try loaded.get()[name] else { throw Missing(description: "no flash-sale script named \(name)") }
        return script
    }
}
