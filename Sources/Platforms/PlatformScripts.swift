import Foundation
import RedisClient

/// The Platforms module's Lua scripts, read once from its resource folder (`Resources/*.lua`,
/// shipped as `fanflow_Platforms.resources` beside the executable). Processes that refresh access
/// tokens call ``check()`` at start, so a missing file stops them with its name instead of leaving
/// every refresh lock to expire by itself.
public enum PlatformScripts {
    public struct Missing: Error, CustomStringConvertible {
        public let description: String
    }

    /// A script answered with a reply of a shape its reader does not know. Carries the script and
    /// the reply.
    public struct UnexpectedReply: Error, CustomStringConvertible {
        public let script: String
        public let reply: RedisReply
        public var description: String { "unexpected reply from \(script).lua: \(reply)" }
    }

    static let release: Result<RedisScript, Missing> = {
        guard let folder = Bundle.module.url(forResource: "Resources", withExtension: nil) else {
            return .failure(Missing(description: "the platforms scripts folder (Resources) is missing from fanflow_Platforms.resources beside the executable"))
        }
        let file = folder.appendingPathComponent("token-lock-release.lua")
        guard let source = try? String(contentsOf: file, encoding: .utf8), !source.isEmpty else {
            return .failure(Missing(description: "the script \(file.path) is missing or empty"))
        }
        return .success(RedisScript(source))
    }()

    /// Throws ``Missing`` naming the file when a script cannot be read.
    public static func check() throws(Missing) { _ = try release.get() }

    static func tokenLockRelease() throws(Missing) -> RedisScript { try release.get() }
}
