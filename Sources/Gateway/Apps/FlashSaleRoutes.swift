import AMQPClient
import Contracts
import FlashSales
import Foundation
import Hummingbird

/// Flash sales: `PUT|GET /admin/v1/flash-sales/{id}` for operators, and
/// `POST /v1/flash-sales/{id}/reservations` for members (member token), answered synchronously.
///
/// A reservation is one Lua call (window, audience, per-member limit, stock, request id), then a
/// confirmed publish of `fanflow.flashsale.reserved` for the orders pool, and only then 201. If the
/// publish is not confirmed the hold is rolled back in the same request (the broker may still have
/// taken it: the hold's one compare-and-set decides between this rollback and the order) and the
/// member gets 503, unless the order got there first, in which case the reservation stands (201).
extension Gateway {
    func addFlashSaleAdminRoutes(_ admin: RouterGroup<GatewayRequestContext>) {
        let store = FlashSaleStore(database: database)
        let stock = FlashSaleStock(redis: redis)

        admin.put("/flash-sales/:id") { request, context in
            let id = context.parameters.get("id") ?? ""
            let body = try await request.collectBody(upTo: 16 * 1024)
            let sale: FlashSale
            do { sale = try FlashSale.parse(id: id, json: body) } catch {
                throw GatewayError.badRequest(.invalidFlashSale, "\(error)")
            }
            let outcome = try await stored { try await store.put(sale) }
            switch outcome {
            case .stockBelowHeld(let held):
                throw GatewayError(.conflict, .stockBelowHeld, "\(held) units are already reserved or paid; stock cannot be less")
            case .slotsFixed(let slots):
                throw GatewayError(.conflict, .stockSlotsFixed, "stockSlots is \(slots) and cannot change once the campaign exists")
            case .created, .updated:
                break
            }
            try await loadStock(sale, store: store, stock: stock)
            return Response.json(try await flashSaleView(sale, store: store, stock: stock), status: outcome == .created ? .created : .ok)
        }
        admin.post("/flash-sales/:id/load") { _, context in
            let id = context.parameters.get("id") ?? ""
            guard let sale = try await stored({ try await store.get(id) }) else {
                throw GatewayError(.notFound, .unknownFlashSale, "no flash sale \(id)")
            }
            try await loadStock(sale, store: store, stock: stock)
            return Response.json(try await flashSaleView(sale, store: store, stock: stock))
        }
        admin.get("/flash-sales/:id") { _, context in
            let id = context.parameters.get("id") ?? ""
            guard let sale = try await stored({ try await store.get(id) }) else {
                throw GatewayError(.notFound, .unknownFlashSale, "no flash sale \(id)")
            }
            return Response.json(try await flashSaleView(sale, store: store, stock: stock))
        }
    }

    /// Loads the campaign's stock (and audience) into Redis now: on every PUT, so a campaign is
    /// ready as soon as it is saved.
    func loadStock(_ sale: FlashSale, store: FlashSaleStore, stock: FlashSaleStock) async throws(GatewayError) {
        let loaded: Bool
        do { loaded = try await stock.load(sale, from: store) } catch {
            throw GatewayError.unavailable(.stockNotLoaded, "the stock could not be loaded into Redis; retry", detail: "\(error)")
        }
        guard loaded else {
            throw GatewayError(.conflict, .stockBelowHeld, "Redis holds more reserved or paid units than the new stock")
        }
    }

    func flashSaleView(_ sale: FlashSale, store: FlashSaleStore, stock: FlashSaleStock) async throws(GatewayError) -> [String: JSONValue] {
        var view = sale.json
        let books = try await stored { try await store.inventory(sale.id) }
        let live = try? await stock.inventory(sale: sale.id, slots: sale.stockSlots)
        view["inventory"] = .object(["postgres": books?.json ?? .null, "redis": live?.json ?? .null])
        return view
    }

