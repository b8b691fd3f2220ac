import Contracts
import Foundation
import Hummingbird

/// Every refusal the gateway makes: an HTTP status, a machine-readable code and a message, sent as
/// `{"error":{"code":…,"message":…}}`. Nothing is published when one is thrown.
public struct GatewayError: HTTPResponseError, Sendable, CustomStringConvertible {
    public let status: HTTPResponse.Status
    public let code: ErrorCode
    public let message: String
    /// What went wrong inside (a dependency's own error text): logged with the request id, never
    /// sent to the client.
    public let detail: String?
    /// Where in the request body the problem is (`match.all[2].tag`), sent as `path` beside the
    /// code, for definitions refused with 422.
    public let path: String?

    public init(_ status: HTTPResponse.Status, _ code: ErrorCode, _ message: String, detail: String? = nil, path: String? = nil) {
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.path = path
    }

    public var description: String { "\(status.code) \(code): \(message)" + (detail.map { " (\($0))" } ?? "") }

    /// `{"error":{"code","message"}}`, and for a 5xx also `requestId` in it (the same id as the
    /// `X-Request-Id` header every response carries), so a report can be matched with the log line.
    public func response(from request: Request, context: some RequestContext) throws -> Response {
        var error: [String: JSONValue] = ["code": .string(code.rawValue), "message": .string(message)]
        if status.code >= 500 { error["requestId"] = .string(context.id) }
        if let path { error["path"] = .string(path) }
        let bytes = JSONValue.object(["error": .object(error)]).jsonBytes
        var response = Response(status: status, headers: [.contentType: "application/json"],
                                body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
        response.headers[.requestID] = context.id
        if status == .serviceUnavailable { response.headers[.retryAfter] = "1" }
        return response
    }

    static func badRequest(_ code: ErrorCode, _ message: String) -> GatewayError { GatewayError(.badRequest, code, message) }
    static func unauthorized(_ code: ErrorCode, _ message: String) -> GatewayError { GatewayError(.unauthorized, code, message) }
    static func forbidden(_ code: ErrorCode, _ message: String) -> GatewayError { GatewayError(.forbidden, code, message) }
    static func unknownApp(_ platform: String, _ app: String) -> GatewayError {
        GatewayError(.notFound, .unknownApp, "no \(platform) app \(app) is registered")
    }
    static func unavailable(_ code: ErrorCode, _ message: String, detail: String? = nil) -> GatewayError {
        GatewayError(.serviceUnavailable, code, message, detail: detail)
    }
    static let staleTimestamp = GatewayError(.forbidden, .staleTimestamp, "timestamp is outside the freshness window")
}

extension Request {
    /// The body, refused with 413 past `limit` bytes (checked while reading, not after).
    func collectBody(upTo limit: Int) async throws(GatewayError) -> [UInt8] {
        if let length = headers[.contentLength].flatMap({ Int($0) }), length > limit {
            throw GatewayError(.contentTooLarge, .bodyTooLarge, "body is larger than \(limit) bytes")
        }
        do {
            var buffer = try await body.collect(upTo: limit)
            return try requireUTF8(buffer.readBytes(length: buffer.readableBytes) ?? [])
        } catch let error as GatewayError {
            throw error
        } catch {
            throw GatewayError(.contentTooLarge, .bodyTooLarge, "body is larger than \(limit) bytes")
        }
    }
}

/// Every body the gateway reads is text (XML, JSON, a percent-encoded form): bytes that are not
/// UTF-8 are refused with 400 `malformed_body` before anything reads them, so no lenient decoder
/// downstream turns them into U+FFFD, or a NUL, that a queue or an index then chokes on.
func requireUTF8(_ bytes: [UInt8]) throws(GatewayError) -> [UInt8] {
    guard String(validating: bytes, as: UTF8.self) != nil else {
        throw GatewayError.badRequest(.malformedBody, "the body is not valid UTF-8")
    }
    return bytes
}

extension Response {
    static func text(_ text: String, status: HTTPResponse.Status = .ok, contentType: String = "text/plain; charset=utf-8") -> Response {
        Response(status: status, headers: [.contentType: contentType], body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    static func json(_ value: [String: JSONValue], status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "application/json"],
                 body: .init(byteBuffer: ByteBuffer(bytes: JSONValue.object(value).jsonBytes)))
    }

    static func json(_ value: some Encodable, status: HTTPResponse.Status = .ok) -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let bytes = (try? encoder.encode(value)) ?? Data("{}".utf8)
        return Response(status: status, headers: [.contentType: "application/json"],
                        body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
    }
}
