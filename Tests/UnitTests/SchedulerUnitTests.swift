import Contracts
import Foundation
import Loyalty
@testable import Jobs
import Testing

@Suite("Scheduler: cron in a time zone, working days, retry backoff")
struct SchedulerUnitTests {
    static let newYork = TimeZone(identifier: "America/New_York") ?? .current
    static let shanghai = TimeZone(identifier: "Asia/Shanghai") ?? .current

    static func time(_ text: String) -> Date { RFC3339.parse(text) ?? Date(timeIntervalSince1970: 0) }

    @Test("fields: lists, ranges, steps, Sunday as 0 or 7")
    func parsesFields() throws {
        let cron = try CronSchedule("0,30 9-17/4 */10 1-3 7", timeZone: Self.shanghai)
        #expect(cron.minutes == [0, 30])
        #expect(cron.hours == [9, 13, 17])
        #expect(cron.daysOfMonth == [1, 11, 21, 31])
        #expect(cron.months == [1, 2, 3])
        #expect(cron.daysOfWeek == [0])
        #expect(try CronSchedule("5/20 * * * *", timeZone: Self.shanghai).minutes == [5, 25, 45])
    }

    @Test("bad expressions are refused, naming the field", arguments: [
        ("* * * *", "5 fields"), ("60 * * * *", "minute"), ("* 24 * * *", "hour"), ("* * 0 * *", "day of month"),
        ("* * * 13 *", "month"), ("* * * * 8", "day of week"), ("*/0 * * * *", "step"), ("a * * * *", "minute"),
        ("5-1 * * * *", "minute"), (", * * * *", "minute"),
    ])
    func refusesBadExpressions(expression: String, mentions: String) {
        #expect(throws: CronSchedule.ParseError.self) { try CronSchedule(expression, timeZone: Self.shanghai) }
        do { _ = try CronSchedule(expression, timeZone: Self.shanghai) } catch {
            #expect(error.description.contains(mentions), "\(error.description)")
        }
    }

