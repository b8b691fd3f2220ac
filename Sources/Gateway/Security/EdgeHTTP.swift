import Apps
import Contracts
@preconcurrency import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NIOHTTPTypes
import Platforms
import PostgresClient
import RedisClient

extension HTTPField.Name {
    static let requestID = HTTPField.Name("X-Request-Id")!
    static let forwardedFor = HTTPField.Name("X-Forwarded-For")!
}

/// `Authorization: Bearer <token>` checked against a configured token without telling, by its
/// timing, how long the token is or how much of it matched: both sides are hashed to SHA-256
/// first and the fixed 32-byte digests compared in constant time.
struct BearerToken: Sendable {
    private let digest: [UInt8]

    init(_ token: String) { digest = Array(SHA256.hash(data: Array(token.utf8))) }

    func accepts(_ presented: some Sequence<UInt8>) -> Bool {
        Bytes.constantTimeEquals(Array(SHA256.hash(data: Array(presented))), digest)
    }

    /// The header's token, if it is a bearer one.
    static func presented(_ request: Request) -> Substring.UTF8View? {
        guard let header = request.headers[.authorization], header.hasPrefix("Bearer ") else { return nil }
        return header.dropFirst(7).utf8
    }
}

/// The gateway's outermost concerns, once per request: who the client is (through trusted
/// proxies), the request id on every response, and errors mapped so that no 5xx body carries a
/// server's internal text: the detail is logged under the request id, the body names the code
/// and the id (``GatewayError/response(from:context:)``).
struct EdgeMiddleware: RouterMiddleware {
    typealias Context = GatewayRequestContext
    let proxies: TrustedProxies

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var context = context
        if !proxies.networks.isEmpty {
            let peer = context.remoteAddress.flatMap { address -> IPAddress? in
                switch address {
                case .v4(let v4): IPAddress(v4.host)
                case .v6(let v6): IPAddress(v6.host)
                default: nil
                }
            }
            if let client = proxies.client(peer: peer, forwardedFor: request.headers[values: .forwardedFor]) {
                context.clientIP = client.description
            }
        }
        do {
            var response = try await next(request, context)
            response.headers[.requestID] = context.id
            return response
        } catch let error as GatewayError {
            if error.status.code >= 500 {
                context.logger.error("request failed", metadata: ["code": "\(error.code)", "message": "\(error.message)",
                                                                  "detail": "\(error.detail ?? "-")", "path": "\(request.uri.path)"])
            }
            throw error
        } catch let error as any HTTPResponseError {
            throw error
        } catch {
            let mapped = GatewayError.storage(error)
            // A client's fault (400) is no server error: not logged as one.
            guard mapped.status.code >= 500 else { throw mapped }
            context.logger.error("request failed", metadata: ["code": "\(mapped.code)", "detail": "\(mapped.detail ?? "-")",
                                                              "path": "\(request.uri.path)"])
            throw mapped
        }
    }
}

extension GatewayError {
    /// What a failed dependency call becomes: a code a client can act on, a message that names no
    /// internals, and the error itself as the detail that goes to the log only.
    static func storage(_ error: any Error) -> GatewayError {
        switch error {
        case let error as GatewayError:
            return error
        case let error as AppLookupError:
            return GatewayError(error)
        case is PostgresPoolBusy:
            return GatewayError(.serviceUnavailable, .databaseBusy, "the database is busy; retry shortly", detail: "\(error)")
        case let error as PostgresError where error.code == .invalidParameter:
            // A value the client sent holds a NUL (refused by the wrapper before anything reached
            // the server): the input is at fault, and a retry would fail the same way.
            return GatewayError(.badRequest, .malformedMessage, "a value holds a NUL byte, which cannot be stored", detail: "\(error)")
        case is PostgresError:
            return GatewayError(.serviceUnavailable, .databaseUnavailable, "the database did not answer; retry", detail: "\(error)")
        case is RedisError:
            return GatewayError(.serviceUnavailable, .redisUnavailable, "Redis did not answer; retry", detail: "\(error)")
        default:
            return GatewayError(.internalServerError, .internalError, "the request failed inside the gateway", detail: "\(error)")
        }
    }
}

