import Contracts
import FlashSales
import Foundation
import Hummingbird

/// Flash sales over HTTP: `PUT|GET /admin/v1/flash-sales/{id}` and `POST …/{id}/load` for
/// operators, and `POST /v1/flash-sales/{id}/reservations` for members (member token), answered
/// synchronously. Thin: each route decodes, calls ``FlashSaleService`` and maps its outcome to a
/// status and a machine-readable code. What a reservation is (one Lua call, the envelope made
/// durable by the broker before 201, the hold rolled back when it is not) is the service's.
extension Gateway {
    /// The flash-sale service of this gateway; reservations are recorded by the broker's confirms.
    func flashSaleService(journal: (any ReservationJournal)? = nil) -> FlashSaleService {
        FlashSaleService(store: FlashSaleStore(database: database), stock: FlashSaleStock(redis: redis), journal: journal,
                         ratePerMemberPerSecond: configuration.flashSaleRatePerMember, logger: logger)
    }

    func addFlashSaleAdminRoutes(_ admin: RouterGroup<GatewayRequestContext>) {
        admin.addRoutes(flashSaleAdminRoutes(flashSaleService()))
    }

    func addFlashSaleRoutes(_ router: Router<GatewayRequestContext>) {
        router.addRoutes(flashSaleRoutes(flashSaleService(journal: ConfirmedReservationJournal(broker: broker))))
    }

    /// Operators' routes, relative to `/admin/v1`.
    func flashSaleAdminRoutes(_ service: FlashSaleService) -> RouteCollection<GatewayRequestContext> {
        let routes = RouteCollection(context: GatewayRequestContext.self)
        routes.put("/flash-sales/:id") { request, context in
            let id = context.parameters.get("id") ?? ""
            let body = try await request.collectBody(upTo: 16 * 1024)
            let sale: FlashSale
            do { sale = try FlashSale.parse(id: id, json: body) } catch {
                throw GatewayError.badRequest(.invalidFlashSale, "\(error)")
            }
            let created: Bool
            switch try await stored({ try await service.save(sale) }) {
            case .saved(let new): created = new
            case .stockBelowHeld(let held):
                throw GatewayError(.conflict, .stockBelowHeld, "\(held) units are already reserved or paid; stock cannot be less")
            case .slotsFixed(let slots):
                throw GatewayError(.conflict, .stockSlotsFixed, "stockSlots is \(slots) and cannot change once the campaign exists")
            case .stockBelowLive: throw Self.stockBelowLive
            case .notLoaded(let why): throw Self.stockNotLoaded(why)
            }
            return Response.json(try await flashSaleView(sale, service), status: created ? .created : .ok)
        }
        routes.post("/flash-sales/:id/load") { _, context in
            let sale = try await knownSale(context, service)
            switch await service.load(sale) {
            case .loaded: return Response.json(try await flashSaleView(sale, service))
            case .stockBelowLive: throw Self.stockBelowLive
            case .notLoaded(let why): throw Self.stockNotLoaded(why)
            }
        }
        routes.get("/flash-sales/:id") { _, context in
            Response.json(try await flashSaleView(try await knownSale(context, service), service))
        }
        return routes
    }

    func knownSale(_ context: GatewayRequestContext, _ service: FlashSaleService) async throws(GatewayError) -> FlashSale {
        let id = context.parameters.get("id") ?? ""
        guard let sale = try await stored({ try await service.sale(id) }) else {
            throw GatewayError(.notFound, .unknownFlashSale, "no flash sale \(id)")
        }
        return sale
    }

    /// A campaign saved or loaded whose new stock is below what Redis holds as reserved or paid.
    static let stockBelowLive = GatewayError(.conflict, .stockBelowHeld, "Redis holds more reserved or paid units than the new stock")

    /// A campaign whose stock could not be loaded into Redis; `detail` goes to the log only.
    static func stockNotLoaded(_ detail: String) -> GatewayError {
        GatewayError.unavailable(.stockNotLoaded, "the stock could not be loaded into Redis; retry", detail: detail)
    }