    @Test("a monthly job fires at midnight of the 1st in the configured zone, not in UTC")
    func monthBoundary() throws {
        let cron = try CronSchedule("0 0 1 * *", timeZone: Self.shanghai)
        let fire = cron.next(after: Self.time("2026-12-15T00:00:00+08:00"))
        #expect(fire == Self.time("2027-01-01T00:00:00+08:00"))
        #expect(fire == Self.time("2026-12-31T16:00:00Z"))
        #expect(cron.next(after: Self.time("2027-01-01T00:00:00+08:00")) == Self.time("2027-02-01T00:00:00+08:00"))
        // The same expression read in UTC fires eight hours later.
        #expect(try CronSchedule("0 0 1 * *", timeZone: TimeZone(identifier: "UTC") ?? .current)
            .next(after: Self.time("2026-12-15T00:00:00+08:00")) == Self.time("2027-01-01T00:00:00Z"))
    }

    @Test("spring forward: a time in the skipped hour fires when the gap ends, once")
    func springForward() throws {
        // New York skipped 02:00-03:00 on 2026-03-08.
        let cron = try CronSchedule("30 2 * * *", timeZone: Self.newYork)
        let first = cron.next(after: Self.time("2026-03-07T12:00:00-05:00"))
        #expect(first == Self.time("2026-03-08T03:00:00-04:00"))
        #expect(cron.next(after: try #require(first)) == Self.time("2026-03-09T02:30:00-04:00"))
        // A time after the gap keeps its wall clock, now in daylight time.
        #expect(try CronSchedule("0 9 * * *", timeZone: Self.newYork).next(after: Self.time("2026-03-08T00:00:00-05:00"))
            == Self.time("2026-03-08T09:00:00-04:00"))
    }

    @Test("fall back: a time in the repeated hour fires once, at its first occurrence")
    func fallBack() throws {
        // New York repeated 01:00-02:00 on 2026-11-01.
        let cron = try CronSchedule("30 1 * * *", timeZone: Self.newYork)
        let first = try #require(cron.next(after: Self.time("2026-10-31T12:00:00-04:00")))
        #expect(first == Self.time("2026-11-01T01:30:00-04:00"))
        #expect(cron.next(after: first) == Self.time("2026-11-02T01:30:00-05:00"))
    }

    @Test("both day fields restricted: either matches (Vixie cron)")
    func dayFields() throws {
        // The 13th, or any Friday.
        let cron = try CronSchedule("0 12 13 * 5", timeZone: Self.shanghai)
        #expect(cron.next(after: Self.time("2026-12-01T00:00:00+08:00")) == Self.time("2026-12-04T12:00:00+08:00"))
        #expect(cron.next(after: Self.time("2026-12-11T13:00:00+08:00")) == Self.time("2026-12-13T12:00:00+08:00"))
        #expect(try CronSchedule("0 0 30 2 *", timeZone: Self.shanghai).next(after: Self.time("2026-01-01T00:00:00Z")) == nil)
    }

    /// China's 2025 National Day and Mid-Autumn holiday: 1-8 October off, Sunday 28 September and
    /// Saturday 11 October worked instead.
    static let nationalDay2025 = BusinessCalendar(timeZone: shanghai, exceptions: [
        "2025-09-28": .workday, "2025-10-01": .holiday, "2025-10-02": .holiday, "2025-10-03": .holiday, "2025-10-04": .holiday,
        "2025-10-05": .holiday, "2025-10-06": .holiday, "2025-10-07": .holiday, "2025-10-08": .holiday, "2025-10-11": .workday,
    ])

    @Test("5 working days across the National Day holiday, with its make-up workdays")
    func workingDays() {
        let calendar = Self.nationalDay2025
        // Tuesday 30 Sep: 9, 10, 11 (a Saturday worked), 13, 14 October.
        #expect(calendar.adding(workingDays: 5, to: Self.time("2025-09-30T10:00:00+08:00")) == Self.time("2025-10-14T10:00:00+08:00"))
        // Friday 26 Sep: 28 (a Sunday worked), 29, 30 September, 9, 10 October.
        #expect(calendar.adding(workingDays: 5, to: Self.time("2025-09-26T18:00:00+08:00")) == Self.time("2025-10-10T18:00:00+08:00"))
        // Without the holidays it would be the 7th.
        #expect(BusinessCalendar(timeZone: Self.shanghai).adding(workingDays: 5, to: Self.time("2025-09-30T10:00:00+08:00"))
            == Self.time("2025-10-07T10:00:00+08:00"))
        // Days are counted in the zone: 23:30 UTC on the 30th is 07:30 on 1 October in Shanghai, so
        // one working day later is 07:30 on 9 October there (counted in UTC it would be a day later).
        #expect(calendar.adding(workingDays: 1, to: Self.time("2025-09-30T23:30:00Z")) == Self.time("2025-10-09T07:30:00+08:00"))
        #expect(!calendar.isWorkingDay(Self.time("2025-10-03T12:00:00+08:00")))
        #expect(calendar.isWorkingDay(Self.time("2025-10-11T12:00:00+08:00")))
        #expect(BusinessCalendar.isValidDay("2025-10-11"))
        #expect(!BusinessCalendar.isValidDay("2025-02-30"))
        #expect(!BusinessCalendar.isValidDay("2025-1-01"))
    }

    @Test("a post reviewed for 5 working days matures on the fifth working day; the rule refuses both kinds of maturity")
    func reviewedRule() throws {
        let json = #"{"kinds":["community.post"],"points":2,"growth":5,"maturesAfterWorkingDays":5,"reason":"post reviewed"}"#
        let rule = try PointsRule.parse(code: "post", json: Array(json.utf8))
        #expect(rule.maturity(of: Self.time("2025-09-30T10:00:00+08:00"), calendar: Self.nationalDay2025)
            == Self.time("2025-10-14T10:00:00+08:00"))
        #expect(PointsRule(code: "now", kinds: ["community.post"], points: 1, growth: 1, reason: "now")
            .maturity(of: Self.time("2025-09-30T10:00:00+08:00"), calendar: Self.nationalDay2025) == nil)
        let both = #"{"kinds":["community.post"],"points":2,"growth":5,"maturesAfterDays":3,"maturesAfterWorkingDays":5,"reason":"x"}"#
        #expect(throws: RuleProblem("give maturesAfterDays or maturesAfterWorkingDays, not both")) {
            try PointsRule.parse(code: "post", json: Array(both.utf8))
        }
    }

    @Test("retry delays grow exponentially, stay within half to all of the step, and are capped")
    func backoff() {
        let backoff = JobBackoff(base: .seconds(5), maximum: .seconds(3600))
        #expect(backoff.delay(afterAttempt: 1, random: 1) == .seconds(5))
        #expect(backoff.delay(afterAttempt: 1, random: 0) == .milliseconds(2500))
        #expect(backoff.delay(afterAttempt: 4, random: 1) == .seconds(40))
        #expect(backoff.delay(afterAttempt: 30, random: 1) == .seconds(3600))
        let spread = Set((0..<50).map { _ in backoff.delay(afterAttempt: 3) })
        #expect(spread.count > 10)
        #expect(spread.allSatisfy { $0 >= .seconds(10) && $0 <= .seconds(20) })
    }
}
