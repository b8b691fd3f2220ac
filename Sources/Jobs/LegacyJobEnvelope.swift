import Contracts
import Foundation

extension Job {
    /// The envelope an older scheduler published a job as, before worker pools ran their job kinds
    /// themselves: platform `fanflow`, kind = the job's kind (so `push.retry` was routed as
    /// `fanflow.push.retry`), id `fanflow:job:<id>` on every attempt, the payload as attributes
    /// (with `jobId` and `attempt`) and a payload `app` as its app. Pools still accept such messages
    /// left in their queues by an upgrade; tests build them with this.
    public func legacyEnvelope(receivedAt: Date = Date()) -> Envelope {
        var attributes = payload
        attributes["jobId"] = .integer(id)
        attributes["attempt"] = .integer(Int64(attempts))
        return Envelope(id: "fanflow:job:\(id)", platform: .fanflow, app: payload["app"]?.string ?? "", kind: EventKind(kind.rawValue),
                        subject: .init(), occurredAt: dueAt, receivedAt: receivedAt, attributes: attributes)
    }
}