    func addFlashSaleRoutes(_ router: Router<GatewayRequestContext>) {
        let store = FlashSaleStore(database: database)
        let stock = FlashSaleStock(redis: redis)
        let catalog = FlashSaleCatalog(store: store)

        router.post("/v1/flash-sales/:id/reservations") { request, context in
            let member = try authenticatedMember(request)
            let saleID = context.parameters.get("id") ?? ""
            guard let sale = try await stored({ try await catalog.sale(saleID) }) else {
                throw GatewayError(.notFound, .unknownFlashSale, "no flash sale \(saleID)")
            }
            let body = try await request.collectBody(upTo: 4 * 1024)
            guard case .object(let object)? = try? JSONValue.parse(body) else {
                throw GatewayError.badRequest(.malformedJson, #"body must be {"quantity":1,"requestId":"<uuid>"}"#)
            }
            guard let requestID = object["requestId"]?.string, (8...64).contains(requestID.utf8.count),
                  requestID.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
                throw GatewayError.badRequest(.invalidRequestId, "requestId is required: 8-64 visible characters, a uuid is best")
            }
            let quantity = object["quantity"].map { $0.intStrict ?? 0 } ?? 1
            guard quantity >= 1, quantity <= sale.perMemberLimit else {
                throw GatewayError.badRequest(.invalidQuantity, "quantity must be 1-\(sale.perMemberLimit)")
            }
            if flashSaleIPLimits.take(site: "", ip: context.clientIP, cost: 1) != .allowed {
                throw GatewayError(.tooManyRequests, .rateLimited, "too many reservation attempts from this address; slow down")
            }
            let answer: FlashSaleStock.Answer
            do {
                answer = try await stock.reserve(sale: sale.id, slots: sale.stockSlots, member: member, quantity: Int(quantity), requestID: requestID,
                                                 ratePerSecond: configuration.flashSaleRatePerMember)
            } catch {
                // The call may have run with its reply lost: a unit held that nobody knows of goes
                // back through the periodic reconcile (2 minutes), with the request id's answer.
                throw GatewayError.unavailable(.redisUnavailable, "the reservation could not be decided; retry in a moment", detail: "\(error)")
            }
            switch answer {
            case .refused(let refusal):
                throw Self.refusal(refusal, sale: sale)
            case .reserved(let reservation, .confirmed):
                return Self.reservationResponse(reservation, sale: sale)
            case .reserved(_, .inFlight):
                throw GatewayError.unavailable(.inFlight, "an earlier attempt with this requestId is still being confirmed; retry")
            case .reserved(let reservation, .new):
                let event = FlashSaleStore.ReservationEvent(reservationID: reservation.id, sale: sale.id, member: member,
                                                            quantity: reservation.quantity, amount: sale.price * Int64(reservation.quantity),
                                                            payBy: reservation.payBy)
                if await publishConfirmed(event.envelope(requestID: requestID)) {
                    do {
                        let change = try await stock.confirm(sale: sale.id, slots: sale.stockSlots, member: member, requestID: requestID, reservation)
                        // Reclaimed first (this request took longer than the reconcile's 2 minutes): its order will be cancelled.
                        if change.state == .released { throw Self.unconfirmed }
                    } catch let error as GatewayError {
                        throw error
                    } catch {
                        // The order is on its way (confirmed), and the orders pool moves the hold on.
                        logger.warning("a confirmed reservation could not be marked confirmed in Redis",
                                       metadata: ["sale": "\(sale.id)", "reservation": "\(reservation.id)", "error": "\(error)"])
                    }
                    return Self.reservationResponse(reservation, sale: sale)
                }
                // Never a reservation without an order: the hold is rolled back before the member
                // hears, unless the order arrived first (the broker took the publish after all).
                do {
                    let change = try await stock.rollback(sale: sale.id, slots: sale.stockSlots, member: member, requestID: requestID, reservation)
                    if let state = change.state, state != .released, state != .held {
                        return Self.reservationResponse(reservation, sale: sale)
                    }
                } catch {
                    logger.error("a reservation whose publish failed could not be rolled back; the periodic reconcile returns it unless its order arrives",
                                 metadata: ["sale": "\(sale.id)", "reservation": "\(reservation.id)", "error": "\(error)"])
                }
                metrics.count(.brokerUnavailable)
                throw Self.unconfirmed
            }
        }
    }

    static let unconfirmed = GatewayError.unavailable(.publishUnconfirmed, "the reservation could not be recorded; nothing was reserved, retry")

    /// One envelope, persistent, confirmed by the broker.
    func publishConfirmed(_ envelope: Envelope) async -> Bool {
        guard let connection = try? await broker.current(), let body = try? envelope.encoded() else { return false }
        let outcome = await connection.publish(
            exchange: ExchangeName.events.rawValue, routingKey: envelope.routingKey, body: body,
            properties: AMQPProperties(messageID: envelope.id, contentType: "application/json", type: envelope.kind.rawValue,
                                       appID: "fanflow-gateway", persistent: true))
        return outcome == .acked
    }

    static func reservationResponse(_ reservation: FlashSaleStock.Reservation, sale: FlashSale) -> Response {
        Response.json(["reservationId": .string(reservation.id), "saleId": .string(sale.id), "quantity": .integer(Int64(reservation.quantity)),
                       "amount": .integer(sale.price * Int64(reservation.quantity)),
                       "payBy": .string(RFC3339.format(reservation.payBy))] as [String: JSONValue], status: .created)
    }

    static func refusal(_ refusal: FlashSaleStock.Refusal, sale: FlashSale) -> GatewayError {
        switch refusal {
        case .soldOut: return GatewayError(.conflict, .soldOut, "flash sale \(sale.id) is sold out")
        case .limitReached: return GatewayError(.conflict, .limitReached, "at most \(sale.perMemberLimit) per member")
        case .notStarted: return GatewayError(.forbidden, .notStarted, "flash sale \(sale.id) starts at \(RFC3339.format(sale.startAt))")
        case .ended: return GatewayError(.forbidden, .ended, "flash sale \(sale.id) ended at \(RFC3339.format(sale.endAt))")
        case .notEligible: return GatewayError(.forbidden, .notEligible, "this flash sale is for members tagged \(sale.audienceTag ?? "")")
        case .rateLimited: return GatewayError(.tooManyRequests, .rateLimited, "too many reservation attempts; slow down")
        case .notLoaded: return GatewayError.unavailable(.saleNotReady, "flash sale \(sale.id) is not loaded yet; retry")
        }
    }
}
