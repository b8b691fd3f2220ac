import Contracts
import Foundation

/// Pushes to many members at once (`POST /admin/v1/broadcasts`): every member with some tags, one
/// template on its app; or a saved segment's members over several apps (official accounts,
/// service windows), each member once, through the first app in the broadcast's order they can be
/// reached on (``PushStore/reachable(members:channels:)``).
///
/// A broadcast is fanned out in batches: a `push.broadcast` job takes the next `batchSize` members
/// (by id) after its cursor and, in one transaction, stores their rendered pushes, a `push.send`
/// job for each, the cursor, and the next batch's job. A member's push id is
/// `broadcast:<id>:<member>` whatever the app, so no member gets two of one broadcast, and a batch
/// job run twice finds the cursor moved and does nothing. The sends then go at each app's pace
/// (``PushDelivery``), however many workers run them.
public struct Broadcasts: Sendable {
    let store: PushStore
    let catalog: PushCatalog
    /// Where segment broadcasts find their members; nil where none was configured (segment
    /// broadcasts are then refused, and their batches wait).
    let audience: (any BroadcastAudience)?
    /// Members per batch (1,000 by default): one batch is one transaction of 1,000 pushes (two
    /// INSERTs of 500 rows) and 1,001 jobs (one INSERT), so a batch redone after a crash redoes
    /// little, and its rows stay far below PostgreSQL's 65,535 parameters per statement.
    let batchSize: Int

    /// For the gateway, which creates, shows and cancels broadcasts but fans none out.
    public init(store: PushStore, audience: (any BroadcastAudience)?, batchSize: Int = 1000) {
        self.init(store: store, catalog: PushCatalog(store: store), audience: audience, batchSize: batchSize)
    }

    init(store: PushStore, catalog: PushCatalog, audience: (any BroadcastAudience)?, batchSize: Int) {
        self.store = store
        self.catalog = catalog
        self.audience = audience
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

    public enum SegmentCreateOutcome: Sendable, Equatable {
        /// Stored, with its first batch's job due at its time.
        case created(PushStore.Broadcast)
        /// No ``BroadcastAudience`` is configured here: segments cannot be read.
        case segmentsUnavailable
        case unknownSegment
        /// An app's template does not exist.
        case unknownTemplate(BroadcastApp)
        /// An app's template belongs to another app (`templateApp`).
        case templateOfAnotherApp(BroadcastApp, templateApp: String)
        /// Not 1-10 apps, or an app listed twice.
        case invalidApps
    }

    /// A broadcast to the members of `segment`, each through the first of `apps` (in this order)
    /// they can be reached on, with that app's template; starting at `at`.
    public func create(segment: String, apps: [BroadcastApp], at: Date) async throws -> SegmentCreateOutcome {
        guard BroadcastApp.limit.contains(apps.count), Set(apps.map(\.app)).count == apps.count else { return .invalidApps }
        guard let audience else { return .segmentsUnavailable }
        guard try await audience.segmentExists(segment) else { return .unknownSegment }
        switch try await store.createBroadcast(segment: segment, apps: apps, at: at) {
        case .created(let broadcast): return .created(broadcast)
        case .unknownTemplate(let app): return .unknownTemplate(app)
        case .templateOfAnotherApp(let app, let owner): return .templateOfAnotherApp(app, templateApp: owner)
        }
    }

    /// The broadcast with its pushes counted by status and by app; nil when there is none.
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
        /// A segment broadcast's template now belongs to another app than the one it is listed under.
        case templateMoved(BroadcastApp, templateApp: String)
        /// The broadcast's segment was deleted since it was created.
        case segmentGone(String)
        /// No ``BroadcastAudience`` is configured in this worker: a segment broadcast's batch waits.
        case segmentsUnavailable
        /// The audience answered members not strictly ascending after the cursor: fanning out by
        /// them could move the cursor backwards and repeat batches forever.
        case audienceOutOfOrder
    }

