import Foundation
import RedisClient

/// The push Lua scripts, read once from the module's resource folder (`Resources/*.lua`, shipped as
/// `fanflow_Pushes.resources` beside the executable). Processes that pace or count pushes call
/// ``check()`` at start, so a missing file stops them with its name instead of failing the first send.
public enum PushScripts {
    public struct Missing: Error, CustomStringConvertible {
        public let description: String
    }

    /// A script answered with a reply of a shape its reader does not know: the script deployed is
    /// not the one this build reads (or Redis is not Redis). Carries the script and the reply.
    public struct UnexpectedReply: Error, CustomStringConvertible {
        public let script: String
        public let reply: RedisReply
        public var description: String { "unexpected reply from \(script).lua: \(reply)" }
    }

    static let names = ["pace", "stats-record", "stats-apps", "stats-read"]

    static let loaded: Result<[String: RedisScript], Missing> = {
        guard let folder = Bundle.module.url(forResource: "Resources", withExtension: nil) else {
            return .failure(Missing(description: "the push scripts folder (Resources) is missing from fanflow_Pushes.resources beside the executable"))
        }
        var scripts: [String: RedisScript] = [:]
        for name in names {
            guard let source = try? String(contentsOf: folder.appendingPathComponent("\(name).lua"), encoding: .utf8), !source.isEmpty else {
                return .failure(Missing(description: "the push script \(name).lua is missing or empty in \(folder.path)"))
            }
            scripts[name] = RedisScript(source)
        }
        return .success(scripts)
    }()

    /// Throws ``Missing`` naming the file when a script cannot be read.
    public static func check() throws(Missing) { _ = try loaded.get() }

    static func named(_ name: String) throws(Missing) -> RedisScript {
        guard let script = try loaded.get()[name] else { throw Missing(description: "no push script named \(name)") }
        return script
    }

    /// The reply to one call of `script`: an error reply throws the server's message as a
    /// ``RedisError``, as a command's would.
    static func reply(_ replies: [RedisReply], of script: String) throws -> RedisReply {
        guard let reply = replies.first else { throw UnexpectedReply(script: script, reply: .null) }
        if case .error(let message) = reply { throw RedisError(.server, message) }
        return reply
    }
}
