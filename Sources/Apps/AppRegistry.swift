@preconcurrency import Crypto
import Foundation
import Logging
import ClientSupport
import Contracts
import Platforms
import PostgresClient
import Synchronization

/// A registered app with its verifiers built once (RSA and Ed25519 keys are costly to parse, so
/// they are not rebuilt per webhook).
public struct RegisteredApp: Sendable {
    public let platform: AppPlatform
    public let appID: String
    public let credentials: AppCredentials
    public let createdAt: String?
    public let updatedAt: String?
    public let wechat: WeChatCrypto?
    public let alipay: AlipayCrypto?
    public let qq: QQCrypto?
    public let hmacKey: SymmetricKey?
    public let wechatPay: WeChatPayCrypto?

    /// Builds the verifiers; a key that does not parse is an `AppCredentialsProblem` naming it.
    public init(platform: AppPlatform, appID: String, credentials: AppCredentials, createdAt: String? = nil, updatedAt: String? = nil) throws {
        self.platform = platform
        self.appID = appID
        self.credentials = credentials
        self.createdAt = createdAt
        self.updatedAt = updatedAt
        var wechat: WeChatCrypto?, alipay: AlipayCrypto?, qq: QQCrypto?, hmacKey: SymmetricKey?, wechatPay: WeChatPayCrypto?
        switch credentials {
        case .wechat(let c):
            if let key = c.encodingAESKey { wechat = try WeChatCrypto(encodingAESKey: key, appID: appID) }
        case .alipay(let c):
            do {
                alipay = try AlipayCrypto(alipayPublicKey: c.alipayPublicKey, appPrivateKey: c.appPrivateKey)
            } catch {
                switch error {
                case .badPublicKey(let why), .badPrivateKey(let why), .unsupportedSignType(let why):
                    throw AppCredentialsProblem(why)
                }
            }
        case .qq(let c):
            qq = try QQCrypto(botSecret: c.botSecret)
        case .server(let c):
            hmacKey = SymmetricKey(data: Array(c.secret.utf8))
        case .weibo:
            break
        case .wechatPay(let c):
            wechatPay = try WeChatPayCrypto(apiV3Key: c.apiV3Key, platformPublicKey: c.platformPublicKey)
        }
        self.wechat = wechat
        self.alipay = alipay
        self.qq = qq
        self.hmacKey = hmacKey
        self.wechatPay = wechatPay
    }
}

/// Apps and their credentials: PostgreSQL is the truth, each gateway keeps a short-lived cache so
/// a webhook costs no database round trip. A change made through another gateway is seen within
/// `freshFor`; while the database is unreachable, cached apps keep being served.
///
/// Unknown app ids cost as little as known ones: they are cached too (`unknownFor`), concurrent
/// lookups of one id share one query, and a client that keeps naming ids the gateway does not
/// know is limited per IP (`lookupRatePerIP`) before any of its lookups reaches the database.
/// Refreshing an app the cache knows is never limited, so platforms' servers are not either.
public final class AppRegistry: Sendable {
    struct Key: Hashable { let platform: AppPlatform; let appID: String }
    struct Entry { let app: RegisteredApp?; let loadedAt: ContinuousClock.Instant }

    private let database: PostgresPool
    private let box: SecretBox
    private let cache = Mutex<[Key: Entry]>([:])
    private let inFlight = Mutex<[Key: Task<RegisteredApp?, any Error>]>([:])
    private let lists = Mutex<[AppPlatform: (apps: [RegisteredApp], loadedAt: ContinuousClock.Instant)]>([:])
    private let lookupLimit: TokenBuckets.Limit?
    private let lookupBuckets = TokenBuckets()
    private let freshFor: Duration
    private let unknownFor: Duration
    private let logger: Logger
    private static let maxEntries = 50_000

    public init(database: PostgresPool, keys: SecretKeys, lookupRatePerIP: Int = 0, freshFor: Duration = .seconds(10),
                unknownFor: Duration = .seconds(2), logger: Logger) {
        self.database = database
        self.box = SecretBox(keys: keys)
        self.lookupLimit = .perSecond(lookupRatePerIP)
        self.freshFor = freshFor
        self.unknownFor = unknownFor
        self.logger = logger
    }

    public var encryptsAtRest: Bool { true }

