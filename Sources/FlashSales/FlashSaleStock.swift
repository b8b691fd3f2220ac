import Foundation
import RedisClient
import Synchronization

/// A campaign's live stock in Redis: every decision is one Lua call, all of its keys under one
/// hash tag (so the scripts run unchanged on Redis Cluster).
///
/// A stripe's hash holds `initial`, `remaining`, `reserved`, `paid` (units), the per-member
/// `limit`, the window (`start`, `end`, epoch ms) and the payment `timeout` (s). A member's units
/// (reserved or paid) are counted under `held:<member>`; a request id's answer under
/// `req:<member>:<requestId>`, so a retry gets the same reservation, not a second unit. A reservation
/// is `pending` until the gateway's publish of it was confirmed, then `ok`; a publish that failed
/// puts the unit back (`rollback`), and only a pending one can be rolled back. A unit comes back
/// to stock at most once per reservation (`settled:<reservation>` is set first).
///
/// Most campaigns have one stripe, tag `{fs:<id>}`. A very large one may spread its stock over K
/// stripes (`stockSlots`), tags `{fs:<id>#k}`, which Redis Cluster places on different shards: a
/// member's counters, answers and units all live on the stripe `member mod K`, so each decision is
/// still one call on one stripe. A stripe that runs dry borrows from the others (``borrow``).
public struct FlashSaleStock: Sendable {
    let redis: RedisPool
    /// How long a request id's answer is remembered.
    public var requestTTLMilliseconds: Int = 86_400_000
    /// How long "every stripe is empty" is believed before the stripes are asked again. Units that
    /// come back (an expiry, a rollback) clear it at once; this only bounds a race with them.
    static let drainedMilliseconds = 1000
    static let settledTTL = String(60 * 86_400_000)

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
    static let loadScript = RedisScript("""
        local exists = redis.call('EXISTS', KEYS[1])
        if exists == 1 then
          local initial = tonumber(redis.call('HGET', KEYS[1], 'initial'))
          local remaining = tonumber(redis.call('HGET', KEYS[1], 'remaining'))
          local delta = tonumber(ARGV[1]) - initial
          if ARGV[10] ~= '' then delta = tonumber(ARGV[10]) end
          if remaining + delta < 0 then return -1 end
          redis.call('HINCRBY', KEYS[1], 'initial', delta)
          redis.call('HINCRBY', KEYS[1], 'remaining', delta)
        else
          redis.call('HSET', KEYS[1], 'initial', ARGV[1], 'remaining', ARGV[7], 'reserved', ARGV[8], 'paid', ARGV[9])
        end
        redis.call('HSET', KEYS[1], 'limit', ARGV[2], 'start', ARGV[3], 'end', ARGV[4], 'timeout', ARGV[5], 'audience', ARGV[6])
        redis.call('PEXPIREAT', KEYS[1], tonumber(ARGV[4]) + 30 * 86400000)
        return 1
        """)

    /// KEYS: sale, held, request, rate, audience. ARGV: now (ms), quantity, reservation id, rate
    /// limit per window (0 = none), window (ms), request TTL (ms), member id.
    static let reserveScript = RedisScript("""
        local prior = redis.call('GET', KEYS[3])
        if prior then return prior end
        local perWindow = tonumber(ARGV[4])
        if perWindow > 0 then
          local n = redis.call('INCR', KEYS[4])
          if n == 1 then redis.call('PEXPIRE', KEYS[4], ARGV[5]) end
          if n > perWindow then return 'err:rate_limited' end
        end
        local s = redis.call('HMGET', KEYS[1], 'remaining', 'limit', 'start', 'end', 'timeout', 'audience')
        if not s[1] then return 'err:not_loaded' end
        local now = tonumber(ARGV[1])
        local q = tonumber(ARGV[2])
        if now < tonumber(s[3]) then return 'err:not_started' end
        if now >= tonumber(s[4]) then return 'err:ended' end
        if s[6] == '1' and redis.call('SISMEMBER', KEYS[5], ARGV[7]) == 0 then return 'err:not_eligible' end
        local held = tonumber(redis.call('GET', KEYS[2]) or '0')
        if held + q > tonumber(s[2]) then return 'err:limit_reached' end
        if tonumber(s[1]) < q then return 'err:sold_out' end
        redis.call('HINCRBY', KEYS[1], 'remaining', -q)
        redis.call('HINCRBY', KEYS[1], 'reserved', q)
        redis.call('INCRBY', KEYS[2], q)
        redis.call('PEXPIREAT', KEYS[2], tonumber(s[4]) + 30 * 86400000)
        local answer = 'pending:' .. ARGV[3] .. ':' .. string.format('%d', now + tonumber(s[5]) * 1000) .. ':' .. ARGV[2]
        redis.call('SET', KEYS[3], answer, 'PX', ARGV[6])
        return answer
        """)

