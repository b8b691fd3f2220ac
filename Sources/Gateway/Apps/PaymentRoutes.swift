import Apps
import Contracts
import FlashSales
import Foundation
import Hummingbird
import Platforms

/// `POST /v1/payments/notify/{wechatpay|alipay}`: payment notifications for flash-sale orders, in
/// the shapes WeChat Pay (API v3: signed headers, AES-GCM resource) and Alipay (RSA2-signed form)
/// send them. The edge checks what is the platform's (signatures, the AES-GCM resource, the
/// merchant, field shapes); what a verified payment does to its order is the flash-sale service's
/// (``FlashSaleService/pay(_:)``). An answer other than success makes the provider retry, which is
/// what a notification for an order the orders pool has not created yet, or a Redis outage after
/// the commit, needs: both steps are idempotent.
extension Gateway {
    func addPaymentRoutes(_ router: Router<GatewayRequestContext>) {
        router.addRoutes(paymentRoutes(flashSaleService()))
    }

    func paymentRoutes(_ service: FlashSaleService) -> RouteCollection<GatewayRequestContext> {
        let routes = RouteCollection(context: GatewayRequestContext.self)
        routes.post("/v1/payments/notify/:provider") { request, context in
            let body = try await request.collectBody(upTo: 64 * 1024)
            switch context.parameters.get("provider") ?? "" {
            case "wechatpay":
                return await wechatPayNotification(request, body: body, service: service)
            case "alipay":
                return await alipayNotification(body, context: context, service: service)
            default:
                throw GatewayError(.notFound, .unknownProvider, "providers are wechatpay and alipay")
            }
        }
        return routes
    }

    /// WeChat Pay wants 200 or 204 with no body for success, and a 4xx/5xx with `{"code","message"}` otherwise.
    static func wechatPayAnswer(_ status: HTTPResponse.Status, _ message: String? = nil) -> Response {
        guard let message else { return Response(status: .noContent) }
        return Response.json(["code": "FAIL", "message": message], status: status)
    }

    func wechatPayNotification(_ request: Request, body: [UInt8], service: FlashSaleService) async -> Response {
        let headers = request.headers
        guard let timestamp = headers[.wechatPayTimestamp], let nonce = headers[.wechatPayNonce],
              let signature = headers[.wechatPaySignature] else {
            return Self.wechatPayAnswer(.unauthorized, "Wechatpay-Timestamp, -Nonce and -Signature are required")
        }
        do throws(GatewayError) { try freshness.check(timestamp, now: Date().timeIntervalSince1970) } catch {
            return Self.wechatPayAnswer(.forbidden, error.message)
        }
        let merchants: [RegisteredApp]
        do { merchants = try await wechatPayMerchants() } catch {
            return Self.wechatPayAnswer(.serviceUnavailable, "the database did not answer")
        }
        guard let merchant = merchants.first(where: {
            $0.wechatPay?.verify(timestamp: timestamp, nonce: nonce, body: body, signatureBase64: signature) == true
        }), let crypto = merchant.wechatPay else {
            return Self.wechatPayAnswer(.unauthorized, "the signature matches no registered merchant's platform key")
        }
        guard case .object(let notification)? = try? JSONValue.parse(body) else {
            return Self.wechatPayAnswer(.badRequest, "body is not a JSON object")
        }
        guard notification["event_type"]?.string == "TRANSACTION.SUCCESS" else {
            logger.info("wechat pay notification acknowledged, not a payment", metadata: ["event": "\(notification["event_type"]?.string ?? "-")"])
            return Self.wechatPayAnswer(.ok)
        }
        guard case .object(let resource)? = notification["resource"], let ciphertext = resource["ciphertext"]?.string,
              let sealNonce = resource["nonce"]?.string else {
            return Self.wechatPayAnswer(.badRequest, "resource.ciphertext and resource.nonce are required")
        }
        let associated = resource["associated_data"]?.string ?? ""
        guard let plain = crypto.decrypt(ciphertextBase64: ciphertext, nonce: sealNonce, associatedData: associated),
              case .object(let transaction)? = try? JSONValue.parse(plain) else {
            return Self.wechatPayAnswer(.badRequest, "resource could not be opened with the merchant's API v3 key")
        }
        guard transaction["mchid"]?.string == merchant.appID else { return Self.wechatPayAnswer(.forbidden, "mchid is not this merchant") }
        guard transaction["trade_state"]?.string == "SUCCESS" else { return Self.wechatPayAnswer(.ok) }
        guard let reservation = transaction["out_trade_no"]?.string, case .object(let amount)? = transaction["amount"],
              let total = amount["total"]?.intStrict, let reference = transaction["transaction_id"]?.string else {
            return Self.wechatPayAnswer(.badRequest, "out_trade_no, transaction_id and amount.total are required")
        }
        guard InputLimits.identityProblem(reservation, maxBytes: 64) == nil, InputLimits.identityProblem(reference) == nil else {
            return Self.wechatPayAnswer(.badRequest, "out_trade_no and transaction_id must be visible ASCII")
        }
        guard (0...InputLimits.maximumFen).contains(total) else {
            return Self.wechatPayAnswer(.badRequest, "amount.total must be 0-\(InputLimits.maximumFen) fen")
        }
        let paidAt: Date
        switch Self.paymentTime(transaction["success_time"]?.string, RFC3339.parse) {
        case .success(let time): paidAt = time
        case .failure: return Self.wechatPayAnswer(.badRequest, "success_time must be an RFC 3339 time in 2000-01-01..2100-01-01")
        }
        switch await settlePayment(.init(reservationID: reservation, amount: total, paidAt: paidAt, reference: "wechatpay:\(reference)"),
                                   service: service) {
        case .settled: return Self.wechatPayAnswer(.ok)
        case .failed(let status, let message): return Self.wechatPayAnswer(status, message)
        }
    }

