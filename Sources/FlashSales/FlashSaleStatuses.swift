/// An order's status in `flash_orders.status`; the raw values are the column's wire names (its
/// CHECK constraint, migrations 0006 and 0011), chosen once.
public enum OrderStatus: String, Sendable, Equatable, CaseIterable {
    /// Waiting for its payment until `pay_by`; its units are reserved.
    case reserved
    case paid
    /// Not paid by `pay_by`: its units went back to stock.
    case expired
    /// Paid after `pay_by`, after the expiry, or for a cancelled order: the money goes back.
    case refundRequired = "refund_required"
    /// Its hold was released before the order arrived (rolled back or reclaimed): it never held a unit.
    case cancelled

    /// Whether the order's units count against the stock (reserved or paid).
    public var holdsUnits: Bool { self == .reserved || self == .paid }

    /// The status as a quoted SQL literal, for statements that name a status.
    var sql: String { "'\(rawValue)'" }
}
