import Foundation
import RedisClient

/// The loyalty program's Lua scripts, read once from the module's resource folder
/// (`Resources/*.lua`, shipped as `fanflow_Loyalty.resources` beside the executable). Processes
/// call ``check()`` at start, so a missing file stops them with its name instead of holding the
/// first batch as an outage.
public enum LoyaltyScripts {
    public struct Missing: Error, CustomStringConvertible {
        public let description: String
    }

    /// `decide`: caps, frequency and idempotency of one member's grants (``PointsDecider``).
    /// `raise-counter`: a counter raised to what the ledger proves (``CounterRebuild``).
    /// `release-lock`: the rebuild lock released only by its owner (``CounterReadiness``).
    static let names = ["decide", "raise-counter", "release-lock"]

    static let loaded: Result<[String: RedisScript], Missing> = {
        guard let folder = Bundle.module.url(forResource: "Resources", withExtension: nil) else {
            return .failure(Missing(description: "the loyalty scripts folder (Resources) is missing from fanflow_Loyalty.resources beside the executable"))
        }
        var scripts: [String: RedisScript] = [:]
        for name in names {
            let file = folder.appendingPathComponent("\(name).lua")
            guard let source = try? String(contentsOf: file, encoding: .utf8), !source.isEmpty else {
                return .failure(Missing(description: "the loyalty script \(file.path) is missing or empty"))
            }
            scripts[name] = RedisScript(source)
        }
        return .success(scripts)
    }()

    /// Throws ``Missing`` naming the file when a script cannot be read.
    public static func check() throws(Missing) { _ = try loaded.get() }

    static func named(_ name: String) throws(Missing) -> RedisScript {
        guard let script = try loaded.get()[name] else { throw Missing(description: "no loyalty script named \(name)") }
        return script
    }

    static func decide() throws(Missing) -> RedisScript { try named("decide") }
    static func raiseCounter() throws(Missing) -> RedisScript { try named("raise-counter") }
    static func releaseLock() throws(Missing) -> RedisScript { try named("release-lock") }
}

/// A loyalty script answered something its contract does not allow: a script and its caller out
/// of step (a deploy that shipped one without the other), or a stored decision no version wrote.
/// Never guessed around: the batch fails with the reply in the message (and is held, as any error
/// that is not the events' own fault is).
public struct UnexpectedScriptReply: Error, Sendable, CustomStringConvertible {
    public let script: String
    public let reply: String
    public init(script: String, reply: RedisReply) {
        self.script = script
        self.reply = String("\(reply)".prefix(300))
    }
    public var description: String { "the loyalty script \(script) answered an unexpected reply: \(reply)" }
}
