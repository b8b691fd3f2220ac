import Contracts
import FlashSales
import Foundation
import Logging

/// The orders pool: a thin consumer of `fanflow.orders`. It decodes each event into the flash-sale
/// service's work (``FlashSaleService/OrdersWork``) and hands the batch over
/// (``FlashSaleService/handle(_:)``), which makes reservations orders, expires unpaid ones, loads
/// campaigns and reconciles Redis with the books.
///
/// `flashsale.reserved` (published by the gateway once Redis reserved the unit). The worker runs the
/// campaign's jobs itself (``FlashSaleService/jobHandlers``); `flashsale.expire`, `flashsale.load`
/// and `orders.reconcile` (`flashsale.reconcile` before) still arrive here only as messages an older
/// scheduler published before an upgrade, and are handled the same way. An event
/// that cannot be read, or a reservation of a campaign the books do not know, is refused
/// (``EventRefused``: dead-lettered, not retried).
public struct OrdersPool: EnvelopeProcessor {
    let service: FlashSaleService

    public init(store: FlashSaleStore, stock: FlashSaleStock, logger: Logger) {
        service = FlashSaleService(store: store, stock: stock, logger: logger)
    }

    public init(service: FlashSaleService) { self.service = service }

    public func process(_ events: [Envelope]) async throws {
        var work = FlashSaleService.OrdersWork()
        for event in events {
            switch event.kind {
            case FlashSaleStore.reservedKind:
                guard let reservation = FlashSaleStore.ReservationEvent(event) else { throw EventRefused("malformed reservation \(event.id)") }
                work.reservations.append((reservation, event.attributes["requestId"]?.string))
            case FlashSaleStore.expireKind:
                guard let id = event.attributes["reservationId"]?.string else { throw EventRefused("expiry without a reservationId \(event.id)") }
                work.expiring.append(id)
            case FlashSaleStore.loadKind:
                guard let sale = event.attributes["saleId"]?.string else { throw EventRefused("load without a saleId \(event.id)") }
                work.loading.insert(sale)
            case FlashSaleStore.reconcileKind, FlashSaleStore.legacyReconcileKind:
                // A bound below the default only for one campaign (an operator's or a test's call).
                let seconds = event.attributes["olderThanSeconds"]?.int ?? Int64(Reconciler.holdBound.components.seconds)
                guard (0...86_400).contains(seconds) else { throw EventRefused("olderThanSeconds must be 0-86400 in \(event.id)") }
                work.reconciling.append((event.attributes["saleId"]?.string, .seconds(seconds)))
            default:
                // Other flash-sale events (payments) belong to later pools; nothing to do here.
                continue
            }
        }
        guard !work.isEmpty else { return }
        do {
            try await service.handle(work)
        } catch let unknown as FlashSaleService.UnknownSale {
            throw EventRefused(unknown.description)
        }
    }
}
