import Foundation
import PostgresClient

/// Working days as a Chinese business counts them: Monday to Friday, except declared public
/// holidays, plus declared make-up workdays (调休) that fall on a weekend. "5 working days after"
/// a time is the same wall-clock time on the fifth working day after its day, in the zone.
public struct BusinessCalendar: Sendable, Equatable {
    /// A calendar day as `yyyy-MM-dd`, the form the admin API and the table use.
    public typealias Day = String

    public enum Kind: String, Sendable, Codable, CaseIterable {
        /// A weekday off.
        case holiday
        /// A weekend day worked to make up for a holiday.
        case workday
    }

    public let timeZone: TimeZone
    public let exceptions: [Day: Kind]

    public init(timeZone: TimeZone, exceptions: [Day: Kind] = [:]) {
        self.timeZone = timeZone
        self.exceptions = exceptions
    }

    var calendar: Calendar {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = timeZone
        return calendar
    }

    public static func day(_ date: Date, in calendar: Calendar) -> Day {
        let parts = calendar.dateComponents([.year, .month, .day], from: date)
        return String(format: "%04d-%02d-%02d", parts.year ?? 0, parts.month ?? 0, parts.day ?? 0)
    }

    /// Whether `yyyy-MM-dd` is a real date; the admin API refuses anything else.
    public static func isValidDay(_ text: String) -> Bool {
        let parts = text.split(separator: "-")
        guard text.count == 10, parts.count == 3, let year = Int(parts[0]), let month = Int(parts[1]), let day = Int(parts[2]),
              (1970...2200).contains(year) else { return false }
        var utc = Calendar(identifier: .gregorian)
        utc.timeZone = TimeZone(identifier: "UTC") ?? utc.timeZone
        guard let date = utc.date(from: DateComponents(year: year, month: month, day: day)) else { return false }
        let back = utc.dateComponents([.year, .month, .day], from: date)
        return back.year == year && back.month == month && back.day == day
    }

    public func isWorkingDay(_ date: Date) -> Bool {
        let calendar = self.calendar
        switch exceptions[Self.day(date, in: calendar)] {
        case .holiday?: return false
        case .workday?: return true
        case nil:
            let weekday = calendar.component(.weekday, from: date)
            return weekday != 1 && weekday != 7
        }
    }

    /// The same wall-clock time on the `count`-th working day after `date`'s day (the day itself
    /// never counts, worked or not).
    public func adding(workingDays count: Int, to date: Date) -> Date {
        let calendar = self.calendar
        var current = date
        var left = max(0, count)
        // Bounded: even a year of holidays cannot hold more than 366 days between working days.
        var guardDays = 366 * max(1, count)
        while left > 0, guardDays > 0, let next = calendar.date(byAdding: .day, value: 1, to: current) {
            current = next
            guardDays -= 1
            if isWorkingDay(current) { left -= 1 }
        }
        return current
    }
}

/// The calendar's declared days, in table `business_days`.
public struct BusinessCalendarStore: Sendable {
    let database: PostgresPool

    public init(database: PostgresPool) { self.database = database }

    public struct Entry: Sendable, Equatable {
        public let day: BusinessCalendar.Day
        public let kind: BusinessCalendar.Kind
        public let name: String
        public init(day: BusinessCalendar.Day, kind: BusinessCalendar.Kind, name: String) {
            self.day = day
            self.kind = kind
            self.name = name
        }
    }

    public func load(timeZone: TimeZone) async throws -> BusinessCalendar {
        var exceptions: [BusinessCalendar.Day: BusinessCalendar.Kind] = [:]
        for entry in try await list() { exceptions[entry.day] = entry.kind }
        return BusinessCalendar(timeZone: timeZone, exceptions: exceptions)
    }

    public func list(from: BusinessCalendar.Day? = nil, to: BusinessCalendar.Day? = nil) async throws -> [Entry] {
        let rows = try await database.query("""
            SELECT to_char(day, 'YYYY-MM-DD') AS day, kind, name FROM business_days
            WHERE ($1::date IS NULL OR day >= $1::date) AND ($2::date IS NULL OR day <= $2::date) ORDER BY day
            """, [from, to])
        return try rows.map { row throws(PostgresRowError) in
            let kindText = try row.requiredString("kind")
            guard let kind = BusinessCalendar.Kind(rawValue: kindText) else { throw PostgresRowError(column: "kind", problem: .malformed(kindText)) }
            return Entry(day: try row.requiredString("day"), kind: kind, name: try row.optionalString("name") ?? "")
        }
    }

    public func put(_ entry: Entry) async throws {
        try await database.query("""
            INSERT INTO business_days (day, kind, name) VALUES ($1::date, $2, $3)
            ON CONFLICT (day) DO UPDATE SET kind = excluded.kind, name = excluded.name, updated_at = now()
            """, [entry.day, entry.kind.rawValue, entry.name])
    }

    /// Returns whether the day was declared.
    public func delete(_ day: BusinessCalendar.Day) async throws -> Bool {
        try await database.query("DELETE FROM business_days WHERE day = $1::date", [day]).affectedRows > 0
    }
}