    /// The app, or `.unknownApp`; `.unavailable` if it is not cached and the database cannot be
    /// asked; `.rateLimited` when `client` has looked up too many unknown ids.
    public func app(_ platform: AppPlatform, _ appID: String, client: String? = nil) async throws(AppLookupError) -> RegisteredApp {
        let key = Key(platform: platform, appID: appID)
        let now = ContinuousClock.now
        let cached = cache.withLock { $0[key] }
        if let cached {
            let ttl = cached.app == nil ? unknownFor : freshFor
            if now - cached.loadedAt < ttl {
                guard let app = cached.app else { throw .unknownApp(platform: platform, appID: appID) }
                return app
            }
        }
        guard appID.utf8.count <= 64, !appID.isEmpty else { throw .unknownApp(platform: platform, appID: appID) }
        // Only a lookup that would start a query counts against the client's limit: requests that
        // join a query already running for the id cost the database nothing. Counting each request
        // refused 54-618 of a platform's first 64 concurrent webhooks for an app registered but not
        // yet cached (one IP, 10 lookups a second).
        let limitKey: String? = (cached?.app == nil && lookupLimit != nil) ? client.map { "l:" + (IPAddress($0)?.limitKey ?? $0) } : nil
        do {
            let app = try await sharedLoad(key, limitKey: limitKey)
            cache.withLock { cache in
                // Past a bound, expired entries go, so a flood of unknown ids cannot grow memory.
                if cache.count >= Self.maxEntries {
                    cache = cache.filter { now - $0.value.loadedAt < (($0.value.app == nil) ? unknownFor : freshFor) }
                }
                cache[key] = Entry(app: app, loadedAt: now)
            }
            guard let app else { throw AppLookupError.unknownApp(platform: platform, appID: appID) }
            return app
        } catch let error as AppLookupError {
            throw error
        } catch {
            if let stale = cached?.app {
                logger.warning("app registry unreachable, serving cached credentials", metadata: ["error": "\(error)"])
                return stale
            }
            throw .unavailable(error)
        }
    }

    /// One query per id however many requests ask for it at once. A request that would start the
    /// query takes a token from `limitKey`'s bucket first (``AppLookupError/rateLimited`` without one).
    private func sharedLoad(_ key: Key, limitKey: String?) async throws -> RegisteredApp? {
        let claimed = inFlight.withLock { running -> (task: Task<RegisteredApp?, any Error>, owner: Bool)? in
            if let task = running[key] { return (task, false) }
            if let limitKey, let lookupLimit, lookupBuckets.take((limitKey, lookupLimit)) != .allowed { return nil }
            let task = Task { try await self.load(key) }
            running[key] = task
            return (task, true)
        }
        guard let (task, owner) = claimed else { throw AppLookupError.rateLimited }
        defer { if owner { inFlight.withLock { _ = $0.removeValue(forKey: key) } } }
        return try await task.value
    }

    /// Every app of a platform (WeChat Pay merchants: a notification names none that can be trusted
    /// before its signature is checked), cached for `freshFor` like single apps.
    public func all(_ platform: AppPlatform) async throws -> [RegisteredApp] {
        let now = ContinuousClock.now
        if let cached = lists.withLock({ $0[platform] }), now - cached.loadedAt < freshFor { return cached.apps }
        var apps: [RegisteredApp] = []
        for entry in try await list(platform) {
            if let app = try? await app(platform, entry.appID) { apps.append(app) }
        }
        lists.withLock { $0[platform] = (apps, now) }
        return apps
    }

    private func load(_ key: Key) async throws -> RegisteredApp? {
        let rows = try await database.query(
            "SELECT credentials, created_at::text AS created_at, updated_at::text AS updated_at FROM apps WHERE platform = $1 AND app_id = $2",
            [key.platform.rawValue, key.appID])
        guard let row = rows.first, let stored = row.string("credentials") else { return nil }
        let json: [UInt8]
        do {
            json = try box.open(stored, platform: key.platform.rawValue, appID: key.appID)
        } catch {
            logger.error("app credentials refused", metadata: ["platform": "\(key.platform.rawValue)", "app": "\(key.appID)",
                                                                "error": "\(error)"])
            switch error {
            case .plaintext: throw AppLookupError.credentialsNotSealed(platform: key.platform, appID: key.appID)
            case .cannotOpen: throw AppLookupError.credentialsUnreadable(platform: key.platform, appID: key.appID)
            }
        }
        let credentials = try AppCredentials.decode(platform: key.platform, json: json)
        return try RegisteredApp(platform: key.platform, appID: key.appID, credentials: credentials,
                                 createdAt: row.string("created_at"), updatedAt: row.string("updated_at"))
    }

    /// Inserts or replaces; true when the app is new. Build `RegisteredApp` first: that checks the keys.
    public func put(_ platform: AppPlatform, _ appID: String, _ credentials: AppCredentials) async throws -> Bool {
        let sealed = try box.seal(try credentials.encoded(), platform: platform.rawValue, appID: appID)
        let rows = try await database.query("""
            INSERT INTO apps (platform, app_id, credentials) VALUES ($1, $2, $3)
            ON CONFLICT (platform, app_id) DO UPDATE SET credentials = EXCLUDED.credentials, updated_at = now()
            RETURNING (xmax = 0) AS inserted
            """, [platform.rawValue, appID, sealed])
        forget(platform, appID)
        guard let row = rows.first else { throw PostgresRowError(column: "inserted", problem: .null) }
        return try row.requiredBool("inserted")
    }

