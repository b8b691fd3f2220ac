import Foundation

/// The natural day, ISO week (Monday first) and month an instant falls in, in the program's zone.
/// Caps and daily frequencies are keyed by these, computed from the event's own time: a check-in
/// at 23:59 Beijing time and one at 00:01 are on two days, whatever the worker's clock says.
public struct NaturalPeriods: Sendable, Equatable {
    public let day: String    // 20261201
    public let week: String   // 2026W49
    public let month: String  // 202612

    public init(day: String, week: String, month: String) {
        self.day = day
        self.week = week
        self.month = month
    }
}

/// Computes ``NaturalPeriods`` in one zone. A value type holding its calendar, built once per worker.
public struct PeriodCalendar: Sendable {
    private let calendar: Calendar

    public init(timeZone: TimeZone) {
        var calendar = Calendar(identifier: .iso8601)
        calendar.timeZone = timeZone
        calendar.firstWeekday = 2
        calendar.minimumDaysInFirstWeek = 4
        self.calendar = calendar
    }

    public var timeZone: TimeZone { calendar.timeZone }

    public func periods(of date: Date) -> NaturalPeriods {
        let c = calendar.dateComponents([.year, .month, .day, .yearForWeekOfYear, .weekOfYear], from: date)
        func pad(_ value: Int?, _ width: Int) -> String {
            let text = String(value ?? 0)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return NaturalPeriods(day: pad(c.year, 4) + pad(c.month, 2) + pad(c.day, 2),
                              week: pad(c.yearForWeekOfYear, 4) + "W" + pad(c.weekOfYear, 2),
                              month: pad(c.year, 4) + pad(c.month, 2))
    }

    /// The start of the natural day `date` falls in.
    public func startOfDay(_ date: Date) -> Date { calendar.startOfDay(for: date) }
}
