import Apps
import Runtime
import Foundation
import Hummingbird

/// `/admin/v1/*`: bearer-token protected. This file: apps and their credentials.
extension Gateway {
    func addAdminRoutes(_ router: Router<GatewayRequestContext>) {
        let admin = router.group("/admin/v1").add(middleware: AdminAuthMiddleware(token: configuration.adminToken.map(BearerToken.init)))
        addPointsAdminRoutes(admin)
        addCatalogAdminRoutes(admin)
        addSchedulerAdminRoutes(admin)
        addFlashSaleAdminRoutes(admin)
        addPushAdminRoutes(admin, audience: SegmentAudience(store: segmentStore()))
        addAudienceAdminRoutes(admin)
        addSegmentAdminRoutes(admin)
        addPortraitAdminRoutes(admin)
        addDeadLetterRoutes(admin)
        admin.get("/apps") { request, _ in
            let platform = try request.uri.queryParameters["platform"].map { text throws(GatewayError) in
                try appPlatform(String(text))
            }
            let apps = try await self.apps.list(platform)
            return Response.json(["apps": apps.map { AppSummary(platform: $0.platform, appId: $0.appID, updatedAt: $0.updatedAt) }])
        }
        admin.put("/apps/:platform/:appId") { request, context in
            let (platform, appID) = try appPath(context)
            let body = try await request.collectBody(upTo: 64 * 1024)
            let credentials: AppCredentials
            do {
                credentials = try AppCredentials.decode(platform: platform, json: body)
                _ = try RegisteredApp(platform: platform, appID: appID, credentials: credentials)
            } catch {
                throw GatewayError.badRequest(.invalidCredentials, "\(error)")
            }
            let created = try await apps.put(platform, appID, credentials)
            guard let stored = try await apps.fetch(platform, appID) else {
                throw GatewayError(.internalServerError, .notStored, "the app was not found after storing it")
            }
            return Response.json(AppView(stored, encrypted: apps.encryptsAtRest), status: created ? .created : .ok)
        }
        admin.get("/apps/:platform/:appId") { _, context in
            let (platform, appID) = try appPath(context)
            guard let app = try await apps.fetch(platform, appID) else { throw GatewayError.unknownApp(platform.rawValue, appID) }
            return Response.json(AppView(app, encrypted: apps.encryptsAtRest))
        }
        admin.delete("/apps/:platform/:appId") { _, context in
            let (platform, appID) = try appPath(context)
            guard try await apps.delete(platform, appID) else { throw GatewayError.unknownApp(platform.rawValue, appID) }
            return Response(status: .noContent)
        }
    }

    private func appPlatform(_ text: String) throws(GatewayError) -> AppPlatform {
        guard let platform = AppPlatform(rawValue: text) else {
            throw GatewayError.badRequest(.unknownPlatform, "platform must be one of wechat, alipay, weibo, qq, server")
        }
        return platform
    }

    private func appPath(_ context: GatewayRequestContext) throws(GatewayError) -> (AppPlatform, String) {
        let platform = try appPlatform(context.parameters.get("platform") ?? "")
        let appID = context.parameters.get("appId") ?? ""
        guard AppIDShape.isValid(appID) else {
            throw GatewayError.badRequest(.invalidAppId, "appId must be \(AppIDShape.rule)")
        }
        return (platform, appID)
    }
}

struct AppSummary: Encodable {
    let platform: String
    let appId: String
    let updatedAt: String
}

/// An app as the admin API shows it: secrets masked, never returned in full.
struct AppView: Encodable {
    let platform: String
    let appId: String
    let credentials: [String: String]
    let encryptedAtRest: Bool
    let createdAt: String?
    let updatedAt: String?

    init(_ app: RegisteredApp, encrypted: Bool) {
        platform = app.platform.rawValue
        appId = app.appID
        credentials = app.credentials.masked()
        encryptedAtRest = encrypted
        createdAt = app.createdAt
        updatedAt = app.updatedAt
    }
}

/// `Authorization: Bearer $FANFLOW_ADMIN_TOKEN`, compared as SHA-256 digests in constant time, so
/// neither the token's length nor a matching prefix shows in the timing (``BearerToken``).
struct AdminAuthMiddleware: RouterMiddleware {
    typealias Context = GatewayRequestContext
    let token: BearerToken?

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let presented = BearerToken.presented(request) else {
            throw GatewayError.unauthorized(.missingToken, "Authorization: Bearer <admin token> is required")
        }
        guard let token, token.accepts(presented) else {
            throw GatewayError.forbidden(.badToken, "the admin token is not valid")
        }
        return try await next(request, context)
    }
}
