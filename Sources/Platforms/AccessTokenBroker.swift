import Foundation
import Logging
import RedisClient
import Synchronization

/// One access token per app, shared by every worker through Redis, refreshed by one holder of a
/// Redis lock at a time.
///
/// The popular SDKs refresh wherever a token looks expired, so a hundred workers seeing 40001 at
/// once make a hundred refreshes and each ends the one before (a refresh storm). Here a worker that
/// saw its token fail asks for a token *other than the one that failed*: the first to take the
/// lock (owner token, released by compare-and-delete) refreshes through the stable-token endpoint;
/// everyone else waits for the new token to appear and takes it. A token near its expiry is
/// refreshed the same way, before it fails. Forced refreshes (after 40001/40014, which end the
/// previous token) are counted per app and day against the platform's budget, and logged as an
/// error past it.
public final class AccessTokenBroker: Sendable {
    public typealias Secrets = @Sendable (_ app: String) async throws -> String?

    public enum Problem: Error, Sendable, Equatable, CustomStringConvertible {
        case unknownApp(String)
        case refreshFailed(String)
        case timedOut(String)

        public var description: String {
            switch self {
            case .unknownApp(let app): return "no app secret for \(app)"
            case .refreshFailed(let reason): return "token refresh failed: \(reason)"
            case .timedOut(let app): return "no new token for \(app) within the lock's time"
            }
        }
    }

    let redis: RedisPool
    let client: WeChatClient
    let secrets: Secrets
    let logger: Logger
    /// Refreshed this long before the platform would expire it.
    let margin: TimeInterval
    let lockMilliseconds: Int
    /// The platform's daily allowance of forced refreshes (stable token: 20 a day).
    let forcedBudget: Int
    public let counters = Counters()
    /// The token as this process last read or made it, trusted for a few seconds: a send then
    /// costs no Redis round trip for its token. A token another worker replaced meanwhile fails
    /// with 40001, and ``refresh(app:replacing:force:)`` reads Redis again.
    private let memory = Mutex<[String: (value: String, expiresAt: Date, readAt: ContinuousClock.Instant)]>([:])
    static let memoryFor = Duration.seconds(5)

    public final class Counters: Sendable {
        public let refreshes = Atomic<Int>(0)
        public let forced = Atomic<Int>(0)
        public let overBudget = Atomic<Int>(0)
    }

    public init(redis: RedisPool, client: WeChatClient, secrets: @escaping Secrets, logger: Logger, margin: TimeInterval = 300,
                lockMilliseconds: Int = 10_000, forcedBudget: Int = 20) {
        self.redis = redis
        self.client = client
        self.secrets = secrets
        self.logger = logger
        self.margin = margin
        self.lockMilliseconds = lockMilliseconds
        self.forcedBudget = forcedBudget
    }

    public static func tokenKey(_ app: String) -> String { "fanflow:{wx:\(app)}:token" }
    public static func lockKey(_ app: String) -> String { "fanflow:{wx:\(app)}:token-lock" }
    public static func forcedKey(_ app: String, day: String) -> String { "fanflow:{wx:\(app)}:forced:\(day)" }

    /// What `token-lock-release.lua` did with the refresh lock.
    enum LockRelease: Equatable {
        case released
        /// The lock had expired (and may be another worker's now): the refresh outlived it.
        case notHeld

        init(reply: RedisReply) throws(PlatformScripts.UnexpectedReply) {
            switch reply {
            case .integer(1): self = .released
            case .integer(0): self = .notHeld
            default: throw PlatformScripts.UnexpectedReply(script: "token-lock-release", reply: reply)
            }
        }
    }

    /// The app's current token, refreshed first when it is missing or near its expiry.
    public func token(app: String) async throws -> String {
        if let known = memory.withLock({ $0[app] }), ContinuousClock.now - known.readAt < Self.memoryFor,
           known.expiresAt.timeIntervalSinceNow > margin {
            return known.value
        }
        if let current = try await stored(app), current.expiresAt.timeIntervalSinceNow > margin { return current.value }
        return try await refresh(app: app, replacing: nil, force: false)
    }

