import ArgumentParser
import Foundation

/// Reservation attempts for `scripts/bench faults` (`fault-load` reads them): one line per attempt,
/// `token<TAB>requestId`, members in turn so each attempt is a different member's while there are
/// members left, every request id distinct (none is taken for a retry). Tokens are minted with the
/// gateway's member-token key, as the brand's server would mint them.
struct FlashSaleRequests: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "flash-sale-requests", abstract: "Write reservation attempts with member tokens.")

    @Option(help: "The gateway's FANFLOW_SECRET_KEY (member tokens are signed with a key derived from it).") var secret: String
    @Option(help: "The first member id.") var firstMember: Int64
    @Option(help: "How many members (consecutive ids).") var members: Int
    @Option(help: "How many attempts.") var count: Int
    @Option(help: "Output file.") var output: String

    func validate() throws {
        guard members >= 1, count >= 1 else { throw ValidationError("--members and --count must be at least 1") }
    }

    func run() async throws {
        let tokens = try Signing.MemberTokens(secretKey: secret)
        let expires = Date().addingTimeInterval(3600)
        let minted = (0..<Int64(members)).map { tokens.mint(member: firstMember + $0, expiresAt: expires) }
        var out = ""
        out.reserveCapacity(count * 120)
        let run = UUID().uuidString.prefix(8)
        for n in 0..<count {
            out += minted[n % members] + "\t" + "\(run)-\(n)\n"
        }
        try Data(out.utf8).write(to: URL(fileURLWithPath: output))
    }
}
