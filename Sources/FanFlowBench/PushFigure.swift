import ArgumentParser
import Foundation

/// One pass of `scripts/bench push` against the push worker the wrapper started: a broadcast to the
/// tagged members, timed by the fake platform's arrival times of the first and last message.
struct PushPass: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "push-pass", abstract: "One broadcast through running processes, timed at the fake platform.")

    @Option(help: "The gateway's base URL.") var gateway: String
    @Option(help: "The admin token.") var adminToken: String
    @Option(help: "The fake platform's base URL.") var fake: String
    @Option(help: "Tagged members the broadcast reaches.") var members: Int
    @Option(help: "The worker's per-app rate (0: lifted).") var rate: Int
    @Option(help: "The pass's name.") var label: String
    @Option(help: "The template to broadcast.") var template: String = "bench"
    @Option(help: "The tag to broadcast to.") var tag: String = "bench"
    @Option(help: "Give up after this many seconds.") var timeout: Double = 600
    @Option(help: "Append the result here.") var results: String

    struct Line: Codable {
        var label: String
        var rate: Int
        var members: Int
        var arrived: Int
        var duplicates: Int
        var span: Double
    }

    func sent() async throws -> Int {
        guard let object = try await Web.must(.GET, "\(fake)/fake/stats").json() as? [String: Any],
              let sent = (object["sent"] as? NSNumber)?.intValue else { throw BenchError("the fake platform's stats have no `sent`") }
        return sent
    }

    func run() async throws {
        let before = try await sent()
        FileHandle.standardError.write(Data("[bench] broadcast to \(members) members, rate \(rate == 0 ? "lifted" : "\(rate)/s")\n".utf8))
        try await Web.must(.POST, "\(gateway)/admin/v1/broadcasts", headers: [("Authorization", "Bearer \(adminToken)")],
                           body: #"{"template":"\#(template)","tags":["\#(tag)"]}"#)
        let started = now()
        while try await sent() < before + members {
            if now() - started > timeout { FileHandle.standardError.write(Data("[bench] \(label): not all pushes arrived in \(Int(timeout)) s\n".utf8)); break }
            try await Task.sleep(for: .milliseconds(500))
        }
        guard let object = try await Web.must(.GET, "\(fake)/fake/sent").json() as? [String: Any],
              let all = object["sent"] as? [[String: Any]] else { throw BenchError("the fake platform's /fake/sent has no `sent` list") }
        let pass = all.dropFirst(before)
        let times = try pass.map { message -> Double in
            guard let at = (message["at"] as? NSNumber)?.doubleValue else { throw BenchError("a sent message without `at`") }
            return at
        }.sorted()
        let users = Set(pass.compactMap { $0["touser"] as? String })
        try ResultLines.append(Line(label: label, rate: rate, members: members, arrived: pass.count, duplicates: pass.count - users.count,
                                    span: times.count > 1 ? times[times.count - 1] - times[0] : 0), to: results)
    }
}

struct PushTable: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "push-table", abstract: "Print the push figure.")

    @Option(help: "The passes' result lines.") var results: String

    func run() async throws {
        var table = Table(["pass", "rate limit", "members", "pushes arrived", "duplicates", "seconds first to last", "pushes/s", "against the limit"])
        for p in try ResultLines.read(PushPass.Line.self, from: results) {
            let perSecond = p.span > 0 ? Double(p.arrived - 1) / p.span : 0
            table.add([p.label, p.rate == 0 ? "lifted" : "\(p.rate)/s", "\(p.members)", "\(p.arrived)", "\(p.duplicates)",
                       Format.fixed(p.span, 1), Format.fixed(perSecond, 0),
                       p.rate == 0 ? "" : String(format: "%+.1f%%", 100 * (perSecond - Double(p.rate)) / Double(p.rate))])
        }
        print("")
        print("\(banner("push")): release gateway, scheduler, push worker (2 consumers) and fake platform, one broadcast per pass, load average \(loadAverage())")
        print("")
        print(table.text)
    }
}
