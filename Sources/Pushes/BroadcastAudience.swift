import Contracts

/// The members of a saved segment, as a segment broadcast reads them. Segments belong to the
/// Audiences domain, which Pushes does not import: whoever builds the push service (the gateway, the
/// push worker) hands in the segment store through this.
public protocol BroadcastAudience: Sendable {
    /// Whether a segment with this code exists now.
    func segmentExists(_ code: String) async throws -> Bool
    /// Up to `limit` member ids of the segment greater than `cursor`, in ascending order; nil when
    /// the segment is unknown (or was deleted since the broadcast was created).
    func members(segment code: String, after cursor: Int64, limit: Int) async throws -> [Int64]?
}

/// One official account (or service window) of a segment broadcast and the template sent there.
/// A broadcast lists 1-10 of them in the order the operator gave: a member receives the broadcast
/// once, through the first of them they can be reached on.
public struct BroadcastApp: Sendable, Hashable {
    public let app: String
    public let template: String

    public init(app: String, template: String) {
        self.app = app
        self.template = template
    }

    /// At most 10 apps a broadcast: the reachability query joins every member of a batch with every
    /// app (1,000 × 10 identity probes), and no brand runs more official accounts for one campaign.
    public static let limit = 1...10
}

/// Writes a JSON object with its members in the order given. ``JSONValue/object(_:)`` is a
/// dictionary and its writer sorts the keys; a segment broadcast's `templates` keep the operator's
/// order on the wire, since that order decides who receives which.
enum OrderedJSON {
    static func object(_ members: [(key: String, value: [UInt8])]) -> [UInt8] {
        var out: [UInt8] = [UInt8(ascii: "{")]
        for (index, member) in members.enumerated() {
            if index > 0 { out.append(UInt8(ascii: ",")) }
            out += JSONValue.string(member.key).jsonBytes
            out.append(UInt8(ascii: ":"))
            out += member.value
        }
        out.append(UInt8(ascii: "}"))
        return out
    }
}
