import Contracts
import Foundation
import Hummingbird
import Loyalty

/// `/admin/v1/product-codes` (bulk import of one-item-one-code codes) and `/admin/v1/gifts`
/// (the points mall's gifts and their stock).
extension Gateway {
    func addCatalogAdminRoutes(_ admin: RouterGroup<GatewayRequestContext>) {
        let codes = ProductCodes(database: database)
        let mall = PointsMall(database: database)

        admin.post("/product-codes") { request, _ in
            let body = try await request.collectBody(upTo: 16 * 1024 * 1024)
            let isCSV = request.headers[.contentType]?.lowercased().hasPrefix("text/csv") == true
            let parsed = try isCSV ? Self.codesFromCSV(body) : Self.codesFromJSON(body)
            guard parsed.count <= ProductCodes.maximumImport else {
                throw GatewayError(.contentTooLarge, .tooManyCodes, "at most \(ProductCodes.maximumImport) codes per request, got \(parsed.count)")
            }
            let imported = try await stored { try await codes.importCodes(parsed) }
            return Response.json(["received": parsed.count, "imported": imported, "alreadyImported": parsed.count - imported])
        }

        admin.put("/gifts/:id") { request, context in
            let id = try giftID(context)
            let body = try await request.collectBody(upTo: 16 * 1024)
            guard let given = try? JSONDecoder().decode(GiftBody.self, from: Data(body)) else {
                throw GatewayError.badRequest(.invalidGift, #"body must be {"name":…,"points":…,"stock":…}"#)
            }
            let gift = PointsMall.Gift(id: id, name: given.name, points: given.points, stock: given.stock)
            guard (1...200).contains(gift.name.count), gift.points > 0, gift.stock >= 0 else {
                throw GatewayError.badRequest(.invalidGift, "name must be 1-200 characters, points positive, stock not negative")
            }
            try await stored { try await mall.putGift(gift) }
            return Response.json(gift)
        }
        admin.get("/gifts/:id") { _, context in
            let id = try giftID(context)
            guard let gift = try await stored({ try await mall.gift(id) }) else {
                throw GatewayError(.notFound, .unknownGift, "no gift \(id)")
            }
            return Response.json(gift)
        }
    }

    private func giftID(_ context: GatewayRequestContext) throws(GatewayError) -> String {
        let id = context.parameters.get("id") ?? ""
        guard PointsRule.isValidCode(id) else { throw GatewayError.badRequest(.invalidGiftId, "a gift id is 1-64 characters of [a-z0-9._-]") }
        return id
    }

    /// `code,sku[,batch]` per line; a first line starting `code,` is a header.
    static func codesFromCSV(_ body: [UInt8]) throws(GatewayError) -> [ProductCodes.Code] {
        var codes: [ProductCodes.Code] = []
        for (index, line) in body.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: true).enumerated() {
            let text = String(decoding: line.last == UInt8(ascii: "\r") ? line.dropLast() : line[...], as: UTF8.self)
            if text.isEmpty { continue }
            let fields = text.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            if index == 0, fields.first?.lowercased() == "code" { continue }
            codes.append(try code(fields.first, fields.count > 1 ? fields[1] : nil, fields.count > 2 ? fields[2] : nil,
                                  where: "line \(index + 1)"))
        }
        return codes
    }

    /// `{"codes":[{"code","sku","batch"?}]}`.
    static func codesFromJSON(_ body: [UInt8]) throws(GatewayError) -> [ProductCodes.Code] {
        guard case .object(let object)? = try? JSONValue.parse(body),
              case .array(let items)? = object["codes"] else {
            throw GatewayError.badRequest(.malformedJson, #"body must be {"codes":[{"code":…,"sku":…}]} or text/csv"#)
        }
        return try items.enumerated().map { (index, item) throws(GatewayError) in
            guard case .object(let fields) = item else { throw GatewayError.badRequest(.invalidCode, "codes[\(index)] must be an object") }
            return try code(fields["code"]?.string, fields["sku"]?.string, fields["batch"]?.string, where: "codes[\(index)]")
        }
    }

    private static func code(_ code: String?, _ sku: String?, _ batch: String?, where place: String) throws(GatewayError) -> ProductCodes.Code {
        guard let code, ProductCodes.isValid(code), let sku, ProductCodes.isValid(sku) else {
            throw GatewayError.badRequest(.invalidCode, "\(place): code and sku are required, 1-128 visible characters without commas")
        }
        if let batch, !batch.isEmpty, !ProductCodes.isValid(batch) {
            throw GatewayError.badRequest(.invalidCode, "\(place): batch must be 1-128 visible characters")
        }
        return ProductCodes.Code(code: code, sku: sku, batch: batch?.isEmpty == false ? batch : nil)
    }
}

struct GiftBody: Decodable {
    let name: String
    let points: Int64
    let stock: Int64
}