    /// Alipay wants the text `success`; anything else is retried.
    func alipayNotification(_ body: [UInt8], context: GatewayRequestContext, service: FlashSaleService) async -> Response {
        func answer(_ status: HTTPResponse.Status, _ text: String) -> Response { Response.text(text, status: status) }
        guard let parameters = FormBody.parse(body) else { return answer(.badRequest, "failure: not a form") }
        func text(_ name: String) -> String? { parameters.first { $0.name == name }.map { String(decoding: $0.value, as: UTF8.self) } }
        guard let appID = text("app_id"), let sign = text("sign"), text("sign_type") ?? "RSA2" == "RSA2" else {
            return answer(.badRequest, "failure: app_id, sign and sign_type RSA2 are required")
        }
        // The id's shape first (``AppIDShape``), then the lookup with the client, so unknown ids
        // count against its lookup limit like any other route's.
        guard AppIDShape.isValid(appID) else {
            return answer(.notFound, "failure: no alipay app has such an id (\(AppIDShape.rule))")
        }
        let app: RegisteredApp
        do { app = try await apps.gatewayApp(.alipay, appID, client: context.clientIP) } catch {
            guard error.status.code >= 500 else { return answer(error.status, "failure: \(error.message)") }
            // Alipay is outside: the operator's detail goes to the log under the request id only.
            context.logger.error("request failed", metadata: ["code": "\(error.code)", "message": "\(error.message)",
                                                              "detail": "\(error.detail ?? "-")", "path": "/v1/payments/notify/alipay"])
            return answer(error.status, "failure: \(error.code), request \(context.id)")
        }
        // Trade notifications are signed without sign_type (Alipay's rsaCheckV1 rule).
        let content = AlipayCrypto.signedContent(parameters.filter { $0.name != "sign_type" })
        guard let crypto = app.alipay, (try? crypto.verify(content: content, signatureBase64: sign, signType: "RSA2")) == true else {
            return answer(.forbidden, "failure: RSA2 signature does not match")
        }
        guard ["TRADE_SUCCESS", "TRADE_FINISHED"].contains(text("trade_status") ?? "") else { return answer(.ok, "success") }
        guard let reservation = text("out_trade_no"), let reference = text("trade_no"), let totalText = text("total_amount") else {
            return answer(.badRequest, "failure: out_trade_no, trade_no and total_amount are required")
        }
        guard InputLimits.identityProblem(reservation, maxBytes: 64) == nil, InputLimits.identityProblem(reference) == nil else {
            return answer(.badRequest, "failure: out_trade_no and trade_no must be visible ASCII")
        }
        guard let total = Self.fen(totalText) else {
            return answer(.badRequest, "failure: total_amount must be yuan with at most two decimals, at most \(InputLimits.maximumFen / 100)")
        }
        let paidAt: Date
        switch Self.paymentTime(text("gmt_payment"), Self.beijingTime) {
        case .success(let time): paidAt = time
        case .failure: return answer(.badRequest, "failure: gmt_payment must be yyyy-MM-dd HH:mm:ss in 2000..2100")
        }
        switch await settlePayment(.init(reservationID: reservation, amount: total, paidAt: paidAt, reference: "alipay:\(reference)"),
                                   service: service) {
        case .settled: return answer(.ok, "success")
        case .failed(let status, let message): return answer(status, "failure: \(message)")
        }
    }

    enum Settlement { case settled, failed(HTTPResponse.Status, String) }

    /// The service's outcome as the providers' answer: success for a payment recorded (or flagged
    /// for refund), a retryable failure otherwise.
    func settlePayment(_ notification: FlashSaleService.PaymentNotification, service: FlashSaleService) async -> Settlement {
        switch await service.pay(notification) {
        case .paid, .refundRequired: return .settled
        case .unknownOrder: return .failed(.notFound, "no order \(notification.reservationID) (yet)")
        case .amountMismatch(let expected): return .failed(.badRequest, "amount \(notification.amount) differs from the order's \(expected)")
        case .ordersUnavailable: return .failed(.serviceUnavailable, "the database did not answer")
        case .stockUnavailable: return .failed(.serviceUnavailable, "the stock could not be updated; retry")
        }
    }

    /// Registered WeChat Pay merchants (usually one): a notification names none in a way that can be
    /// trusted before its signature is checked, so each merchant's platform key is tried.
    /// The list is cached like single apps (``AppRegistry/all(_:)``): a notification costs no query.
    func wechatPayMerchants() async throws -> [RegisteredApp] {
        try await apps.all(.wechatpay)
    }

    /// "99.00" yuan → 9900 fen; nil for anything else, or for more than ``InputLimits/maximumFen``
    /// (`yuan * 100` on a 17-digit amount once trapped).
    static func fen(_ text: String) -> Int64? { InputLimits.fen(fromYuan: text) }

    struct ImplausibleTime: Error {}

    /// A provider's payment time: absent means now; present, it must read and lie in 2000..2100.
    static func paymentTime(_ text: String?, _ parse: (String) -> Date?) -> Result<Date, ImplausibleTime> {
        guard let text else { return .success(Date()) }
        guard let time = parse(text), InputLimits.isPlausible(time) else { return .failure(ImplausibleTime()) }
        return .success(time)
    }

    /// Alipay's `yyyy-MM-dd HH:mm:ss`, Beijing time.
    static func beijingTime(_ text: String) -> Date? {
        RFC3339.parse(text.replacingOccurrences(of: " ", with: "T") + "+08:00")
    }
}