    /// KEYS: request. ARGV: the pending answer. Marks it confirmed if it is still that one.
    static let confirmScript = RedisScript("""
        if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
        redis.call('SET', KEYS[1], 'ok' .. string.sub(ARGV[1], 8), 'KEEPTTL')
        return 1
        """)

    /// KEYS: sale, held, request. ARGV: the pending answer, quantity.
    static let rollbackScript = RedisScript("""
        if redis.call('GET', KEYS[3]) ~= ARGV[1] then return 0 end
        local q = tonumber(ARGV[2])
        redis.call('HINCRBY', KEYS[1], 'remaining', q)
        redis.call('HINCRBY', KEYS[1], 'reserved', -q)
        redis.call('DECRBY', KEYS[2], q)
        redis.call('DEL', KEYS[3])
        return 1
        """)

    /// KEYS: sale, held, settled marker. ARGV: quantity, marker TTL (ms). An expired reservation's
    /// units go back to stock and to the member's limit, once.
    static let releaseScript = RedisScript("""
        if not redis.call('SET', KEYS[3], 'expired', 'NX', 'PX', ARGV[2]) then return 0 end
        local q = tonumber(ARGV[1])
        redis.call('HINCRBY', KEYS[1], 'remaining', q)
        redis.call('HINCRBY', KEYS[1], 'reserved', -q)
        redis.call('DECRBY', KEYS[2], q)
        return 1
        """)

    /// KEYS: sale, settled marker. ARGV: quantity, marker TTL (ms). A paid reservation's units move
    /// from reserved to paid, once.
    static let payScript = RedisScript("""
        if not redis.call('SET', KEYS[2], 'paid', 'NX', 'PX', ARGV[2]) then return 0 end
        local q = tonumber(ARGV[1])
        redis.call('HINCRBY', KEYS[1], 'reserved', -q)
        redis.call('HINCRBY', KEYS[1], 'paid', q)
        return 1
        """)

    /// KEYS: a donor stripe. ARGV: units wanted. Gives up half of what it has left (at least what
    /// is wanted, at most what it has), so a dry stripe does not come back for every unit.
    static let lendScript = RedisScript("""
        local r = tonumber(redis.call('HGET', KEYS[1], 'remaining') or '0')
        if r <= 0 then return 0 end
        local n = math.max(tonumber(ARGV[1]), math.ceil(r / 2))
        if n > r then n = r end
        redis.call('HINCRBY', KEYS[1], 'remaining', -n)
        redis.call('HINCRBY', KEYS[1], 'initial', -n)
        return n
        """)

    /// KEYS: the drained mark. ARGV: "check", or "set" and its TTL (ms). Scripts, not plain
    /// commands, so these ride the coalesced pipelines with the reservations.
    static let drainedScript = RedisScript("""
        if ARGV[1] == 'set' then redis.call('SET', KEYS[1], '1', 'PX', ARGV[2]) return 1 end
        return redis.call('EXISTS', KEYS[1])
        """)

    /// KEYS: a stripe. ARGV: units lent to it. 0 when the stripe is gone (Redis lost it).
    static let creditScript = RedisScript("""
        if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
        redis.call('HINCRBY', KEYS[1], 'remaining', ARGV[1])
        redis.call('HINCRBY', KEYS[1], 'initial', ARGV[1])
        return 1
        """)