    /// A token other than `stale`, which the platform refused: 42001 (expired) refreshes normally,
    /// 40001/40014 (invalid: another refresh ended it, or it was revoked) `force`s a new one.
    /// However many workers ask with the same stale token, one refresh is made.
    public func refresh(app: String, replacing stale: String?, force: Bool) async throws -> String {
        let deadline = Date().addingTimeInterval(Double(lockMilliseconds) / 1000 + 5)
        while Date() < deadline {
            if let current = try await fresh(app, other: stale) { return current }
            let owner = UUID().uuidString
            let taken = try await redis.connection.command(["SET", Self.lockKey(app), owner, "NX", "PX", String(lockMilliseconds)])
            if taken.string == "OK" {
                do {
                    let token = try await refreshHoldingLock(app: app, stale: stale, force: force)
                    await release(app: app, owner: owner)
                    return token
                } catch {
                    await release(app: app, owner: owner)
                    throw error
                }
            }
            try await Task.sleep(for: .milliseconds(25))
        }
        throw Problem.timedOut(app)
    }

    /// Releases the refresh lock if it is still `owner`'s. A release that fails is logged, not
    /// thrown: the token is already stored (or the refresh already failed), and the lock expires
    /// by itself within `lockMilliseconds`.
    private func release(app: String, owner: String) async {
        do {
            let replies = try await redis.evalSHA([(try PlatformScripts.tokenLockRelease(), [Self.lockKey(app)], [owner])])
            guard let reply = replies.first else { throw PlatformScripts.UnexpectedReply(script: "token-lock-release", reply: .null) }
            if case .error(let message) = reply { throw RedisError(.server, message) }
            if try LockRelease(reply: reply) == .notHeld {
                logger.warning("the token refresh outlived its lock; another worker may have refreshed too",
                               metadata: ["app": "\(app)", "lockMilliseconds": "\(lockMilliseconds)"])
            }
        } catch {
            logger.warning("token refresh lock not released; it expires by itself", metadata: ["app": "\(app)", "error": "\(error)"])
        }
    }

    private func refreshHoldingLock(app: String, stale: String?, force: Bool) async throws -> String {
        // Another holder may have finished just before the lock was taken.
        if let current = try await fresh(app, other: stale) { return current }
        guard let secret = try await secrets(app) else { throw Problem.unknownApp(app) }
        let token: WeChatClient.AccessToken
        do { token = try await client.stableToken(app: app, secret: secret, forceRefresh: force) } catch {
            throw Problem.refreshFailed("\(error)")
        }
        counters.refreshes.add(1, ordering: .relaxed)
        if force { try await countForced(app) }
        let expiresAt = Int64((Date().timeIntervalSince1970 + Double(token.expiresIn)) * 1000)
        _ = try await redis.connection.command(["SET", Self.tokenKey(app), "\(expiresAt)|\(token.value)", "PX",
                                                String(max(1, token.expiresIn) * 1000)])
        remember(app, token.value, Date(timeIntervalSince1970: Double(expiresAt) / 1000))
        logger.info("access token refreshed", metadata: ["app": "\(app)", "forced": "\(force)", "expiresIn": "\(token.expiresIn)"])
        return token.value
    }

    private func countForced(_ app: String) async throws {
        counters.forced.add(1, ordering: .relaxed)
        let day = BeijingTime.day(Date())
        let replies = try await redis.connection.pipeline([["INCR", Self.forcedKey(app, day: day)],
                                                           ["EXPIRE", Self.forcedKey(app, day: day), String(2 * 86_400)]])
        let used = replies.first?.int ?? 0
        if used > Int64(forcedBudget) {
            counters.overBudget.add(1, ordering: .relaxed)
            logger.error("forced access-token refreshes past the platform's daily budget: look for another process refreshing this app's token",
                         metadata: ["app": "\(app)", "today": "\(used)", "budget": "\(forcedBudget)"])
        }
    }

    /// The stored token unless it is `other` or near its expiry.
    private func fresh(_ app: String, other stale: String?) async throws -> String? {
        guard let current = try await stored(app), current.value != stale, current.expiresAt.timeIntervalSinceNow > 0 else { return nil }
        if stale == nil, current.expiresAt.timeIntervalSinceNow <= margin { return nil }
        return current.value
    }

    private func stored(_ app: String) async throws -> (value: String, expiresAt: Date)? {
        guard let text = try await redis.connection.command(["GET", Self.tokenKey(app)]).string,
              let bar = text.firstIndex(of: "|"), let milliseconds = Int64(text[..<bar]) else { return nil }
        let token = (value: String(text[text.index(after: bar)...]), expiresAt: Date(timeIntervalSince1970: Double(milliseconds) / 1000))
        remember(app, token.value, token.expiresAt)
        return token
    }

    private func remember(_ app: String, _ value: String, _ expiresAt: Date) {
        memory.withLock { $0[app] = (value, expiresAt, .now) }
    }
}
