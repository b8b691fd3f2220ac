import Contracts
import Foundation
import Jobs
import PostgresClient

/// Campaigns and their orders in PostgreSQL: the books Redis is reconciled against.
public struct FlashSaleStore: Sendable {
    let database: PostgresPool

    public init(database: PostgresPool) { self.database = database }

    /// The job that expires an unpaid reservation at its pay-by time; the scheduler publishes it
    /// to the orders pool (routing key `fanflow.flashsale.expire`).
    public static let expireJob = JobKind("flashsale.expire")
    /// The job that loads a campaign's stock and audience into Redis a minute before it opens
    /// (again: the admin API loads it when it is saved), so tags given since and a Redis that
    /// lost it are both covered by the opening second.
    public static let loadJob = JobKind("flashsale.load")
    /// The reminder before a reservation's pay-by time, for the push pool (a trigger on
    /// `fanflow.push.flashsale_reminder` sends it while the order is still unpaid). Routed to the
    /// push queue only, not the orders pool.
    public static let reminderJob = JobKind("push.flashsale_reminder")

    /// Five minutes before the pay-by time, or halfway there for a shorter payment window.
    public static func reminderDue(payBy: Date, now: Date) -> Date {
        payBy.addingTimeInterval(-min(300, max(0, payBy.timeIntervalSince(now)) / 2))
    }

    /// Every minute (periodic, published to the orders pool): a campaign Redis lost is rebuilt and
    /// holds whose reserve reply was lost go back (``Reconciler/sweep``). Routed as
    /// `fanflow.orders.reconcile`, which only the orders queue binds: as `flashsale.reconcile` it
    /// also reached the push queue (`fanflow.flashsale.#`, a trigger lookup a minute) and the
    /// behavior store (1,440 `events` rows a day, none of them a member's).
    public static let reconcileJob = JobKind("orders.reconcile")
    /// The kind the job had before: one still queued (in `jobs` or on the orders queue) at an
    /// upgrade is still run. Drop after one release.
    public static let legacyReconcileJob = JobKind("flashsale.reconcile")

    public static func periodic(timeZone: TimeZone) throws -> [PeriodicJob] {
        // The name keys its periods in `periodic_jobs`: kept as it was when the kind changed.
        [PeriodicJob(name: "flashsale.reconcile", schedule: try CronSchedule("* * * * *", timeZone: timeZone), kind: reconcileJob)]
    }

    public static let loadKind = EventKind("flashsale.load")
    public static let reconcileKind = EventKind("orders.reconcile")
    public static let legacyReconcileKind = EventKind("flashsale.reconcile")
    public static let reservedKind = EventKind("flashsale.reserved")
    public static let expireKind = EventKind("flashsale.expire")

    static let columns = """
        id, sku, title, price, stock, per_member_limit, extract(epoch FROM start_at)::float8 AS start_at,
        extract(epoch FROM end_at)::float8 AS end_at, payment_timeout_seconds, audience_tag, stock_slots
        """

    public enum PutOutcome: Sendable, Equatable { case created, updated, stockBelowHeld(Int64), slotsFixed(Int) }

    /// Creates or updates a campaign; refuses a stock below the units already reserved or paid.
    public func put(_ sale: FlashSale) async throws -> PutOutcome {
        try await database.transaction { connection in
            // An aggregate without GROUP BY answers one row, also for a campaign with no orders.
            guard let sums = try connection.query("""
                SELECT coalesce(sum(quantity), 0) AS held FROM flash_orders
                WHERE sale_id = $1 AND status IN (\(OrderStatus.reserved.sql), \(OrderStatus.paid.sql))
                """, [sale.id]).first else { throw PostgresRowError(column: "held", problem: .missingColumn) }
            let held = try sums.requiredInt64("held")
            guard Int64(sale.stock) >= held else { return .stockBelowHeld(held) }
            // Members' counters live on the stripe their id maps to: another count would strand them.
            if let existing = try connection.query("SELECT stock_slots FROM flash_sales WHERE id = $1", [sale.id]).first {
                let slots = try existing.requiredInt("stock_slots")
                if slots != sale.stockSlots { return .slotsFixed(slots) }
            }
            let rows = try connection.query("""
                INSERT INTO flash_sales (id, sku, title, price, stock, per_member_limit, start_at, end_at, payment_timeout_seconds, audience_tag,
                                         stock_slots)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                ON CONFLICT (id) DO UPDATE SET sku = excluded.sku, title = excluded.title, price = excluded.price,
                    stock = excluded.stock, per_member_limit = excluded.per_member_limit, start_at = excluded.start_at,
                    end_at = excluded.end_at, payment_timeout_seconds = excluded.payment_timeout_seconds,
                    audience_tag = excluded.audience_tag, updated_at = now()
                RETURNING (xmax = 0) AS inserted
                """, [sale.id, sale.sku, sale.title, sale.price, sale.stock, sale.perMemberLimit, sale.startAt, sale.endAt,
                      sale.paymentTimeoutSeconds, sale.audienceTag, sale.stockSlots])
            let due = max(Date(), sale.startAt.addingTimeInterval(-60))
            if sale.startAt > Date() {
                try JobStore.enqueue([NewJob(kind: Self.loadJob, payload: ["saleId": .string(sale.id)], dueAt: due,
                                             uniqueKey: "flashsale.load:\(sale.id):\(RFC3339.format(sale.startAt))", maxAttempts: 20)],
                                     on: connection)
            }
            guard let row = rows.first else { throw PostgresRowError(column: "inserted", problem: .missingColumn) }
            return try row.requiredBool("inserted") ? .created : .updated
        }
    }

