import Contracts
import Foundation
import Hummingbird
import Loyalty

/// What an H5 page does for a signed-in member, with `Authorization: Bearer <member token>`:
/// verify a product code (`POST /v1/codes/verify`) and redeem points (`POST /v1/mall/redemptions`).
extension Gateway {
    func addMemberActionRoutes(_ router: Router<GatewayRequestContext>) {
        let codes = ProductCodes(database: database)
        let mall = PointsMall(database: database)

        router.post("/v1/codes/verify") { request, context in
            let member = try authenticatedMember(request)
            // Limited per member and per client before the body is read or the database asked:
            // guessing codes is the attack a verification endpoint invites.
            guard codeLimits.allows(member: member, ip: context.clientIP) else {
                throw GatewayError(.tooManyRequests, .rateLimited, "too many code verifications; wait a minute")
            }
            let body = try await request.collectBody(upTo: 4 * 1024)
            guard case .object(let object)? = try? JSONValue.parse(body),
                  let code = object["code"]?.string else {
                throw GatewayError.badRequest(.malformedJson, #"body must be {"code":"…"}"#)
            }
            guard ProductCodes.isValid(code) else { throw GatewayError.badRequest(.invalidCode, "a code is 1-128 visible characters") }
            switch try await stored({ try await codes.verify(code, member: member) }) {
            case .success(let verified):
                return Response.json(verified)
            case .failure(.alreadyVerified(true, let at)):
                // The member's own code: telling them when tells nobody else anything.
                throw GatewayError(.conflict, .alreadyVerified, "you verified this code at \(at)")
            case .failure(.unknown), .failure(.alreadyVerified(false, _)):
                // One answer for a code that does not exist and one someone else verified, so the
                // answers cannot tell which printed codes are real.
                throw Self.unverifiableCode
            }
        }

        router.post("/v1/mall/redemptions") { request, _ in
            let member = try authenticatedMember(request)
            let body = try await request.collectBody(upTo: 4 * 1024)
            guard case .object(let object)? = try? JSONValue.parse(body) else {
                throw GatewayError.badRequest(.malformedJson, #"body must be {"giftId":…,"quantity":…,"requestId":…}"#)
            }
            guard let gift = object["giftId"]?.string, InputLimits.identityProblem(gift) == nil else {
                throw GatewayError.badRequest(.invalidGift, "giftId is required: 1-128 visible ASCII characters")
            }
            // Visible ASCII: a NUL in a text parameter was cut by libpq, so two ids could meet.
            guard let requestID = object["requestId"]?.string, requestID.utf8.count >= 8,
                  InputLimits.identityProblem(requestID, maxBytes: 64) == nil else {
                throw GatewayError.badRequest(.invalidRequestId, "requestId is required: 8-64 visible ASCII characters, a uuid is best")
            }
            let quantity = object["quantity"].map { $0.intStrict ?? 0 } ?? 1
            guard (1...100).contains(quantity) else { throw GatewayError.badRequest(.invalidQuantity, "quantity must be 1-100") }
            switch try await stored({ try await mall.redeem(member: member, giftID: gift, quantity: Int(quantity), requestID: requestID) }) {
            case .success(let redemption):
                return Response.json(redemption, status: redemption.balance == nil ? .ok : .created)
            case .failure(.unknownGift):
                throw GatewayError(.notFound, .unknownGift, "no gift \(gift)")
            case .failure(.outOfStock):
                throw GatewayError(.conflict, .outOfStock, "gift \(gift) has fewer than \(quantity) left")
            case .failure(.insufficientPoints):
                throw GatewayError(.conflict, .insufficientPoints, "the member's balance does not cover this redemption")
            }
        }
    }

    /// A code that is not the brand's, or that another member verified: the same 404 either way.
    static let unverifiableCode = GatewayError(.notFound, .unknownCode,
                                               "this code cannot be verified: it is not one of the brand's, or it was verified before")

    /// The member a bearer token names, or 401.
    func authenticatedMember(_ request: Request) throws(GatewayError) -> Int64 {
        guard let header = request.headers[.authorization], header.hasPrefix("Bearer ") else {
            throw GatewayError.unauthorized(.missingToken, "Authorization: Bearer <member token> is required")
        }
        do {
            return try memberTokens.verify(String(header.dropFirst(7)))
        } catch {
            switch error {
            case .expired: throw GatewayError.unauthorized(.tokenExpired, "the member token has expired; mint a new one")
            case .malformed, .badSignature: throw GatewayError.unauthorized(.badToken, "the member token is not valid")
            }
        }
    }
}