    /// The batch of broadcast `id` after member `cursor`.
    public func fanOut(_ id: Int64, after cursor: Int64) async throws -> BatchOutcome {
        guard let broadcast = try await store.broadcast(id) else { return .unknownBroadcast }
        guard broadcast.cursor == cursor, BroadcastStatus.fanning.contains(broadcast.status) else { return .notDue }
        switch broadcast.target {
        case .tags(let tags, let template): return try await fanOut(id, after: cursor, tags: tags, template: template)
        case .segment(let segment, let apps): return try await fanOut(id, after: cursor, segment: segment, apps: apps)
        }
    }

    private func fanOut(_ id: Int64, after cursor: Int64, tags: [String], template code: String) async throws -> BatchOutcome {
        guard let template = try await catalog.template(code) else { return .templateGone(code) }
        let members = try await store.audience(tags: tags, platform: template.platform, app: template.app, after: cursor, limit: batchSize)
        let pushes = await Self.render(members.map { (recipient: $0, template: template) }, broadcast: id)
        let more = members.count == batchSize
        let last = members.last?.member ?? cursor
        guard try await store.fanOut(broadcast: id, from: cursor, to: last, pushes: pushes, more: more, at: Date()) else { return .notDue }
        return .fannedOut(pushes: pushes.count, more: more)
    }

    private func fanOut(_ id: Int64, after cursor: Int64, segment: String, apps: [BroadcastApp]) async throws -> BatchOutcome {
        guard let audience else { return .segmentsUnavailable }
        var templates: [PushTemplate] = []
        for app in apps {
            guard let template = try await catalog.template(app.template) else { return .templateGone(app.template) }
            guard template.app == app.app else { return .templateMoved(app, templateApp: template.app) }
            templates.append(template)
        }
        guard let members = try await audience.members(segment: segment, after: cursor, limit: batchSize) else { return .segmentGone(segment) }
        guard members.count <= batchSize, zip([cursor] + members, members).allSatisfy({ $0 < $1 }) else { return .audienceOutOfOrder }
        let reached = try await store.reachable(members: members, channels: templates.map { (platform: $0.platform, app: $0.app) })
        let pushes = await Self.render(reached.map { (recipient: $0.recipient, template: templates[$0.channel]) }, broadcast: id)
        // A full batch means there may be more; the cursor passes every member asked about, reached or not.
        let more = members.count == batchSize
        let last = members.last ?? cursor
        guard try await store.fanOut(broadcast: id, from: cursor, to: last, pushes: pushes, more: more, at: Date()) else { return .notDue }
        return .fannedOut(pushes: pushes.count, more: more)
    }

    /// Each recipient's push of broadcast `id`, rendered from their template.
    private static func render(_ recipients: [(recipient: PushStore.Recipient, template: PushTemplate)], broadcast id: Int64) async
        -> [PushStore.NewPush] {
        let now = Date()
        // One compiled template and one event per template (at most 10), not per member.
        var prepared: [String: (renderer: PushTemplate.Renderer, event: Envelope)] = [:]
        var pushes: [PushStore.NewPush] = []
        pushes.reserveCapacity(recipients.count)
        for (index, (member, template)) in recipients.enumerated() {
            // Rendering is CPU on the threads the worker's sends share: let them run between members.
            if index % 100 == 99 { await Task.yield() }
            let (renderer, fanned) = prepared[template.code] ?? (template.renderer(),
                Envelope(id: "fanflow:broadcast:\(id)", platform: .fanflow, app: template.app, kind: "broadcast", subject: .init(),
                         occurredAt: now, receivedAt: now, attributes: [:]))
            prepared[template.code] = (renderer, fanned)
            pushes.append(PushStore.NewPush(id: "broadcast:\(id):\(member.member ?? 0)", member: member.member, platform: template.platform,
                                            app: template.app, openid: member.openid, template: template.code, trigger: nil,
                                            message: renderer.render(member.templateValues(for: fanned))))
        }
        return pushes
    }
}
