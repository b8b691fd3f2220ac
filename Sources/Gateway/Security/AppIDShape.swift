/// The one rule for an app id, wherever one arrives: 1-64 characters of `[A-Za-z0-9_.-]`. The
/// admin API registers nothing else, so an id outside it cannot name an app and is refused before
/// any lookup (a NUL would otherwise reach libpq; 5,000 characters would be hashed and cached).
/// Platforms' own ids fit: WeChat `wx` + 16 hex, Alipay and Weibo and QQ digits.
enum AppIDShape {
    static let rule = "1-64 characters of [A-Za-z0-9_.-]"

    static func isValid(_ id: some StringProtocol) -> Bool {
        (1...64).contains(id.utf8.count) && id.utf8.allSatisfy(isByte)
    }

    static func isByte(_ byte: UInt8) -> Bool {
        (byte >= 48 && byte <= 57) || (byte >= 65 && byte <= 90) || (byte >= 97 && byte <= 122) || byte == 95 || byte == 45 || byte == 46
    }
}
