import Apps

extension GatewayError {
    /// How the gateway answers a registry refusal. Credential problems are the operator's: the
    /// caller (a platform, a brand) learns only that the gateway is at fault, and the instructions
    /// go to the log under the request id.
    init(_ error: AppLookupError) {
        switch error {
        case .unknownApp(let platform, let appID):
            self = .unknownApp(platform.rawValue, appID)
        case .rateLimited:
            self.init(.tooManyRequests, .rateLimited, "too many lookups of unknown apps from this client; slow down")
        case .credentialsNotSealed:
            self.init(.internalServerError, .credentialsNotSealed, "this app's credentials cannot be used; report the request id",
                      detail: error.description)
        case .credentialsUnreadable:
            self.init(.internalServerError, .credentialsUnreadable, "this app's credentials cannot be used; report the request id",
                      detail: error.description)
        case .unavailable(let underlying):
            self = .storage(underlying)
        }
    }
}

extension AppRegistry {
    /// ``AppRegistry/app(_:_:client:)`` with its refusals as the gateway answers them.
    func gatewayApp(_ platform: AppPlatform, _ appID: String, client: String? = nil) async throws(GatewayError) -> RegisteredApp {
        do { return try await app(platform, appID, client: client) } catch { throw GatewayError(error) }
    }
}
