import Foundation

/// Time as the platforms and members read it: Beijing time (UTC+8, no daylight saving). Quotas
/// reset at its midnight, Alipay's gateway takes its timestamps, and messages show it.
public enum BeijingTime {
    static let calendar: Calendar = {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "Asia/Shanghai") ?? TimeZone(secondsFromGMT: 8 * 3600) ?? .current
        return calendar
    }()

    /// The next midnight in Beijing after `date`: when the platforms' daily quotas reset.
    public static func nextMidnight(after date: Date) -> Date {
        calendar.nextDate(after: date, matching: DateComponents(hour: 0, minute: 0, second: 0), matchingPolicy: .nextTime) ?? date
    }

    /// `yyyyMMdd`, a key per quota day.
    public static func day(_ date: Date) -> String {
        let p = calendar.dateComponents([.year, .month, .day], from: date)
        return String(format: "%04d%02d%02d", p.year ?? 0, p.month ?? 0, p.day ?? 0)
    }

    /// `yyyy-MM-dd HH:mm`, as members read it in a message (no formatter made per member of a broadcast).
    public static func minutes(_ date: Date) -> String {
        let p = calendar.dateComponents([.year, .month, .day, .hour, .minute], from: date)
        return String(format: "%04d-%02d-%02d %02d:%02d", p.year ?? 0, p.month ?? 0, p.day ?? 0, p.hour ?? 0, p.minute ?? 0)
    }

    /// `yyyy-MM-dd HH:mm:ss`, Alipay's `timestamp` parameter.
    public static func seconds(_ date: Date) -> String {
        let p = calendar.dateComponents([.year, .month, .day, .hour, .minute, .second], from: date)
        return String(format: "%04d-%02d-%02d %02d:%02d:%02d", p.year ?? 0, p.month ?? 0, p.day ?? 0, p.hour ?? 0, p.minute ?? 0, p.second ?? 0)
    }
}
