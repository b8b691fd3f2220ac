import Foundation
import RedisClient

/// A campaign's live stock in Redis: every decision is one Lua call, all keys under the
/// campaign's hash tag `{fs:<id>}` (so the scripts run unchanged on Redis Cluster).
///
/// The campaign hash holds `initial`, `remaining`, `reserved`, `paid` (units), the per-member
/// `limit`, the window (`start`, `end`, epoch ms) and the payment `timeout` (s). A member's units
/// (reserved or paid) are counted under `held:<member>`; a request id's answer under
/// `req:<member>:<requestId>`, so a retry gets the same reservation, not a second unit. A reservation
/// is `pending` until the gateway's publish of it was confirmed, then `ok`; a publish that failed
/// puts the unit back (`rollback`), and only a pending one can be rolled back. A unit comes back
/// to stock at most once per reservation (`settled:<reservation>` is set first).
public struct FlashSaleStock: Sendable {
    let redis: RedisPool
    /// How long a request id's answer is remembered.
    public var requestTTLMilliseconds: Int = 86_400_000

    public init(redis: RedisPool) { self.redis = redis }

    static func key(_ sale: String, _ rest: String) -> String { "fanflow:{fs:\(sale)}:\(rest)" }

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

    static let loadScript = RedisScript("""
        local exists = redis.call('EXISTS', KEYS[1])
        if exists == 1 then
          local initial = tonumber(redis.call('HGET', KEYS[1], 'initial'))
          local remaining = tonumber(redis.call('HGET', KEYS[1], 'remaining'))
          local delta = tonumber(ARGV[1]) - initial
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

    /// Moves a paid reservation's units from reserved to paid, once however often it is called.
    @discardableResult
    public func markPaid(sale: String, reservationID: String, quantity: Int) async throws -> Bool {
        try await evaluate(Self.payScript, keys: [Self.key(sale, "sale"), Self.key(sale, "settled:\(reservationID)")],
                           arguments: [String(quantity), String(60 * 86_400_000)]).int == 1
    }

    /// Loads (or updates) a campaign. A new campaign's counters start from `books` (what
    /// PostgreSQL already holds for it, zero for a new one); an existing one keeps its counters and
    /// moves `initial` and `remaining` by the change in stock. Returns false when the new stock is
    /// below what is already reserved or paid.
    public func load(_ sale: FlashSale, books: Inventory, audience: [Int64]) async throws -> Bool {
        let start = Int64((sale.startAt.timeIntervalSince1970 * 1000).rounded())
        let end = Int64((sale.endAt.timeIntervalSince1970 * 1000).rounded())
        let audienceKey = Self.key(sale.id, "audience")
        if sale.audienceTag != nil {
            _ = try await redis.connection.command(["DEL", audienceKey])
            for chunk in stride(from: 0, to: audience.count, by: 5000) {
                _ = try await redis.connection.command(["SADD", audienceKey] + audience[chunk..<min(chunk + 5000, audience.count)].map(String.init))
            }
            _ = try await redis.connection.command(["PEXPIREAT", audienceKey, String(end + 30 * 86_400_000)])
        }
        let reply = try await evaluate(Self.loadScript, keys: [Self.key(sale.id, "sale")], arguments: [
            String(sale.stock), String(sale.perMemberLimit), String(start), String(end), String(sale.paymentTimeoutSeconds),
            sale.audienceTag == nil ? "0" : "1", String(books.remaining), String(books.reserved), String(books.paid),
        ])
        return reply.int == 1
    }

    /// One attempt: window, audience, per-member limit, stock, and the request id's earlier answer,
    /// in one call.
    public func reserve(sale: String, member: Int64, quantity: Int, requestID: String, now: Date = Date(),
                        ratePerSecond: Int) async throws -> Answer {
        // 32 characters of [0-9a-f]: what WeChat Pay's out_trade_no and Alipay's allow.
        let reservationID = UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
        let reply = try await evaluate(Self.reserveScript, keys: [
            Self.key(sale, "sale"), Self.key(sale, "held:\(member)"), Self.key(sale, "req:\(member):\(requestID)"),
            Self.key(sale, "rate:\(member)"), Self.key(sale, "audience"),
        ], arguments: [
            String(Int64((now.timeIntervalSince1970 * 1000).rounded())), String(quantity), reservationID, String(ratePerSecond), "1000",
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

    static func pendingAnswer(_ reservation: Reservation) -> String {
        "pending:\(reservation.id):\(Int64((reservation.payBy.timeIntervalSince1970 * 1000).rounded())):\(reservation.quantity)"
    }

    /// After the broker confirmed the reservation's publish.
    public func confirm(sale: String, member: Int64, requestID: String, _ reservation: Reservation) async throws {
        _ = try await evaluate(Self.confirmScript, keys: [Self.key(sale, "req:\(member):\(requestID)")],
                               arguments: [Self.pendingAnswer(reservation)])
    }

    /// After the publish failed: the unit goes back, and the request id is free to try again.
    @discardableResult
    public func rollback(sale: String, member: Int64, requestID: String, _ reservation: Reservation) async throws -> Bool {
        try await evaluate(Self.rollbackScript, keys: [
            Self.key(sale, "sale"), Self.key(sale, "held:\(member)"), Self.key(sale, "req:\(member):\(requestID)"),
        ], arguments: [Self.pendingAnswer(reservation), String(reservation.quantity)]).int == 1
    }

    /// Returns an expired reservation's units, once however often it is called.
    @discardableResult
    public func release(sale: String, member: Int64, reservationID: String, quantity: Int) async throws -> Bool {
        try await evaluate(Self.releaseScript, keys: [
            Self.key(sale, "sale"), Self.key(sale, "held:\(member)"), Self.key(sale, "settled:\(reservationID)"),
        ], arguments: [String(quantity), String(60 * 86_400_000)]).int == 1
    }

    /// The campaign's counters as Redis has them; nil when it is not loaded.
    public func inventory(sale: String) async throws -> Inventory? {
        let reply = try await redis.connection.command(["HMGET", Self.key(sale, "sale"), "initial", "remaining", "reserved", "paid"])
        guard let values = reply.array?.map({ $0.string.flatMap { Int64($0) } }), values.count == 4,
              let initial = values[0], let remaining = values[1], let reserved = values[2], let paid = values[3] else { return nil }
        return Inventory(initial: initial, remaining: remaining, reserved: reserved, paid: paid)
    }

    func evaluate(_ script: RedisScript, keys: [String], arguments: [String]) async throws -> RedisReply {
        let reply = try await redis.evalSHA([(script, keys, arguments)]).first ?? .null
        if case .error(let message) = reply { throw RedisError(.server, message) }
        return reply
    }
}

extension FlashSaleStock {
    /// Rewrites a campaign's Redis state from PostgreSQL's orders: the counters, each member's held
    /// units (dropping units held for reservations that never became orders), and the settled marks of paid and expired reservations (so a redelivered expiry or a
    /// retried payment still changes nothing). Request ids' answers cannot be rebuilt: a member who
    /// retries an old request id after a Redis loss is held to the per-member limit instead.
    public func restore(_ sale: FlashSale, books: Inventory, orders: [FlashSaleStore.OrderState]) async throws {
        let start = Int64((sale.startAt.timeIntervalSince1970 * 1000).rounded())
        let end = Int64((sale.endAt.timeIntervalSince1970 * 1000).rounded())
        // Held units with no order behind them (a gateway died before publishing) go, and so do
        // those reservations' pending answers, which would otherwise say in_flight until they expire.
        var stale = try await keys(matching: Self.key(sale.id, "held:*"))
        let answers = try await keys(matching: Self.key(sale.id, "req:*"))
        for chunk in stride(from: 0, to: answers.count, by: 1000) {
            let batch = Array(answers[chunk..<min(chunk + 1000, answers.count)])
            let values = try await redis.connection.pipeline(batch.map { ["GET", $0] })
            stale += zip(batch, values).filter { $0.1.string?.hasPrefix("pending:") == true }.map(\.0)
        }
        var commands: [[String]] = stale.map { ["DEL", $0] } + [
            ["DEL", Self.key(sale.id, "sale")],
            ["HSET", Self.key(sale.id, "sale"), "initial", String(books.initial), "remaining", String(books.remaining),
             "reserved", String(books.reserved), "paid", String(books.paid), "limit", String(sale.perMemberLimit), "start", String(start),
             "end", String(end), "timeout", String(sale.paymentTimeoutSeconds), "audience", sale.audienceTag == nil ? "0" : "1"],
            ["PEXPIREAT", Self.key(sale.id, "sale"), String(end + 30 * 86_400_000)],
        ]
        var held: [Int64: Int] = [:]
        for order in orders {
            switch order.status {
            case "reserved": held[order.member, default: 0] += order.quantity
            case "paid":
                held[order.member, default: 0] += order.quantity
                commands.append(["SET", Self.key(sale.id, "settled:\(order.reservationID)"), "paid", "PX", String(60 * 86_400_000)])
            default:
                commands.append(["SET", Self.key(sale.id, "settled:\(order.reservationID)"), "expired", "PX", String(60 * 86_400_000)])
            }
        }
        for (member, units) in held {
            commands.append(["SET", Self.key(sale.id, "held:\(member)"), String(units), "PXAT", String(end + 30 * 86_400_000)])
        }
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
