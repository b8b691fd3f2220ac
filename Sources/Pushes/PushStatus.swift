/// What became of a push, as stored in `pushes.status` and shown by `GET /admin/v1/pushes`. The raw
/// values are the wire names, chosen once: the table's CHECK constraint, the admin API's `status`
/// filter and stored rows all spell them so; renaming a case never renames a status.
public enum PushStatus: String, Sendable, Hashable, CaseIterable {
    /// Stored, waiting for its first attempt or for a retry after a transient failure.
    case pending
    /// Claimed by a worker that is calling the platform. One that stays so: the worker died during
    /// the call; the push was sent at most once and may have arrived.
    case sending
    /// A broadcast's push that had not gone out when the broadcast was cancelled.
    case cancelled
    /// The platform took it (WeChat's `msgid` is kept for the receipt).
    case sent
    /// WeChat's receipt: it reached the member.
    case delivered
    /// The member blocks the account's messages (43101, or the receipt said so). Never retried.
    case userBlock = "user_block"
    /// WeChat's receipt: the platform failed to deliver it.
    case systemFailed = "system_failed"
    /// The member does not follow the account (WeChat 43004, Alipay's not-following sub-codes).
    case unsubscribed
    /// Refused for the message itself (bad openid, template, data, an unverified answer).
    case refused
    /// The daily quota is spent; its next attempt is due when the quota resets.
    case deferred
    /// Every attempt failed transiently; `last_error` says why. An outcome, not a dead letter.
    case dead

    /// Statuses a claim takes a push from: nothing has been sent for the attempt it waits for.
    public static let claimable: Set<PushStatus> = [.pending, .deferred]
    /// Statuses a platform receipt may replace: the push reached the platform.
    public static let receiptable: Set<PushStatus> = [.sent, .delivered, .userBlock, .systemFailed]

    /// The status a WeChat `TEMPLATESENDJOBFINISH` receipt reports: `success`, `failed:user
    /// block`, or anything else (`failed: system failed`) as a delivery failure.
    public init(receipt reported: String) {
        self = reported == "success" ? .delivered : reported.contains("user block") ? .userBlock : .systemFailed
    }
}

/// Where a broadcast is (`broadcasts.status`), with its wire names chosen once.
public enum BroadcastStatus: String, Sendable, Hashable, CaseIterable {
    /// Created; its first batch is due at its time.
    case scheduled
    /// Some batches done, the next one scheduled.
    case fanningOut = "fanning_out"
    /// Every member has their push; what remains is sending them.
    case fannedOut = "fanned_out"
    /// No more batches; pushes not sent yet were marked cancelled.
    case cancelled

    /// A batch runs only in these: a cancelled or finished broadcast fans out nothing more.
    public static let fanning: Set<BroadcastStatus> = [.scheduled, .fanningOut]
}