    public func get(_ id: String) async throws -> FlashSale? {
        try await database.query("SELECT \(Self.columns) FROM flash_sales WHERE id = $1", [id]).first.map(Self.sale)
    }

    /// Units by state as the orders say: `remaining` is the stock less what is reserved or paid.
    public func inventory(_ id: String) async throws -> Inventory? {
        let rows = try await database.query("""
            SELECT s.stock,
                   coalesce(sum(o.quantity) FILTER (WHERE o.status = \(OrderStatus.reserved.sql)), 0) AS reserved,
                   coalesce(sum(o.quantity) FILTER (WHERE o.status = \(OrderStatus.paid.sql)), 0) AS paid
            FROM flash_sales s LEFT JOIN flash_orders o ON o.sale_id = s.id WHERE s.id = $1 GROUP BY s.stock
            """, [id])
        guard let row = rows.first else { return nil }
        let stock = try row.requiredInt64("stock"), reserved = try row.requiredInt64("reserved"), paid = try row.requiredInt64("paid")
        return Inventory(initial: stock, remaining: stock - reserved - paid, reserved: reserved, paid: paid)
    }

    /// Members carrying the campaign's audience tag.
    public func audience(tag: String) async throws -> [Int64] {
        try await database.query("SELECT DISTINCT member_id FROM member_tags WHERE tag = $1 AND (expires_at IS NULL OR expires_at > now())", [tag]).map { try $0.requiredInt64("member_id") }
    }

    /// A reservation as the gateway publishes it.
    public struct ReservationEvent: Sendable, Equatable {
        public let reservationID: String
        public let sale: String
        public let member: Int64
        public let quantity: Int
        public let amount: Int64
        public let payBy: Date

        public init(reservationID: String, sale: String, member: Int64, quantity: Int, amount: Int64, payBy: Date) {
            self.reservationID = reservationID
            self.sale = sale
            self.member = member
            self.quantity = quantity
            self.amount = amount
            self.payBy = payBy
        }

        public func envelope(requestID: String, now: Date = Date()) -> Envelope {
            Envelope(id: "fanflow:flashsale:reserved:\(reservationID)", platform: .fanflow, app: "", kind: FlashSaleStore.reservedKind,
                     subject: .init(), occurredAt: now, receivedAt: now, attributes: [
                        "reservationId": .string(reservationID), "saleId": .string(sale), "memberId": .integer(member),
                        "quantity": .integer(Int64(quantity)), "amount": .integer(amount), "payBy": .string(RFC3339.format(payBy)),
                        "requestId": .string(requestID),
                     ])
        }

        public init?(_ envelope: Envelope) {
            let a = envelope.attributes
            guard let id = a["reservationId"]?.string, let sale = a["saleId"]?.string, let member = a["memberId"]?.int,
                  let quantity = a["quantity"]?.int, quantity > 0, let amount = a["amount"]?.int,
                  let payBy = a["payBy"]?.string.flatMap(RFC3339.parse) else { return nil }
            self.init(reservationID: id, sale: sale, member: member, quantity: Int(quantity), amount: amount, payBy: payBy)
        }
    }

