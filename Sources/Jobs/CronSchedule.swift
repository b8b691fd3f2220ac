import Foundation

/// A five-field cron expression (`minute hour day-of-month month day-of-week`) read in a time zone.
///
/// Each field takes `*`, numbers, ranges `a-b`, steps `*/n` and `a-b/n`, and comma lists; the
/// day of week is 0-7 (0 and 7 are Sunday). As in Vixie cron, when both day fields are restricted
/// a day matches if either does. Fire times are wall-clock times in the zone: a time the zone
/// skips (a daylight-saving gap) fires at the first instant after the gap, and a time the zone
/// repeats (the fall-back hour) fires once, at its first occurrence.
public struct CronSchedule: Sendable, Equatable, CustomStringConvertible {
    public let expression: String
    public let timeZone: TimeZone
    let minutes: Set<Int>
    let hours: Set<Int>
    let daysOfMonth: Set<Int>
    let months: Set<Int>
    let daysOfWeek: Set<Int>
    let dayOfMonthRestricted: Bool
    let dayOfWeekRestricted: Bool

    public struct ParseError: Error, Sendable, Equatable, CustomStringConvertible {
        public let description: String
    }

    public init(_ expression: String, timeZone: TimeZone) throws(ParseError) {
        let fields = expression.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        guard fields.count == 5 else {
            throw ParseError(description: "a cron expression has 5 fields (minute hour day month weekday), got \(fields.count) in '\(expression)'")
        }
        self.expression = expression
        self.timeZone = timeZone
        minutes = try Self.field(fields[0], name: "minute", range: 0...59)
        hours = try Self.field(fields[1], name: "hour", range: 0...23)
        daysOfMonth = try Self.field(fields[2], name: "day of month", range: 1...31)
        months = try Self.field(fields[3], name: "month", range: 1...12)
        daysOfWeek = Set(try Self.field(fields[4], name: "day of week", range: 0...7).map { $0 % 7 })
        dayOfMonthRestricted = !fields[2].hasPrefix("*")
        dayOfWeekRestricted = !fields[4].hasPrefix("*")
    }

    public var description: String { "\(expression) (\(timeZone.identifier))" }

    static func field(_ text: String, name: String, range: ClosedRange<Int>) throws(ParseError) -> Set<Int> {
        var values = Set<Int>()
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let pieces = part.split(separator: "/", omittingEmptySubsequences: false)
            guard pieces.count <= 2, let base = pieces.first, !base.isEmpty else {
                throw ParseError(description: "\(name): cannot read '\(part)'")
            }
            var step = 1
            if pieces.count == 2 {
                guard let number = Int(pieces[1]), number > 0 else { throw ParseError(description: "\(name): bad step in '\(part)'") }
                step = number
            }
            var bounds: ClosedRange<Int>
            if base == "*" {
                bounds = range
            } else {
                let ends = base.split(separator: "-", omittingEmptySubsequences: false)
                guard (1...2).contains(ends.count), let low = Int(ends[0]), let high = Int(ends[ends.count - 1]) else {
                    throw ParseError(description: "\(name): cannot read '\(part)'")
                }
                guard range.contains(low), range.contains(high), low <= high else {
                    throw ParseError(description: "\(name): '\(part)' is outside \(range.lowerBound)-\(range.upperBound)")
                }
                // `5/15` means from 5 to the end, every 15.
                bounds = low...(ends.count == 1 && pieces.count == 2 ? range.upperBound : high)
            }
            values.formUnion(stride(from: bounds.lowerBound, through: bounds.upperBound, by: step))
        }
        return values
    }

    func matchesDay(month: Int, day: Int, weekday: Int) -> Bool {
        guard months.contains(month) else { return false }
        let byMonthDay = daysOfMonth.contains(day), byWeekday = daysOfWeek.contains(weekday)
        switch (dayOfMonthRestricted, dayOfWeekRestricted) {
        case (true, true): return byMonthDay || byWeekday
        case (true, false): return byMonthDay
        case (false, true): return byWeekday
        case (false, false): return true
        }
    }

    /// The first fire time strictly after `date`, or nil if none comes within five years
    /// (`0 0 30 2 *` never fires).
    public func next(after date: Date) -> Date? {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = timeZone
        let start = calendar.dateComponents([.year, .month, .day], from: date)
        guard var day = calendar.date(from: DateComponents(year: start.year, month: start.month, day: start.day, hour: 12)) else {
            return nil
        }
        let sortedHours = hours.sorted(), sortedMinutes = minutes.sorted()
        for _ in 0..<(366 * 5) {
            let parts = calendar.dateComponents([.year, .month, .day, .weekday], from: day)
            if let year = parts.year, let month = parts.month, let dayOfMonth = parts.day, let weekday = parts.weekday,
               matchesDay(month: month, day: dayOfMonth, weekday: weekday - 1) {
                for hour in sortedHours {
                    for minute in sortedMinutes {
                        guard let fire = wallTime(year: year, month: month, day: dayOfMonth, hour: hour, minute: minute,
                                                  calendar: calendar), fire > date else { continue }
                        return fire
                    }
                }
            }
            guard let following = calendar.date(byAdding: .day, value: 1, to: day) else { return nil }
            day = following
        }
        return nil
    }

    /// The instant a wall-clock time names in the zone: the first of two in a repeated hour, the
    /// end of the gap for a skipped one.
    func wallTime(year: Int, month: Int, day: Int, hour: Int, minute: Int, calendar: Calendar) -> Date? {
        guard let midnight = calendar.date(from: DateComponents(year: year, month: month, day: day, hour: 0, minute: 0)) else {
            return nil
        }
        // Try the standard offset before and after any transition of the day; keep the earliest
        // instant whose wall clock reads exactly hour:minute.
        let wanted = hour * 60 + minute
        var candidates: [Date] = []
        for probe in [midnight, midnight.addingTimeInterval(36 * 3600)] {
            let offset = timeZone.secondsFromGMT(for: probe)
            let local = calendar.dateComponents([.year, .month, .day], from: midnight)
            guard let y = local.year, let m = local.month, let d = local.day else { continue }
            var utc = Calendar(identifier: .gregorian)
            utc.timeZone = TimeZone(identifier: "UTC") ?? timeZone
            guard let wallAsUTC = utc.date(from: DateComponents(year: y, month: m, day: d, hour: hour, minute: minute)) else { continue }
            let instant = wallAsUTC.addingTimeInterval(-Double(offset))
            let reading = calendar.dateComponents([.year, .month, .day, .hour, .minute], from: instant)
            if reading.year == y, reading.month == m, reading.day == d, (reading.hour ?? -1) * 60 + (reading.minute ?? -1) == wanted {
                candidates.append(instant)
            }
        }
        if let first = candidates.min() { return first }
        // Skipped by a gap: the first instant after it, which reads later than the wanted time.
        guard let transition = timeZone.nextDaylightSavingTimeTransition(after: midnight) else { return nil }
        return transition
    }
}