    public func delete(_ platform: AppPlatform, _ appID: String) async throws -> Bool {
        let rows = try await database.query("DELETE FROM apps WHERE platform = $1 AND app_id = $2", [platform.rawValue, appID])
        forget(platform, appID)
        return rows.affectedRows > 0
    }

    private func forget(_ platform: AppPlatform, _ appID: String) {
        cache.withLock { _ = $0.removeValue(forKey: Key(platform: platform, appID: appID)) }
        lists.withLock { _ = $0.removeValue(forKey: platform) }
    }

    /// Fresh from the database (admin reads must not show a stale cache).
    public func fetch(_ platform: AppPlatform, _ appID: String) async throws -> RegisteredApp? {
        try await load(Key(platform: platform, appID: appID))
    }

    public func list(_ platform: AppPlatform?) async throws -> [(platform: String, appID: String, updatedAt: String)] {
        let rows = try await database.query(
            "SELECT platform, app_id, updated_at::text AS updated_at FROM apps WHERE $1::text IS NULL OR platform = $1 ORDER BY platform, app_id",
            [platform?.rawValue as String?])
        return try rows.map { row throws(PostgresRowError) in
            (try row.requiredString("platform"), try row.requiredString("app_id"), try row.requiredString("updated_at"))
        }
    }

    /// What `fanflow secrets seal` did.
    public struct SealReport: Sendable, Equatable {
        /// Rows that were plain JSON or sealed the old way, now sealed to their row.
        public var sealed: [String] = []
        /// Rows already in the current form.
        public var alreadySealed = 0
        /// Rows that could not be opened (another key, or corrupted): left as they are.
        public var failed: [String] = []
    }

    /// Seals every plaintext row and reseals every `v1:` row bound to its own platform and app id.
    /// Each row is rewritten only if it still holds what was read, so an admin change made
    /// meanwhile is not overwritten; running it again finds nothing to do.
    public func sealAll() async throws -> SealReport {
        var report = SealReport()
        let rows = try await database.query("SELECT platform, app_id, credentials FROM apps ORDER BY platform, app_id")
        for row in rows {
            guard let platform = row.string("platform"), let appID = row.string("app_id"), let stored = row.string("credentials") else { continue }
            let name = "\(platform)/\(appID)"
            guard SecretBox.form(of: stored) != .v2 else { report.alreadySealed += 1; continue }
            do {
                let plain = try box.openForResealing(stored, platform: platform, appID: appID)
                let sealed = try box.seal(plain, platform: platform, appID: appID)
                let updated = try await database.query(
                    "UPDATE apps SET credentials = $4 WHERE platform = $1 AND app_id = $2 AND credentials = $3",
                    [platform, appID, stored, sealed])
                if updated.affectedRows == 1 { report.sealed.append(name) }
                if let known = AppPlatform(rawValue: platform) { forget(known, appID) }
            } catch {
                logger.error("cannot seal app credentials", metadata: ["app": "\(name)", "error": "\(error)"])
                report.failed.append(name)
            }
        }
        return report
    }
}

/// Why an app could not be had. The gateway maps each case to its status and code; a worker
/// (pushes) treats all but `.unavailable` as the app being unusable.
public enum AppLookupError: Error, Sendable, CustomStringConvertible {
    case unknownApp(platform: AppPlatform, appID: String)
    /// The client looked up too many unknown ids (``AppRegistry`` `lookupRatePerIP`).
    case rateLimited
    /// The row is plain JSON: the operator must run `fanflow secrets seal`.
    case credentialsNotSealed(platform: AppPlatform, appID: String)
    /// The row is sealed with another FANFLOW_SECRET_KEY, or corrupted.
    case credentialsUnreadable(platform: AppPlatform, appID: String)
    /// The database could not be asked and nothing was cached.
    case unavailable(any Error)

    public var description: String {
        switch self {
        case .unknownApp(let platform, let appID): return "no \(platform.rawValue) app \(appID) is registered"
        case .rateLimited: return "too many lookups of unknown apps from this client"
        case .credentialsNotSealed(let platform, let appID):
            return "app \(platform.rawValue)/\(appID) stores its credentials unencrypted; the operator must run `fanflow secrets seal`"
        case .credentialsUnreadable(let platform, let appID):
            return "app \(platform.rawValue)/\(appID)'s stored credentials cannot be opened with this FANFLOW_SECRET_KEY"
        case .unavailable(let error): return "the app registry is unreachable: \(error)"
        }
    }
}
