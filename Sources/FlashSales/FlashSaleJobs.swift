import Foundation
import Jobs

extension FlashSaleService {
    /// The campaign's job kinds as the orders worker runs them, straight from the jobs table:
    /// `flashsale.expire` at a reservation's pay-by time, `flashsale.load` a minute before a campaign
    /// opens, and the per-minute `orders.reconcile` (`flashsale.reconcile` from before its rename).
    /// The same work the orders queue's events ask for (``handle(_:)``), without the scheduler
    /// publishing each job and the broker delivering it back.
    public var jobHandlers: [JobKind: any JobHandler] {
        let handler = OrdersJobHandler(service: self)
        return [FlashSaleStore.expireJob: handler, FlashSaleStore.loadJob: handler, FlashSaleStore.reconcileJob: handler,
                FlashSaleStore.legacyReconcileJob: handler]
    }
}

/// One batch of flash-sale jobs becomes one ``FlashSaleService/OrdersWork``: every expiry of the
/// batch is settled together, as a batch of the queue's events was. A job whose payload is not
/// what its enqueuer writes fails at once (kept for an operator), the others run; a failure of the
/// work itself (Redis or PostgreSQL unavailable) retries them with the store's backoff.
struct OrdersJobHandler: JobHandler {
    let service: FlashSaleService

    func run(_ jobs: [Job]) async -> [JobOutcome] {
        var work = FlashSaleService.OrdersWork()
        var outcomes = [JobOutcome](repeating: .done, count: jobs.count)
        for (index, job) in jobs.enumerated() {
            switch job.kind {
            case FlashSaleStore.expireJob:
                guard let id = job.payload["reservationId"]?.string else { outcomes[index] = .fail(error: "payload has no reservationId"); continue }
                work.expiring.append(id)
            case FlashSaleStore.loadJob:
                guard let sale = job.payload["saleId"]?.string else { outcomes[index] = .fail(error: "payload has no saleId"); continue }
                work.loading.insert(sale)
            case FlashSaleStore.reconcileJob, FlashSaleStore.legacyReconcileJob:
                // A bound below the default only for one campaign (an operator's or a test's job).
                let seconds = job.payload["olderThanSeconds"]?.int ?? Int64(Reconciler.holdBound.components.seconds)
                guard (0...86_400).contains(seconds) else { outcomes[index] = .fail(error: "olderThanSeconds must be 0-86400"); continue }
                work.reconciling.append((job.payload["saleId"]?.string, .seconds(seconds)))
            default:
                outcomes[index] = .fail(error: "\(job.kind) is not a flash-sale job")
            }
        }
        guard !work.isEmpty else { return outcomes }
        do {
            try await service.handle(work)
            return outcomes
        } catch {
            return outcomes.map { $0 == .done ? .retry(error: "\(error)") : $0 }
        }
    }
}
