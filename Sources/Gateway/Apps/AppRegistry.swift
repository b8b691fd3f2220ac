@preconcurrency import Crypto
import Foundation
import Logging
import PlatformSigning
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
    let wechat: WeChatCrypto?
    let alipay: AlipayCrypto?
    let qq: QQCrypto?
    let hmacKey: SymmetricKey?
    let wechatPay: WeChatPayCrypto?

    /// Builds the verifiers; a key that does not parse is an `AppCredentialsProblem` naming it.
    init(platform: AppPlatform, appID: String, credentials: AppCredentials, createdAt: String? = nil, updatedAt: String? = nil) throws {
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
public final class AppRegistry: Sendable {
    struct Key: Hashable { let platform: AppPlatform; let appID: String }
    struct Entry { let app: RegisteredApp?; let loadedAt: ContinuousClock.Instant }

    private let database: PostgresPool
    private let box: SecretBox
    private let cache = Mutex<[Key: Entry]>([:])
    private let freshFor: Duration
    private let unknownFor: Duration
    private let logger: Logger
    private static let maxEntries = 50_000

    public init(database: PostgresPool, box: SecretBox, freshFor: Duration = .seconds(10),
                unknownFor: Duration = .seconds(2), logger: Logger) {
        self.database = database
        self.box = box
        self.freshFor = freshFor
        self.unknownFor = unknownFor
        self.logger = logger
    }

    public var encryptsAtRest: Bool { box.encrypts }

    /// The app, or 404 `unknown_app`; 503 if it is not cached and the database cannot be asked.
    public func app(_ platform: AppPlatform, _ appID: String) async throws(GatewayError) -> RegisteredApp {
        let key = Key(platform: platform, appID: appID)
        let now = ContinuousClock.now
        let cached = cache.withLock { $0[key] }
        if let cached {
            let ttl = cached.app == nil ? unknownFor : freshFor
            if now - cached.loadedAt < ttl {
                guard let app = cached.app else { throw .unknownApp(platform.rawValue, appID) }
                return app
            }
        }
        guard appID.utf8.count <= 64, !appID.isEmpty else { throw .unknownApp(platform.rawValue, appID) }
        do {
            let app = try await load(key)
            cache.withLock { cache in
                // Unknown app ids are cached too (so a flood of them does not reach the database);
                // past a bound, expired entries go, so the flood cannot grow memory either.
                if cache.count >= Self.maxEntries {
                    cache = cache.filter { now - $0.value.loadedAt < (($0.value.app == nil) ? unknownFor : freshFor) }
                }
                cache[key] = Entry(app: app, loadedAt: now)
            }
            guard let app else { throw GatewayError.unknownApp(platform.rawValue, appID) }
            return app
        } catch let error as GatewayError {
            throw error
        } catch {
            if let stale = cached?.app {
                logger.warning("app registry unreachable, serving cached credentials", metadata: ["error": "\(error)"])
                return stale
            }
            throw .unavailable("registry_unavailable", "app registry is unreachable: \(error)")
        }
    }

    private func load(_ key: Key) async throws -> RegisteredApp? {
        let rows = try await database.query(
            "SELECT credentials, created_at::text AS created_at, updated_at::text AS updated_at FROM apps WHERE platform = $1 AND app_id = $2",
            [key.platform.rawValue, key.appID])
        guard let row = rows.first, let stored = row.string("credentials") else { return nil }
        let json = try box.open(stored)
        let credentials = try AppCredentials.decode(platform: key.platform, json: json)
        return try RegisteredApp(platform: key.platform, appID: key.appID, credentials: credentials,
                                 createdAt: row.string("created_at"), updatedAt: row.string("updated_at"))
    }

    /// Inserts or replaces; true when the app is new. Build `RegisteredApp` first: that checks the keys.
    public func put(_ platform: AppPlatform, _ appID: String, _ credentials: AppCredentials) async throws -> Bool {
        let sealed = try box.seal(try credentials.encoded())
        let rows = try await database.query("""
            INSERT INTO apps (platform, app_id, credentials) VALUES ($1, $2, $3)
            ON CONFLICT (platform, app_id) DO UPDATE SET credentials = EXCLUDED.credentials, updated_at = now()
            RETURNING (xmax = 0) AS inserted
            """, [platform.rawValue, appID, sealed])
        cache.withLock { _ = $0.removeValue(forKey: Key(platform: platform, appID: appID)) }
        return rows.first?.bool("inserted") ?? false
    }

    public func delete(_ platform: AppPlatform, _ appID: String) async throws -> Bool {
        let rows = try await database.query("DELETE FROM apps WHERE platform = $1 AND app_id = $2", [platform.rawValue, appID])
        cache.withLock { _ = $0.removeValue(forKey: Key(platform: platform, appID: appID)) }
        return rows.affectedRows > 0
    }

    /// Fresh from the database (admin reads must not show a stale cache).
    public func fetch(_ platform: AppPlatform, _ appID: String) async throws -> RegisteredApp? {
        try await load(Key(platform: platform, appID: appID))
    }

    public func list(_ platform: AppPlatform?) async throws -> [(platform: String, appID: String, updatedAt: String)] {
        let rows = try await database.query(
            "SELECT platform, app_id, updated_at::text AS updated_at FROM apps WHERE $1::text IS NULL OR platform = $1 ORDER BY platform, app_id",
            [platform?.rawValue as String?])
        return rows.map { ($0.string("platform") ?? "", $0.string("app_id") ?? "", $0.string("updated_at") ?? "") }
    }
}