    /// Creates the orders of reservations not seen before, each with its expiry job and its
    /// payment reminder job, in one transaction; `cancelled` ones (their hold was released before
    /// the order arrived: rolled back by the gateway, or reclaimed) are recorded as `cancelled`,
    /// holding no unit, with no job that could return units. Returns how many were new.
    @discardableResult
    public func createOrders(_ reservations: [ReservationEvent], cancelled: [ReservationEvent] = []) async throws -> Int {
        guard !reservations.isEmpty || !cancelled.isEmpty else { return 0 }
        return try await database.transaction { connection in
            var rows: [String] = []
            var parameters: [any PostgresEncodable] = []
            for (index, (r, status)) in (reservations.map { ($0, OrderStatus.reserved) } + cancelled.map { ($0, OrderStatus.cancelled) }).enumerated() {
                let b = index * 7
                rows.append("($\(b + 1),$\(b + 2),$\(b + 3)::bigint,$\(b + 4)::int,$\(b + 5)::bigint,$\(b + 6),$\(b + 7)::timestamptz)")
                parameters += [r.reservationID, r.sale, r.member, r.quantity, r.amount, status.rawValue, r.payBy] as [any PostgresEncodable]
            }
            let inserted = try connection.query("""
                INSERT INTO flash_orders (reservation_id, sale_id, member_id, quantity, amount, status, pay_by)
                VALUES \(rows.joined(separator: ",")) ON CONFLICT (reservation_id) DO NOTHING RETURNING reservation_id
                """, parameters)
            let new = Set(try inserted.map { try $0.requiredString("reservation_id") })
            let now = Date()
            try JobStore.enqueue(reservations.filter { new.contains($0.reservationID) }.flatMap { r in
                [NewJob(kind: Self.expireJob, payload: ["saleId": .string(r.sale), "reservationId": .string(r.reservationID)],
                        dueAt: r.payBy, uniqueKey: "flashsale.expire:\(r.reservationID)", maxAttempts: 20),
                 NewJob(kind: Self.reminderJob, payload: r.envelope(requestID: "").attributes.filter { $0.key != "requestId" },
                        dueAt: Self.reminderDue(payBy: r.payBy, now: now), uniqueKey: "flashsale.reminder:\(r.reservationID)", maxAttempts: 20)]
            }, on: connection)
            return new.count
        }
    }

    /// The reservations among `ids` that have an order (of any status).
    public func existingOrders(_ ids: [String]) async throws -> Set<String> {
        guard !ids.isEmpty else { return [] }
        return Set(try await database.query("SELECT reservation_id FROM flash_orders WHERE reservation_id = ANY($1::text[])",
                                            [PostgresArray(ids)]).map { try $0.requiredString("reservation_id") })
    }

    /// Campaigns whose Redis state may still live: ended less than 29 days ago (Redis keeps a
    /// campaign's keys 30 days past its end), newest first.
    public func recent(limit: Int = 10_000) async throws -> [FlashSale] {
        try await database.query("""
            SELECT \(Self.columns) FROM flash_sales WHERE end_at > now() - interval '29 days' ORDER BY end_at DESC LIMIT $1
            """, [limit]).map(Self.sale)
    }

    /// An order whose units went back to stock.
    public struct Expired: Sendable, Equatable {
        public let reservationID: String
        public let sale: String
        public let member: Int64
        public let quantity: Int
        /// The campaign's stripe count, which says where the member's units live in Redis.
        public let stockSlots: Int
    }

    /// Expires the unpaid orders among `reservationIDs` (a paid one stays paid: the row's status
    /// decides between a racing payment and the expiry) and returns every one of them that is
    /// expired, including those an earlier attempt expired, so their units can be released.
    public func expire(_ reservationIDs: [String]) async throws -> [Expired] {
        guard !reservationIDs.isEmpty else { return [] }
        let ids = PostgresArray(reservationIDs)
        try await database.query("""
            UPDATE flash_orders SET status = \(OrderStatus.expired.sql), expired_at = now()
            WHERE reservation_id = ANY($1::text[]) AND status = \(OrderStatus.reserved.sql) AND pay_by <= now()
            """, [ids])
        return try await database.query("""
            SELECT o.reservation_id, o.sale_id, o.member_id, o.quantity, s.stock_slots
            FROM flash_orders o JOIN flash_sales s ON s.id = o.sale_id
            WHERE o.reservation_id = ANY($1::text[]) AND o.status = \(OrderStatus.expired.sql)
            """, [ids]).map { row in
            Expired(reservationID: try row.requiredString("reservation_id"), sale: try row.requiredString("sale_id"),
                    member: try row.requiredInt64("member_id"), quantity: try row.requiredInt("quantity"), stockSlots: try row.requiredInt("stock_slots"))
        }
    }

    /// What a payment notification did to its order.
    public enum PaymentOutcome: Sendable, Equatable {
        /// Paid now, or already paid by an earlier notification (a provider's retry).
        case paid(Order)
        /// Paid after its pay-by time: the order is flagged for a refund, and units still
        /// reserved go back to stock (`release`).
        case refundRequired(Order, release: Bool)
        case unknownOrder
        case amountMismatch(expected: Int64)
    }