    /// Moves a paid reservation's units from reserved to paid, once however often it is called.
    @discardableResult
    public func markPaid(sale: String, slots: Int, member: Int64, reservationID: String, quantity: Int) async throws -> Bool {
        let stripe = Self.home(sale, slots: slots, member: member)
        return try await evaluate(Self.payScript, keys: [stripe.key("sale"), stripe.key("settled:\(reservationID)")],
                                  arguments: [String(quantity), Self.settledTTL]).int == 1
    }

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
        ]).int == 1
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
            stripe.key("rate:\(member)"), stripe.key("audience"),
        ], arguments: [
            String(Self.milliseconds(now)), String(quantity), reservationID, String(ratePerSecond), "1000",
            String(requestTTLMilliseconds), String(member),
        ])
        guard let text = reply.string else { throw RedisError(.protocolError, "unexpected reserve reply \(reply)") }
        if text.hasPrefix("err:") {
            guard let refusal = Refusal(rawValue: String(text.dropFirst(4))) else { throw RedisError(.protocolError, "unknown refusal \(text)") }
            return .refused(refusal)
        }
        let parts = text.split(separator: ":")
        guard parts.count == 4, let payBy = Int64(parts[2]), let units = Int(parts[3]) else {
            throw RedisError(.protocolError, "unreadable reservation \(text)")
        }
        let reservation = Reservation(id: String(parts[1]), payBy: Date(timeIntervalSince1970: Double(payBy) / 1000), quantity: units)
        let state: Answer.State = parts[0] == "ok" ? .confirmed : (reservation.id == reservationID ? .new : .inFlight)
        return .reserved(reservation, state: state)
    }

    /// Moves units from other stripes to a dry one, `quantity` at least where there is that much.
    /// Each move is two calls (a donor gives, then the dry stripe is credited), never one across
    /// stripes, which Redis Cluster would refuse: a gateway that dies between the two loses the
    /// units in transit from Redis (stock undersold, never oversold) until `reconcile --repair`.
    /// False when every stripe is empty.
    func borrow(into home: Stripe, sale: String, slots: Int, quantity: Int) async throws -> Bool {
        if drained.isDrained(sale) { return false }
        if try await evaluate(Self.drainedScript, keys: [Self.drainedKey(sale)], arguments: ["check"]).int == 1 {
            drained.remember(sale)
            return false
        }
        let stripes = Self.stripes(sale, slots: slots)
        var moved: Int64 = 0
        for step in 1..<stripes.count where moved < Int64(quantity) {
            let donor = stripes[(home.index + step) % stripes.count]
            let lent = try await evaluate(Self.lendScript, keys: [donor.key("sale")], arguments: [String(Int64(quantity) - moved)]).int ?? 0
            guard lent > 0 else { continue }
            if try await evaluate(Self.creditScript, keys: [home.key("sale")], arguments: [String(lent)]).int != 1 {
                _ = try await evaluate(Self.creditScript, keys: [donor.key("sale")], arguments: [String(lent)])
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

    static func pendingAnswer(_ reservation: Reservation) -> String {
        "pending:\(reservation.id):\(milliseconds(reservation.payBy)):\(reservation.quantity)"
    }

    /// After the broker confirmed the reservation's publish.
    public func confirm(sale: String, slots: Int, member: Int64, requestID: String, _ reservation: Reservation) async throws {
        let stripe = Self.home(sale, slots: slots, member: member)
        _ = try await evaluate(Self.confirmScript, keys: [stripe.key("req:\(member):\(requestID)")],
                               arguments: [Self.pendingAnswer(reservation)])
    }

    /// After the publish failed: the unit goes back, and the request id is free to try again.
    @discardableResult
    public func rollback(sale: String, slots: Int, member: Int64, requestID: String, _ reservation: Reservation) async throws -> Bool {
        let stripe = Self.home(sale, slots: slots, member: member)
        let done = try await evaluate(Self.rollbackScript, keys: [
            stripe.key("sale"), stripe.key("held:\(member)"), stripe.key("req:\(member):\(requestID)"),
        ], arguments: [Self.pendingAnswer(reservation), String(reservation.quantity)]).int == 1
        if done && slots > 1 { try await undrain(sale) }
        return done
    }

    /// Returns an expired reservation's units, once however often it is called.
    @discardableResult
    public func release(sale: String, slots: Int, member: Int64, reservationID: String, quantity: Int) async throws -> Bool {
        let stripe = Self.home(sale, slots: slots, member: member)
        let done = try await evaluate(Self.releaseScript, keys: [
            stripe.key("sale"), stripe.key("held:\(member)"), stripe.key("settled:\(reservationID)"),
        ], arguments: [String(quantity), Self.settledTTL]).int == 1
        if done && slots > 1 { try await undrain(sale) }
        return done
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
    /// member's held units (dropping units held for reservations that never became orders), and the
    /// settled marks of paid and expired reservations (so a redelivered expiry or a retried payment
    /// still changes nothing). Request ids' answers cannot be rebuilt: a member who retries an old
    /// request id after a Redis loss is held to the per-member limit instead.
    public func restore(_ sale: FlashSale, books: Inventory, orders: [FlashSaleStore.OrderState]) async throws {
        let end = Self.milliseconds(sale.endAt)
        let stripes = Self.stripes(sale.id, slots: sale.stockSlots)
        // Held units with no order behind them (a gateway died before publishing) go, and so do
        // those reservations' pending answers, which would otherwise say in_flight until they expire.
        var stale: [String] = []
        for stripe in stripes {
            stale += try await keys(matching: stripe.key("held:*"))
            let answers = try await keys(matching: stripe.key("req:*"))
            for chunk in stride(from: 0, to: answers.count, by: 1000) {
                let batch = Array(answers[chunk..<min(chunk + 1000, answers.count)])
                let values = try await redis.connection.pipeline(batch.map { ["GET", $0] })
                stale += zip(batch, values).filter { $0.1.string?.hasPrefix("pending:") == true }.map(\.0)
            }
        }
        var commands: [[String]] = stale.map { ["DEL", $0] }
        var counters = zip(stripes, Self.shares(books.remaining, over: stripes.count)).map { Inventory(initial: $1, remaining: $1, reserved: 0, paid: 0) }
        var held: [Int64: Int] = [:]
        for order in orders {
            let stripe = Self.home(sale.id, slots: sale.stockSlots, member: order.member)
            let units = Int64(order.quantity)
            switch order.status {
            case "reserved":
                held[order.member, default: 0] += order.quantity
                counters[stripe.index].reserved += units
                counters[stripe.index].initial += units
            case "paid":
                held[order.member, default: 0] += order.quantity
                counters[stripe.index].paid += units
                counters[stripe.index].initial += units
                commands.append(["SET", stripe.key("settled:\(order.reservationID)"), "paid", "PX", Self.settledTTL])
            default:
                commands.append(["SET", stripe.key("settled:\(order.reservationID)"), "expired", "PX", Self.settledTTL])
            }
        }
        for (stripe, count) in zip(stripes, counters) {
            commands += [
                ["DEL", stripe.key("sale")],
                ["HSET", stripe.key("sale"), "initial", String(count.initial), "remaining", String(count.remaining),
                 "reserved", String(count.reserved), "paid", String(count.paid), "limit", String(sale.perMemberLimit),
                 "start", String(Self.milliseconds(sale.startAt)), "end", String(end), "timeout", String(sale.paymentTimeoutSeconds),
                 "audience", sale.audienceTag == nil ? "0" : "1"],
                ["PEXPIREAT", stripe.key("sale"), String(end + 30 * 86_400_000)],
            ]
        }
        for (member, units) in held {
            commands.append(["SET", Self.home(sale.id, slots: sale.stockSlots, member: member).key("held:\(member)"), String(units),
                             "PXAT", String(end + 30 * 86_400_000)])
        }
        if stripes.count > 1 { commands.append(["DEL", Self.drainedKey(sale.id)]) }
        for chunk in stride(from: 0, to: commands.count, by: 1000) {
            for reply in try await redis.connection.pipeline(Array(commands[chunk..<min(chunk + 1000, commands.count)])) {
                if case .error(let message) = reply { throw RedisError(.server, message) }
            }
        }
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