/// CORS for the routes H5 pages call, and only for the configured origins (`FANFLOW_H5_ORIGINS`):
/// the allowed origin is echoed (never `*`), with `Vary: Origin`. Other routes (admin, webhooks,
/// server events) never answer CORS, so a page on another site cannot even read their refusals.
struct H5CORSMiddleware: RouterMiddleware {
    typealias Context = GatewayRequestContext
    let origins: Set<String>

    /// Beacons, the tracking code, and the member-token routes.
    static func isH5Route(_ path: Substring) -> Bool {
        switch path {
        case "/v1/collect", "/v1/collect.gif", "/v1/sdk.js", "/v1/codes/verify", "/v1/mall/redemptions": return true
        default:
            guard path.hasPrefix("/v1/flash-sales/"), path.hasSuffix("/reservations") else { return false }
            let id = path.dropFirst("/v1/flash-sales/".count).dropLast("/reservations".count)
            return !id.isEmpty && !id.contains("/")
        }
    }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let origin = request.headers[.origin], Self.isH5Route(Substring(request.uri.path)) else {
            return try await next(request, context)
        }
        let allowed = origins.contains(origin)
        if request.method == .options, request.headers[.accessControlRequestMethod] != nil {
            // A preflight: answered here, with the grant only for an allowed origin.
            var response = Response(status: .noContent)
            response.headers[.vary] = "Origin"
            if allowed {
                response.headers[.accessControlAllowOrigin] = origin
                response.headers[.accessControlAllowMethods] = "GET, POST, OPTIONS"
                response.headers[.accessControlAllowHeaders] = "authorization, content-type"
                response.headers[.accessControlMaxAge] = "600"
            }
            return response
        }
        guard allowed else { return try await next(request, context) }
        var response: Response
        do {
            response = try await next(request, context)
        } catch let error as any HTTPResponseError {
            // The page must be able to read a refusal too (rate_limited, bad_token…). Turned into a
            // response here, so the failure is logged here (EdgeMiddleware only sees a response).
            if let failure = error as? GatewayError, failure.status.code >= 500 {
                context.logger.error("request failed", metadata: ["code": "\(failure.code)", "message": "\(failure.message)",
                                                                  "detail": "\(failure.detail ?? "-")", "path": "\(request.uri.path)"])
            }
            response = try error.response(from: request, context: context)
            response.headers[.requestID] = context.id
        }
        response.headers[.accessControlAllowOrigin] = origin
        response.headers[.vary] = "Origin"
        return response
    }
}

/// Cuts a connection whose request is not read in full within `timeout` of its head: a client
/// that sends half a request, or dribbles its body a byte at a time, holds a connection and a body
/// buffer only that long. Hummingbird's idle timeout covers the rest (a connection that sends no
/// complete head, or nothing between requests), but it restarts on every body part, so it does
/// not bound a slow body on its own.
final class RequestReadTimeoutHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart

    private let timeout: TimeAmount
    private var deadline: Scheduled<Void>?

    init(timeout: TimeAmount) { self.timeout = timeout }

    func handlerRemoved(context: ChannelHandlerContext) { disarm() }

    func channelInactive(context: ChannelHandlerContext) {
        disarm()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head: arm(context)
        case .body: break
        case .end: disarm()
        }
        context.fireChannelRead(data)
    }

    private func arm(_ context: ChannelHandlerContext) {
        guard deadline == nil else { return }
        deadline = context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: timeout) { [self] in
            deadline = nil
            context.close(promise: nil)
        }
    }

    private func disarm() {
        deadline?.cancel()
        deadline = nil
    }
}

@available(*, unavailable)
extension RequestReadTimeoutHandler: Sendable {}