    func flashSaleView(_ sale: FlashSale, _ service: FlashSaleService) async throws(GatewayError) -> [String: JSONValue] {
        let view = try await stored { try await service.view(sale) }
        var json = sale.json
        json["inventory"] = .object(["postgres": view.books?.json ?? .null, "redis": view.live?.json ?? .null])
        return json
    }

    /// Members' routes.
    func flashSaleRoutes(_ service: FlashSaleService) -> RouteCollection<GatewayRequestContext> {
        let routes = RouteCollection(context: GatewayRequestContext.self)
        routes.post("/v1/flash-sales/:id/reservations") { request, context in
            let member = try authenticatedMember(request)
            let saleID = context.parameters.get("id") ?? ""
            guard let sale = try await stored({ try await service.saleForReservation(saleID) }) else {
                throw GatewayError(.notFound, .unknownFlashSale, "no flash sale \(saleID)")
            }
            let body = try await request.collectBody(upTo: 4 * 1024)
            guard case .object(let object)? = try? JSONValue.parse(body) else {
                throw GatewayError.badRequest(.malformedJson, #"body must be {"quantity":1,"requestId":"<uuid>"}"#)
            }
            guard let requestID = object["requestId"]?.string, FlashSaleService.isValidRequestID(requestID) else {
                throw GatewayError.badRequest(.invalidRequestId, "requestId is required: 8-64 visible characters, a uuid is best")
            }
            let quantity = object["quantity"].map { $0.intStrict ?? 0 } ?? 1
            guard quantity >= 1, quantity <= sale.perMemberLimit else {
                throw GatewayError.badRequest(.invalidQuantity, "quantity must be 1-\(sale.perMemberLimit)")
            }
            if flashSaleIPLimits.take(site: "", ip: context.clientIP, cost: 1) != .allowed {
                throw GatewayError(.tooManyRequests, .rateLimited, "too many reservation attempts from this address; slow down")
            }
            switch await service.reserve(sale, member: member, quantity: Int(quantity), requestID: requestID) {
            case .reserved(let receipt), .replayed(let receipt):
                return Self.reservationResponse(receipt)
            case .inFlight:
                throw GatewayError.unavailable(.inFlight, "an earlier attempt with this requestId is still being confirmed; retry")
            case .soldOut: throw GatewayError(.conflict, .soldOut, "flash sale \(sale.id) is sold out")
            case .limitReached: throw GatewayError(.conflict, .limitReached, "at most \(sale.perMemberLimit) per member")
            case .notStarted: throw GatewayError(.forbidden, .notStarted, "flash sale \(sale.id) starts at \(RFC3339.format(sale.startAt))")
            case .ended: throw GatewayError(.forbidden, .ended, "flash sale \(sale.id) ended at \(RFC3339.format(sale.endAt))")
            case .notEligible: throw GatewayError(.forbidden, .notEligible, "this flash sale is for members tagged \(sale.audienceTag ?? "")")
            case .rateLimited: throw GatewayError(.tooManyRequests, .rateLimited, "too many reservation attempts; slow down")
            case .notLoaded: throw GatewayError.unavailable(.saleNotReady, "flash sale \(sale.id) is not loaded yet; retry")
            case .undecided(let detail):
                // The call may have run with its reply lost: a unit held that nobody knows of goes
                // back through the periodic reconcile (2 minutes), with the request id's answer.
                throw GatewayError.unavailable(.redisUnavailable, "the reservation could not be decided; retry in a moment", detail: detail)
            case .unrecorded:
                metrics.count(.brokerUnavailable)
                throw Self.unconfirmed
            case .reclaimed:
                throw Self.unconfirmed
            }
        }
        return routes
    }

    static let unconfirmed = GatewayError.unavailable(.publishUnconfirmed, "the reservation could not be recorded; nothing was reserved, retry")

    static func reservationResponse(_ receipt: FlashSaleService.Receipt) -> Response {
        Response.json(["reservationId": .string(receipt.reservationID), "saleId": .string(receipt.sale),
                       "quantity": .integer(Int64(receipt.quantity)), "amount": .integer(receipt.amount),
                       "payBy": .string(RFC3339.format(receipt.payBy))] as [String: JSONValue], status: .created)
    }
}
