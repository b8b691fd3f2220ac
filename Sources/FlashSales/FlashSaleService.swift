import Contracts
import Foundation
import Logging

/// Where a reservation's envelope is made durable before the member hears 201. The gateway gives
/// its confirmed publisher (RabbitMQ, `fanflow.events`); the orders pool turns the envelope into
/// the order. The domain knows nothing of the broker: only whether the record is durable.
public protocol ReservationJournal: Sendable {
    /// True once the envelope is durable (the broker confirmed it). False when that is not known:
    /// it may not have been taken, or its confirm was lost (the hold's compare-and-set then decides
    /// between the caller's rollback and the order that may still arrive).
    func record(_ envelope: Envelope) async -> Bool
}

/// The flash-sale domain's operations, each answering an explicit outcome: campaigns for operators,
/// reservations for members, payments for the providers' notifications, and the orders pool's
/// work (orders, expiries, loads, reconciles). Adapters decode, call, and map the outcome; the
/// rules (what is reserved, when a reservation stands, what a payment does to an order) live here.
public struct FlashSaleService: Sendable {
    public let store: FlashSaleStore
    public let stock: FlashSaleStock
    let catalog: FlashSaleCatalog
    let journal: (any ReservationJournal)?
    let ratePerMemberPerSecond: Int
    let logger: Logger

    /// `journal` records reservations (a gateway's); a process that takes no reservation (the
    /// orders pool) has none, and a reservation asked of it is rolled back as unrecorded.
    /// `ratePerMemberPerSecond`: reservation attempts a member may make per second (0: no limit).
    public init(store: FlashSaleStore, stock: FlashSaleStock, journal: (any ReservationJournal)? = nil, ratePerMemberPerSecond: Int = 0,
                logger: Logger) {
        self.store = store
        self.stock = stock
        self.catalog = FlashSaleCatalog(store: store)
        self.journal = journal
        self.ratePerMemberPerSecond = ratePerMemberPerSecond
        self.logger = logger
    }

    // MARK: - Campaigns (operators)

    /// What saving a campaign did. Database errors are thrown (the caller answers them as an outage).
    public enum SaveOutcome: Sendable, Equatable {
        /// Saved and loaded into Redis; `created` when the campaign is new.
        case saved(created: Bool)
        /// Refused: the orders already hold this many units.
        case stockBelowHeld(Int64)
        /// Refused: the stripe count is fixed once the campaign exists.
        case slotsFixed(Int)
        /// Saved, but Redis holds more reserved or paid units than the new stock.
        case stockBelowLive
        /// Saved, but its stock could not be loaded into Redis (the error's text, for the log).
        case notLoaded(String)
    }

    /// Creates or updates a campaign and loads it into Redis at once, so it is ready as soon as it
    /// is saved.
    public func save(_ sale: FlashSale) async throws -> SaveOutcome {
        let created: Bool
        switch try await store.put(sale) {
        case .stockBelowHeld(let held): return .stockBelowHeld(held)
        case .slotsFixed(let slots): return .slotsFixed(slots)
        case .created: created = true
        case .updated: created = false
        }
        switch await load(sale) {
        case .loaded: return .saved(created: created)
        case .stockBelowLive: return .stockBelowLive
        case .notLoaded(let why): return .notLoaded(why)
        }
    }

    public enum LoadOutcome: Sendable, Equatable {
        case loaded
        /// Redis holds more reserved or paid units than the campaign's stock.
        case stockBelowLive
        /// Redis (or the books it is loaded from) did not answer: the error's text.
        case notLoaded(String)
    }

    /// Loads a campaign's stock and audience into Redis now.
    public func load(_ sale: FlashSale) async -> LoadOutcome {
        do { return try await stock.load(sale, from: store) ? .loaded : .stockBelowLive } catch { return .notLoaded("\(error)") }
    }

    /// A campaign as the books have it (database errors thrown), nil when unknown.
    public func sale(_ id: String) async throws -> FlashSale? { try await store.get(id) }

    /// A campaign with its units as PostgreSQL's orders count them and as Redis holds them.
    public struct SaleView: Sendable, Equatable {
        public let sale: FlashSale
        /// Nil for a campaign unknown to the books.
        public let books: Inventory?
        /// Nil when Redis does not hold it, or did not answer: the view is for reading, not deciding.
        public let live: Inventory?
    }

