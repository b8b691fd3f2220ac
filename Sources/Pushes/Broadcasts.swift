import Contracts
import Foundation

/// Pushes to every member with some tags (`POST /admin/v1/broadcasts`). A broadcast is fanned out
/// in batches: a `push.broadcast` job takes the next `batchSize` members (by id) carrying any of the
/// tags and an identity on the template's app, and in one transaction stores their rendered pushes,
/// a `push.send` job for each, the cursor, and the next batch's job. The sends then go at the
/// app's pace (``PushDelivery``), however many workers run them.
public struct Broadcasts: Sendable {
    let store: PushStore
    let catalog: PushCatalog
    /// Members per batch (1,000 by default): one batch is one transaction of 1,000 pushes (two
    /// INSERTs of 500 rows) and 1,001 jobs (one INSERT), so a batch redone after a crash redoes
    /// little, and its rows stay far below PostgreSQL's 65,535 parameters per statement.
    let batchSize: Int

    /// For the gateway, which creates, shows and cancels broadcasts but fans none out.
    public init(store: PushStore, batchSize: Int = 1000) {
        self.init(store: store, catalog: PushCatalog(store: store), batchSize: batchSize)
    }

    init(store: PushStore, catalog: PushCatalog, batchSize: Int) {
        self.store = store
        self.catalog = catalog
        self.batchSize = max(1, batchSize)
    }

    public enum CreateOutcome: Sendable, Equatable {
        /// Stored, with its first batch's job due at its time.
        case created(PushStore.Broadcast)
        case unknownTemplate
    }

    /// A broadcast of `template` to members with any of `tags`, starting at `at`.
    public func create(template: String, tags: [String], at: Date) async throws -> CreateOutcome {
        guard let broadcast = try await store.createBroadcast(template: template, tags: tags, at: at) else { return .unknownTemplate }
        return .created(broadcast)
    }

    /// The broadcast with its pushes counted by status; nil when there is none.
    public func broadcast(_ id: Int64) async throws -> PushStore.Broadcast? { try await store.broadcast(id) }

    public enum CancelOutcome: Sendable, Equatable {
        /// No more batches, and its pushes not sent yet are `cancelled`; the broadcast as it is now.
        case cancelled(PushStore.Broadcast)
        case alreadyCancelled
        case unknownBroadcast
    }

    public func cancel(_ id: Int64) async throws -> CancelOutcome {
        guard try await store.cancelBroadcast(id) else {
            return try await store.broadcast(id) == nil ? .unknownBroadcast : .alreadyCancelled
        }
        guard let broadcast = try await store.broadcast(id) else { return .unknownBroadcast }
        return .cancelled(broadcast)
    }

    public enum BatchOutcome: Sendable, Equatable {
        /// `pushes` members got their push and send job; `more` when a next batch is scheduled.
        case fannedOut(pushes: Int, more: Bool)
        /// The broadcast is past this batch (its cursor moved: a redelivered or repeated job), or
        /// cancelled, or finished: nothing done.
        case notDue
        case unknownBroadcast
        /// The broadcast's template was deleted since it was created.
        case templateGone(String)
    }

    /// The batch of broadcast `id` after member `cursor`.
    public func fanOut(_ id: Int64, after cursor: Int64) async throws -> BatchOutcome {
        guard let broadcast = try await store.broadcast(id) else { return .unknownBroadcast }
        guard broadcast.cursor == cursor, BroadcastStatus.fanning.contains(broadcast.status) else { return .notDue }
        guard let template = try await catalog.template(broadcast.template) else { return .templateGone(broadcast.template) }
        let members = try await store.audience(tags: broadcast.tags, platform: template.platform, app: template.app, after: cursor,
                                               limit: batchSize)
        let now = Date()
        let fanned = Envelope(id: "fanflow:broadcast:\(id)", platform: .fanflow, app: template.app, kind: "broadcast", subject: .init(),
                              occurredAt: now, receivedAt: now, attributes: [:])
        let renderer = template.renderer()
        var pushes: [PushStore.NewPush] = []
        pushes.reserveCapacity(members.count)
        for (index, member) in members.enumerated() {
            // Rendering is CPU on the threads the worker's sends share: let them run between members.
            if index % 100 == 99 { await Task.yield() }
            pushes.append(PushStore.NewPush(id: "broadcast:\(id):\(member.member ?? 0)", member: member.member, platform: template.platform,
                                            app: template.app, openid: member.openid, template: template.code, trigger: nil,
                                            message: renderer.render(member.templateValues(for: fanned))))
        }
        let more = members.count == batchSize
        guard try await store.fanOut(broadcast: id, from: cursor, pushes: pushes, more: more, at: now) else { return .notDue }
        return .fannedOut(pushes: pushes.count, more: more)
    }
}
