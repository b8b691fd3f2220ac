import PostgresClient

/// What binding a phone number did.
public enum PhoneBinding: Sendable, Equatable {
    /// The phone is now the member's.
    case bound(member: Int64)
    /// Another member already had the phone: the younger of the two was merged into the older.
    case merged(from: Int64, into: Int64)
    /// This event was applied before.
    case alreadyApplied
}

/// A domain that keeps rows by member and moves them when two members become one.
///
/// Members moves what identity owns (identities, the phone, tags, the merge record); each domain
/// moves its own rows and recomputes what it derives from them (Loyalty: the ledger, redemptions,
/// product codes, balances and the survivor's level), all in the merge's one transaction, so a
/// merge is never half done. A domain added later (bookings, relations) passes its participant too.
public protocol MemberMergeParticipant: Sendable {
    /// Moves what `absorbed` owns in this domain to `survivor`. Runs once per merge (the merge is
    /// keyed by `eventID`), after identities and tags moved and before the merge is recorded.
    func merge(_ absorbed: Int64, into survivor: Int64, cause eventID: String, on connection: isolated PostgresConnection) throws
}
