import AsyncHTTPClient
import NIOCore

/// One call to a platform's message API, as both clients make it: the answer's bytes when the
/// status is 200; each client reads them and names its own failures.
enum PlatformCall {
    enum Failure: Error {
        /// A status other than 200 (a gateway error in front of the API).
        case http(status: Int)
        /// No answer: connection refused or reset, timeout.
        case network(String)
    }

    static func bytes(_ request: HTTPClientRequest, http: HTTPClient, timeout: TimeAmount) async throws(Failure) -> [UInt8] {
        do {
            let response = try await http.execute(request, timeout: timeout)
            guard response.status.code == 200 else {
                _ = try? await response.body.collect(upTo: 64 * 1024)
                throw Failure.http(status: Int(response.status.code))
            }
            var buffer = try await response.body.collect(upTo: 1 << 20)
            return buffer.readBytes(length: buffer.readableBytes) ?? []
        } catch let failure as Failure {
            throw failure
        } catch {
            throw .network("\(error)")
        }
    }
}
