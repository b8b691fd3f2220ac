import Contracts
import Foundation
import Hummingbird
import Jobs

/// `/admin/v1/jobs` (what the scheduler holds: status, kind, due, attempts, last error; retry and
/// cancel) and `/admin/v1/calendar` (public holidays and make-up workdays for working-day counts).
extension Gateway {
    func addSchedulerAdminRoutes(_ admin: RouterGroup<GatewayRequestContext>) {
        let jobs = JobStore(database: database)
        let calendar = BusinessCalendarStore(database: database)

        admin.get("/jobs") { request, _ in
            let query = request.uri.queryParameters
            var status: JobStatus?
            if let text = query["status"].map(String.init) {
                guard let parsed = JobStatus(rawValue: text) else {
                    throw GatewayError.badRequest(.invalidStatus, "status must be one of \(JobStatus.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                status = parsed
            }
            let limit = try Self.integerParameter(query["limit"].map(String.init), name: "limit", code: .invalidLimit, range: 1...500) ?? 50
            let before = try Self.integerParameter(query["before"].map(String.init), name: "before", code: .invalidBefore, range: 1...Int.max)
            let kind = query["kind"].map(String.init).flatMap { $0.isEmpty ? nil : $0 }
            let page = try await stored { try await jobs.list(status: status, kind: kind, limit: limit, before: before.map(Int64.init)) }
            var body: [String: JSONValue] = ["jobs": .array(page.map { .object($0.json) })]
            body["nextBefore"] = page.count == limit ? page.last.map { .integer($0.id) } ?? .null : .null
            return Response.json(body)
        }
        admin.get("/jobs/:id") { _, context in
            let id = try Self.jobID(context)
            guard let job = try await stored({ try await jobs.job(id: id) }) else { throw Self.unknownJob(id) }
            return Response.json(job.json)
        }
        let actions: [(name: String, act: @Sendable (Int64) async throws -> Bool, refusal: GatewayError)] = [
            ("retry", { try await jobs.retry(id: $0) },
             GatewayError(.conflict, .notRetryable, "only a failed or cancelled job can be retried")),
            ("cancel", { try await jobs.cancel(id: $0) },
             GatewayError(.conflict, .notCancellable, "only a scheduled or failed job can be cancelled")),
        ]
        for action in actions {
            admin.post("/jobs/:id/\(action.name)") { _, context in
                let id = try Self.jobID(context)
                let acted = try await stored { try await action.act(id) }
                guard let job = try await stored({ try await jobs.job(id: id) }) else { throw Self.unknownJob(id) }
                guard acted else { throw action.refusal }
                return Response.json(job.json)
            }
        }

        admin.get("/calendar") { request, _ in
            let query = request.uri.queryParameters
            let from = try Self.dayParameter(query["from"].map(String.init), name: "from")
            let to = try Self.dayParameter(query["to"].map(String.init), name: "to")
            let days = try await stored { try await calendar.list(from: from, to: to) }
            return Response.json(["days": days.map { ["day": $0.day, "kind": $0.kind.rawValue, "name": $0.name] }])
        }
        admin.put("/calendar/:day") { request, context in
            let day = try Self.day(context)
            let body = try await request.collectBody(upTo: 4096)
            guard case .object(let object)? = try? JSONValue.parse(body) else {
                throw GatewayError.badRequest(.invalidDay, "body must be a JSON object {\"kind\":\"holiday\"|\"workday\",\"name\":…}")
            }
            if let unknown = object.keys.sorted().first(where: { !["kind", "name"].contains($0) }) {
                throw GatewayError.badRequest(.invalidDay, "unknown field \(unknown)")
            }
            guard let kind = object["kind"]?.string.flatMap(BusinessCalendar.Kind.init) else {
                throw GatewayError.badRequest(.invalidDay, "kind must be holiday or workday")
            }
            let name = object["name"]?.string ?? ""
            guard name.count <= 100 else { throw GatewayError.badRequest(.invalidDay, "name must be at most 100 characters") }
            try await stored { try await calendar.put(.init(day: day, kind: kind, name: name)) }
            return Response.json(["day": day, "kind": kind.rawValue, "name": name])
        }
        admin.delete("/calendar/:day") { _, context in
            let day = try Self.day(context)
            guard try await stored({ try await calendar.delete(day) }) else {
                throw GatewayError(.notFound, .unknownDay, "\(day) is not declared")
            }
            return Response(status: .noContent)
        }
    }

    static func unknownJob(_ id: Int64) -> GatewayError { GatewayError(.notFound, .unknownJob, "no job \(id)") }

    static func jobID(_ context: GatewayRequestContext) throws -> Int64 {
        guard let text = context.parameters.get("id"), let id = Int64(text), id > 0 else {
            throw GatewayError.badRequest(.invalidJobId, "a job id is a positive integer")
        }
        return id
    }

    static func day(_ context: GatewayRequestContext) throws -> String {
        guard let day = try dayParameter(context.parameters.get("day"), name: "day") else {
            throw GatewayError.badRequest(.invalidDay, "day must be a date yyyy-MM-dd")
        }
        return day
    }

    static func dayParameter(_ text: String?, name: String) throws -> String? {
        guard let text else { return nil }
        guard BusinessCalendar.isValidDay(text) else { throw GatewayError.badRequest(.invalidDay, "\(name) must be a date yyyy-MM-dd") }
        return text
    }

    static func integerParameter(_ text: String?, name: String, code: ErrorCode, range: ClosedRange<Int>) throws -> Int? {
        guard let text else { return nil }
        guard let value = Int(text), range.contains(value) else {
            throw GatewayError.badRequest(code, "\(name) must be an integer \(range.lowerBound)-\(range.upperBound)")
        }
        return value
    }
}