    public func view(_ sale: FlashSale) async throws -> SaleView {
        let books = try await store.inventory(sale.id)
        let live = try? await stock.inventory(sale: sale.id, slots: sale.stockSlots)
        return SaleView(sale: sale, books: books, live: live)
    }

    // MARK: - Reservations (members)

    /// A campaign for the reservation path, from a short-lived cache (``FlashSaleCatalog``): at the
    /// opening second every attempt needs it and none should cost a database round trip.
    public func saleForReservation(_ id: String) async throws -> FlashSale? { try await catalog.sale(id) }

    /// A request id is 8-64 visible ASCII characters (a uuid is best): it keys the request's
    /// answer in Redis, so a retry gets the same reservation.
    public static func isValidRequestID(_ id: String) -> Bool {
        (8...64).contains(id.utf8.count) && id.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F }
    }

    /// What a member is told of a reservation that stands.
    public struct Receipt: Sendable, Equatable {
        public let reservationID: String
        public let sale: String
        public let quantity: Int
        /// In fen: the campaign's price times the quantity.
        public let amount: Int64
        public let payBy: Date
    }

    public enum ReservationOutcome: Sendable, Equatable {
        /// Reserved by this attempt, its envelope durable: the order is on its way.
        case reserved(Receipt)
        /// An earlier attempt with the same request id reserved it and was confirmed: the same answer.
        case replayed(Receipt)
        /// An earlier attempt with the same request id is still being recorded.
        case inFlight
        case soldOut
        case limitReached
        case notStarted
        case ended
        case notEligible
        /// Over the per-member attempts per second.
        case rateLimited
        /// Redis does not hold the campaign (yet).
        case notLoaded
        /// Redis did not answer: whether a unit was held is unknown (a held one goes back through
        /// the periodic reconcile after ``Reconciler/holdBound``). The error's text, for the log.
        case undecided(String)
        /// The journal did not confirm the envelope: the hold was rolled back (or is left to the
        /// reconcile when even that failed); nothing was reserved.
        case unrecorded
        /// The journal confirmed, but the periodic reconcile had already returned the hold (the
        /// attempt took longer than ``Reconciler/holdBound``): its order will be cancelled.
        case reclaimed
    }

    /// One attempt: window, audience, per-member limit, stock and the request id's earlier answer in
    /// one Lua call; then the envelope made durable by the journal; then the hold `confirmed`.
    /// Never a reservation without its order: when the journal does not confirm, the hold is rolled
    /// back before the member hears, unless the order arrived first (the broker took it after all),
    /// in which case the reservation stands.
    public func reserve(_ sale: FlashSale, member: Int64, quantity: Int, requestID: String, now: Date = Date()) async -> ReservationOutcome {
        let answer: FlashSaleStock.Answer
        do {
            answer = try await stock.reserve(sale: sale.id, slots: sale.stockSlots, member: member, quantity: quantity, requestID: requestID,
                                             now: now, ratePerSecond: ratePerMemberPerSecond)
        } catch {
            return .undecided("\(error)")
        }
        let reservation: FlashSaleStock.Reservation
        switch answer {
        case .refused(.soldOut): return .soldOut
        case .refused(.limitReached): return .limitReached
        case .refused(.notStarted): return .notStarted
        case .refused(.ended): return .ended
        case .refused(.notEligible): return .notEligible
        case .refused(.rateLimited): return .rateLimited
        case .refused(.notLoaded): return .notLoaded
        case .reserved(let earlier, .confirmed): return .replayed(Self.receipt(earlier, sale: sale))
        case .reserved(_, .inFlight): return .inFlight
        case .reserved(let new, .new): reservation = new
        }
        let receipt = Self.receipt(reservation, sale: sale)
        let event = FlashSaleStore.ReservationEvent(reservationID: reservation.id, sale: sale.id, member: member, quantity: reservation.quantity,
                                                    amount: receipt.amount, payBy: reservation.payBy)
        if let journal, await journal.record(event.envelope(requestID: requestID, now: now)) {
            do {
                let change = try await stock.confirm(sale: sale.id, slots: sale.stockSlots, member: member, requestID: requestID, reservation)
                if change.state == .released { return .reclaimed }
            } catch {
                // The order is on its way (durable), and the orders pool moves the hold on.
                logger.warning("a confirmed reservation could not be marked confirmed in Redis",
                               metadata: ["sale": "\(sale.id)", "reservation": "\(reservation.id)", "error": "\(error)"])
            }
            return .reserved(receipt)
        }
        do {
            let change = try await stock.rollback(sale: sale.id, slots: sale.stockSlots, member: member, requestID: requestID, reservation)
            if let state = change.state, state != .released, state != .held { return .reserved(receipt) }
        } catch {
            logger.error("a reservation whose publish failed could not be rolled back; the periodic reconcile returns it unless its order arrives",
                         metadata: ["sale": "\(sale.id)", "reservation": "\(reservation.id)", "error": "\(error)"])
        }
        return .unrecorded
    }

    static func receipt(_ reservation: FlashSaleStock.Reservation, sale: FlashSale) -> Receipt {
        // quantity ≤ perMemberLimit (1,000) and price ≤ 10^10 fen: the product stays far below Int64.max.
        Receipt(reservationID: reservation.id, sale: sale.id, quantity: reservation.quantity, amount: sale.price * Int64(reservation.quantity),
                payBy: reservation.payBy)
    }

    // MARK: - Payments (providers' notifications, verified at the edge)

    /// A payment notification whose signature the edge has checked.
    public struct PaymentNotification: Sendable, Equatable {
        /// The order's reservation id (`out_trade_no`).
        public let reservationID: String
        /// In fen.
        public let amount: Int64
        public let paidAt: Date
        /// The provider's transaction, prefixed by the provider (`wechatpay:…`, `alipay:…`).
        public let reference: String

        public init(reservationID: String, amount: Int64, paidAt: Date, reference: String) {
            self.reservationID = reservationID
            self.amount = amount
            self.paidAt = paidAt
            self.reference = reference
        }
    }

    public enum PaymentOutcome: Sendable, Equatable {
        /// Paid now, or already by an earlier notification (a provider's retry); units moved to paid.
        case paid
        /// Paid too late (after `pay_by`, the expiry, or for a cancelled order): flagged for a
        /// refund, units still reserved returned to stock.
        case refundRequired
        /// No such order, or not yet (the orders pool has not written it): the provider retries.
        case unknownOrder
        case amountMismatch(expected: Int64)
        /// The database did not answer: nothing changed, the provider retries.
        case ordersUnavailable
        /// The order's row changed, Redis did not follow: the provider's retry finishes it (both steps are idempotent).
        case stockUnavailable
    }

    /// The order's row decides a race with the expiry (``FlashSaleStore/pay``); Redis follows, once
    /// per reservation.
    public func pay(_ notification: PaymentNotification) async -> PaymentOutcome {
        let outcome: FlashSaleStore.PaymentOutcome
        do {
            outcome = try await store.pay(reservationID: notification.reservationID, amount: notification.amount, paidAt: notification.paidAt,
                                          reference: notification.reference)
        } catch {
            logger.warning("a payment could not be recorded", metadata: ["reservation": "\(notification.reservationID)", "error": "\(error)"])
            return .ordersUnavailable
        }
        do {
            switch outcome {
            case .paid(let order):
                try await stock.markPaid(sale: order.sale, slots: order.stockSlots, member: order.member, reservationID: order.reservationID,
                                         quantity: order.quantity)
                return .paid
            case .refundRequired(let order, let release):
                logger.warning("payment after the reservation's pay-by time: flagged for refund",
                               metadata: ["reservation": "\(order.reservationID)", "reference": "\(notification.reference)"])
                if release {
                    try await stock.release(sale: order.sale, slots: order.stockSlots, member: order.member, reservationID: order.reservationID,
                                            quantity: order.quantity)
                }
                return .refundRequired
            case .unknownOrder:
                return .unknownOrder
            case .amountMismatch(let expected):
                logger.error("payment amount differs from the order", metadata: ["reservation": "\(notification.reservationID)",
                                                                                 "paid": "\(notification.amount)", "expected": "\(expected)"])
                return .amountMismatch(expected: expected)
            }
        } catch {
            logger.warning("a payment's units could not be moved in Redis; the provider's retry does it",
                           metadata: ["reservation": "\(notification.reservationID)", "error": "\(error)"])
            return .stockUnavailable
        }
    }
}