    public struct Order: Sendable, Equatable {
        public let reservationID: String
        public let sale: String
        public let member: Int64
        public let quantity: Int
        public let amount: Int64
        public let stockSlots: Int
    }

    /// Records a payment, in one transaction with the order's row locked, so a payment and the
    /// expiry racing for one order cannot both win: paid in time and still reserved → `paid`;
    /// paid after `pay_by`, after the expiry already returned the units, or for a cancelled order
    /// → `refund_required`.
    public func pay(reservationID: String, amount: Int64, paidAt: Date, reference: String) async throws -> PaymentOutcome {
        try await database.transaction { connection in
            guard let row = try connection.query("""
                SELECT o.sale_id, o.member_id, o.quantity, o.amount, o.status, extract(epoch FROM o.pay_by)::float8 AS pay_by, s.stock_slots
                FROM flash_orders o JOIN flash_sales s ON s.id = o.sale_id WHERE o.reservation_id = $1 FOR UPDATE OF o
                """, [reservationID]).first else { return .unknownOrder }
            let order = Order(reservationID: reservationID, sale: try row.requiredString("sale_id"), member: try row.requiredInt64("member_id"),
                              quantity: try row.requiredInt("quantity"), amount: try row.requiredInt64("amount"),
                              stockSlots: try row.requiredInt("stock_slots"))
            let status = try Self.status(row)
            let payBy = try row.requiredDouble("pay_by")
            guard order.amount == amount else { return .amountMismatch(expected: order.amount) }
            switch status {
            case .paid:
                return .paid(order)
            case .refundRequired:
                return .refundRequired(order, release: false)
            case .reserved where paidAt.timeIntervalSince1970 <= payBy:
                try connection.query("""
                    UPDATE flash_orders SET status = \(OrderStatus.paid.sql), paid_at = $2, payment_ref = $3 WHERE reservation_id = $1
                    """, [reservationID, paidAt, reference])
                return .paid(order)
            case .reserved, .expired, .cancelled:
                // Late, expired, or cancelled (its hold was released before the order came): the
                // money goes back; only units still reserved return to stock.
                try connection.query("""
                    UPDATE flash_orders SET status = \(OrderStatus.refundRequired.sql), paid_at = $2, payment_ref = $3 WHERE reservation_id = $1
                    """, [reservationID, paidAt, reference])
                return .refundRequired(order, release: status == .reserved)
            }
        }
    }

    /// A row's `status`, read as ``OrderStatus``: a status this version does not know fails loudly.
    static func status(_ row: PostgresRow) throws -> OrderStatus {
        let text = try row.requiredString("status")
        guard let status = OrderStatus(rawValue: text) else { throw PostgresRowError(column: "status", problem: .malformed(text)) }
        return status
    }

    /// An order's state, for rebuilding Redis.
    public struct OrderState: Sendable, Equatable {
        public let reservationID: String
        public let member: Int64
        public let quantity: Int
        public let status: OrderStatus
    }

    public func orders(sale: String) async throws -> [OrderState] {
        try await database.query("SELECT reservation_id, member_id, quantity, status FROM flash_orders WHERE sale_id = $1", [sale])
            .map { row in
                OrderState(reservationID: try row.requiredString("reservation_id"), member: try row.requiredInt64("member_id"),
                           quantity: try row.requiredInt("quantity"), status: try Self.status(row))
            }
    }

    /// A campaign's row; `audience_tag` is the one column that may be NULL.
    static func sale(_ row: PostgresRow) throws -> FlashSale {
        func time(_ column: String) throws -> Date { Date(timeIntervalSince1970: try row.requiredDouble(column)) }
        return FlashSale(id: try row.requiredString("id"), sku: try row.requiredString("sku"), title: try row.requiredString("title"),
                         price: try row.requiredInt64("price"), stock: try row.requiredInt("stock"),
                         perMemberLimit: try row.requiredInt("per_member_limit"), startAt: try time("start_at"), endAt: try time("end_at"),
                         paymentTimeoutSeconds: try row.requiredInt("payment_timeout_seconds"), audienceTag: row.string("audience_tag"),
                         stockSlots: try row.requiredInt("stock_slots"))
    }
}

extension FlashSaleStore {
    /// Whether a reservation's order still waits for its payment (a reminder is only for those).
    public func awaitingPayment(_ reservationID: String) async throws -> Bool {
        try await !database.query("SELECT 1 FROM flash_orders WHERE reservation_id = $1 AND status = \(OrderStatus.reserved.sql) AND pay_by > now()",
                                  [reservationID]).isEmpty
    }
}
