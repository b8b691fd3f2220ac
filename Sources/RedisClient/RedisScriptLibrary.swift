import Foundation

/// A module's Lua scripts, read once from its `Resources` folder (shipped as
/// `fanflow_<Module>.resources` beside the executable) and kept by file name without `.lua`.
/// A process calls ``RedisScriptLibrary/Loaded/check()`` at start, so a missing file stops it with
/// the file's name instead of failing the first request that needs the script.
public enum RedisScriptLibrary {
    public struct Missing: Error, Sendable, CustomStringConvertible {
        public let description: String
        public init(_ description: String) { self.description = description }
    }

    /// The scripts of one module, or why they could not be read.
    public struct Loaded: Sendable {
        let result: Result<[String: RedisScript], Missing>

        public func check() throws(Missing) { _ = try result.get() }

        public func script(_ name: String) throws(Missing) -> RedisScript {
            guard let script = try result.get()[name] else { throw Missing("no script named \(name).lua was loaded") }
            return script
        }
    }

    /// Reads `names` (`<name>.lua`) from `folder` inside `bundle` (`Bundle.module` of the caller).
    public static func load(_ names: [String], from bundle: Bundle, folder: String = "Resources", module: String) -> Loaded {
        guard let directory = bundle.url(forResource: folder, withExtension: nil) else {
            return Loaded(result: .failure(Missing("the \(module) scripts folder (\(folder)) is missing from fanflow_\(module).resources beside the executable")))
        }
        var scripts: [String: RedisScript] = [:]
        for name in names {
            let file = directory.appendingPathComponent("\(name).lua")
            guard let source = try? String(contentsOf: file, encoding: .utf8), !source.isEmpty else {
                return Loaded(result: .failure(Missing("the \(module) script \(file.path) is missing or empty")))
            }
            scripts[name] = RedisScript(source)
        }
        return Loaded(result: .success(scripts))
    }
}

/// A script's reply that is not one of the replies the script can give: the script and the Swift
/// that reads it disagree (a deploy of one without the other), which must stop the caller loudly.
public struct RedisScriptReplyError: Error, Sendable, CustomStringConvertible {
    public let script: String
    public let reply: RedisReply
    public init(script: String, reply: RedisReply) {
        self.script = script
        self.reply = reply
    }
    public var description: String { "unexpected reply from \(script).lua: \(reply)" }
}
