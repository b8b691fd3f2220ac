import Contracts
import Foundation

/// A flash-sale campaign as the admin API takes it (`PUT /admin/v1/flash-sales/{id}`); the JSON
/// field names are the public contract.
public struct FlashSale: Sendable, Equatable {
    public var id: String
    public var sku: String
    public var title: String
    /// In fen.
    public var price: Int64
    public var stock: Int
    public var perMemberLimit: Int
    public var startAt: Date
    public var endAt: Date
    public var paymentTimeoutSeconds: Int
    /// When set, only members carrying this tag may reserve.
    public var audienceTag: String?
    /// How many Redis keys (stripes) hold the stock; 1 for all but very large sales (see
    /// ``FlashSaleStock``). Fixed once the campaign exists.
    public var stockSlots: Int

    public init(id: String, sku: String, title: String, price: Int64, stock: Int, perMemberLimit: Int, startAt: Date, endAt: Date,
                paymentTimeoutSeconds: Int, audienceTag: String? = nil, stockSlots: Int = 1) {
        self.id = id
        self.sku = sku
        self.title = title
        self.price = price
        self.stock = stock
        self.perMemberLimit = perMemberLimit
        self.startAt = startAt
        self.endAt = endAt
        self.paymentTimeoutSeconds = paymentTimeoutSeconds
        self.audienceTag = audienceTag
        self.stockSlots = stockSlots
    }

    /// Why a campaign was refused; the message names the field.
    public struct Problem: Error, Sendable, Equatable, CustomStringConvertible {
        public let description: String
        init(_ description: String) { self.description = description }
    }

    static let fields: Set<String> = ["sku", "title", "price", "stock", "perMemberLimit", "startAt", "endAt",
                                      "paymentTimeoutSeconds", "audienceTag", "stockSlots", "id"]

    public static func isValidID(_ id: String) -> Bool {
        (1...64).contains(id.utf8.count) && id.utf8.allSatisfy {
            ($0 >= 97 && $0 <= 122) || ($0 >= 65 && $0 <= 90) || ($0 >= 48 && $0 <= 57) || $0 == 95 || $0 == 45 || $0 == 46
        }
    }

    /// Parses an admin request body for the campaign `id`. Unknown fields are refused.
    public static func parse(id: String, json: [UInt8]) throws(Problem) -> FlashSale {
        guard isValidID(id) else { throw Problem("id must be 1-64 characters of [A-Za-z0-9._-]") }
        guard case .object(let body)? = try? JSONValue.parse(json) else { throw Problem("body must be a JSON object") }
        if let unknown = body.keys.sorted().first(where: { !fields.contains($0) }) { throw Problem("unknown field \(unknown)") }
        if let given = body["id"], given != .string(id) { throw Problem("id in the body differs from the path") }
        func text(_ key: String, _ range: ClosedRange<Int>) throws(Problem) -> String {
            guard case .string(let value)? = body[key], range.contains(value.count) else {
                throw Problem("\(key) must be a string of \(range.lowerBound)-\(range.upperBound) characters")
            }
            return value
        }
        func integer(_ key: String, _ range: ClosedRange<Int64>) throws(Problem) -> Int64 {
            guard case .integer(let value)? = body[key], range.contains(value) else {
                throw Problem("\(key) must be an integer \(range.lowerBound)-\(range.upperBound)")
            }
            return value
        }
        func time(_ key: String) throws(Problem) -> Date {
            guard case .string(let value)? = body[key], let date = RFC3339.parse(value) else {
                throw Problem("\(key) must be an RFC 3339 time")
            }
            return date
        }
        var audience: String?
        switch body["audienceTag"] {
        case nil, .null?: audience = nil
        case .string(let tag)? where (1...64).contains(tag.count): audience = tag
        default: throw Problem("audienceTag must be a tag of 1-64 characters, or null")
        }
        let slots = body["stockSlots"] == nil ? 1 : Int(try integer("stockSlots", 1...64))
        let sale = FlashSale(id: id, sku: try text("sku", 1...64), title: try text("title", 1...200),
                             price: try integer("price", 0...100_000_000_00), stock: Int(try integer("stock", 0...10_000_000)),
                             perMemberLimit: Int(try integer("perMemberLimit", 1...1000)), startAt: try time("startAt"),
                             endAt: try time("endAt"), paymentTimeoutSeconds: Int(try integer("paymentTimeoutSeconds", 1...86_400)),
                             audienceTag: audience, stockSlots: slots)
        guard sale.endAt > sale.startAt else { throw Problem("endAt must be after startAt") }
        return sale
    }

    /// The campaign as the admin API answers it (without inventory).
    public var json: [String: JSONValue] {
        [
            "id": .string(id), "sku": .string(sku), "title": .string(title), "price": .integer(price), "stock": .integer(Int64(stock)),
            "perMemberLimit": .integer(Int64(perMemberLimit)), "startAt": .string(RFC3339.format(startAt)),
            "endAt": .string(RFC3339.format(endAt)), "paymentTimeoutSeconds": .integer(Int64(paymentTimeoutSeconds)),
            "audienceTag": audienceTag.map(JSONValue.string) ?? .null, "stockSlots": .integer(Int64(stockSlots)),
        ]
    }
}

/// Units of one campaign by state: `initial = remaining + reserved + paid` when the books agree.
public struct Inventory: Sendable, Equatable {
    public var initial: Int64
    public var remaining: Int64
    public var reserved: Int64
    public var paid: Int64

    public init(initial: Int64, remaining: Int64, reserved: Int64, paid: Int64) {
        self.initial = initial
        self.remaining = remaining
        self.reserved = reserved
        self.paid = paid
    }

    public var balances: Bool { initial == remaining + reserved + paid }

    public var json: JSONValue {
        .object(["initial": .integer(initial), "remaining": .integer(remaining), "reserved": .integer(reserved), "paid": .integer(paid)])
    }
}
