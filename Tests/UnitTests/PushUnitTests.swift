import Contracts
import FlashSales
import Foundation
@testable import Gateway
@testable import Jobs
@testable import Platforms
@testable import PostgresClient
@testable import Pushes
import RedisClient
import Testing

/// The push domain's wire names, its script replies and its arithmetic, with no server.
@Suite("Pushes: statuses, job kinds and error codes on the wire; script replies decoded or refused")
struct PushUnitTests {
    @Test("push and broadcast statuses, counted outcomes and the admin error codes keep their wire names")
    func wireNames() {
        // The table's CHECK constraints (0009_broadcasts.sql) and the admin API spell exactly these.
        #expect(Set(PushStatus.allCases.map(\.rawValue)) == ["pending", "sending", "cancelled", "sent", "delivered", "user_block",
                                                             "system_failed", "unsubscribed", "refused", "deferred", "dead"])
        #expect(Set(BroadcastStatus.allCases.map(\.rawValue)) == ["scheduled", "fanning_out", "fanned_out", "cancelled"])
        #expect(PushStats.Outcome.allCases.map(\.rawValue) == ["sent", "unsubscribed", "user_block", "refused", "deferred", "retried", "dead"])
        #expect(PushStats.Outcome(refusal: .userBlock) == .userBlock && PushStats.Outcome(refusal: .unsubscribed) == .unsubscribed)
        #expect(PushStats.Outcome(refusal: .refused) == .refused)
        let adminCodes: [ErrorCode] = [.invalidTemplate, .unknownTemplate, .templateInUse, .invalidPreset, .invalidTrigger, .unknownTrigger,
                                       .redisUnavailable, .malformedJson, .invalidBroadcast, .unknownBroadcast, .alreadyCancelled, .invalidId,
                                       .invalidStatus, .invalidBefore]
        #expect(Set(adminCodes.map(\.rawValue)) == [
            "invalid_template", "unknown_template", "template_in_use", "invalid_preset", "invalid_trigger", "unknown_trigger",
            "redis_unavailable", "malformed_json", "invalid_broadcast", "unknown_broadcast", "already_cancelled", "invalid_id",
            "invalid_status", "invalid_before",
        ])
        #expect(PushStatus(receipt: "success") == .delivered)
        #expect(PushStatus(receipt: "failed:user block") == .userBlock)
        #expect(PushStatus(receipt: "failed: system failed") == .systemFailed)
        #expect(PushStatus(receipt: "") == .systemFailed)
    }

    @Test("push job kinds and the routing keys an older scheduler published them under; the reminder's event is flash sales' job kind")
    func jobKinds() {
        #expect(PushJobs.kinds.map(\.rawValue) == ["push.retry", "push.send", "push.broadcast"])
        #expect(PushJobs.kinds.map(PushJobs.routingKey) == ["fanflow.push.retry", "fanflow.push.send", "fanflow.push.broadcast"])
        #expect(PushJobs.routingKey(FlashSaleStore.reminderJob) == PushTrigger.paymentReminderEvent)
        let first = PushJobs.attempt("t:e", attempt: 0, at: Date()), third = PushJobs.attempt("t:e", attempt: 2, at: Date())
        #expect((first.kind, first.uniqueKey) == (PushJobs.send, "push.send:t:e"))
        #expect((third.kind, third.uniqueKey) == (PushJobs.retry, "push.retry:t:e:2"))
        #expect(third.payload == ["pushId": .string("t:e"), "pushAttempt": .integer(2)])
    }

    @Test("a job's envelope: the same id on every attempt, its kind as the event's, its payload as attributes")
    func jobEnvelope() {
        let job = Job(id: 42, kind: FlashSaleStore.reminderJob, payload: ["reservationId": "r1", "app": "wx1"], status: .running,
                      dueAt: Date(timeIntervalSince1970: 1_800_000_000), uniqueKey: nil, attempts: 3, maxAttempts: 20, lastError: nil,
                      lockedBy: nil, createdAt: Date(), startedAt: nil, finishedAt: nil)
        let envelope = job.envelope(receivedAt: Date(timeIntervalSince1970: 1_800_000_100))
        #expect(envelope.id == "fanflow:job:42" && envelope.routingKey == PushTrigger.paymentReminderEvent && envelope.app == "wx1")
        #expect(envelope.attributes["reservationId"] == "r1" && envelope.attributes["jobId"] == .integer(42) && envelope.attributes["attempt"] == .integer(3))
        #expect(envelope.occurredAt == job.dueAt)
    }

    @Test("pace.lua's reply: {granted, 0} go, {0, -1} quota spent until Beijing midnight, {0, ms} wait; anything else is refused")
    func paceReplies() throws {
        let now = Date(timeIntervalSince1970: 1_800_000_000)
        func decide(_ reply: RedisReply, wanted: Int = 5) throws -> PushPace.Decision { try PushPace.Decision(reply: reply, wanted: wanted, now: now) }
        #expect(try decide(.array([.integer(3), .integer(0)])) == .go(granted: 3))
        #expect(try decide(.array([.integer(0), .integer(-1)])) == .quotaSpent(resetsAt: BeijingTime.nextMidnight(after: now)))
        #expect(try decide(.array([.integer(0), .integer(37)])) == .wait(37))
        for bad: RedisReply in [.null, .integer(0), .array([.integer(6), .integer(0)]), .array([.integer(0), .integer(0)]),
                                .array([.integer(0), .integer(-2)]), .array([.integer(1)]), .array([.bulk(Array("1".utf8)), .integer(0)]),
                                .array([.integer(0), .integer(Int64.max)]), .status("OK")] {
            #expect(throws: PushScripts.UnexpectedReply.self) { try decide(bad) }
        }
    }

    @Test("the pace line: the first holds, the rest wait in order; the holder's extra tokens go to the first in line, then the next holds")
    func paceLine() async throws {
        let line = PaceLine()
        #expect(await line.enter("wx1") == .hold)
        #expect(await line.enter("wx2") == .hold, "another app has a line of its own")
        var waiters: [Task<PaceLine.Turn, Never>] = []
        for index in 0..<4 {
            waiters.append(Task { await line.enter("wx1") })
            while line.waiting("wx1") < index + 1 { await Task.yield() }  // queued in this order
        }
        line.leave("wx1", granting: 2)
        let (first, second) = (await waiters[0].value, await waiters[1].value)
        #expect(first == .granted && second == .granted)
        #expect(await waiters[2].value == .hold)
        #expect(line.waiting("wx1") == 1)
        line.leave("wx1", granting: 5)  // more than wait: the rest get tokens, and the place is free
        #expect(await waiters[3].value == .granted)
        #expect(line.waiting("wx1") == 0)
        #expect(await line.enter("wx1") == .hold)
    }

    @Test("stats-read.lua's reply: forced, used, then outcome pairs; a short, odd or mistyped reply is refused")
    func statsReplies() throws {
        let day = try PushStats.AppDay(app: "wx1", reply: .array([.integer(2), .integer(7), .bulk(Array("sent".utf8)), .integer(5),
                                                                  .bulk(Array("dead".utf8)), .integer(1)]), dailyQuota: 10)
        #expect(day == PushStats.AppDay(app: "wx1", outcomes: ["sent": 5, "dead": 1], used: 7, quotaLeft: 3, forcedRefreshes: 2))
        #expect(try PushStats.AppDay(app: "wx1", reply: .array([.integer(0), .integer(12)]), dailyQuota: 10).quotaLeft == 0)
        for bad: RedisReply in [.null, .array([.integer(0)]), .array([.integer(0), .integer(1), .bulk(Array("sent".utf8))]),
                                .array([.integer(0), .bulk(Array("1".utf8))]), .array([.integer(0), .integer(1), .integer(3), .integer(4)])] {
            #expect(throws: PushScripts.UnexpectedReply.self) { try PushStats.AppDay(app: "wx1", reply: bad, dailyQuota: 10) }
        }
    }

    @Test("token-lock-release.lua's reply: 1 released, 0 not held; anything else refused")
    func lockReleaseReplies() throws {
        #expect(try AccessTokenBroker.LockRelease(reply: .integer(1)) == .released)
        #expect(try AccessTokenBroker.LockRelease(reply: .integer(0)) == .notHeld)
        #expect(throws: PlatformScripts.UnexpectedReply.self) { try AccessTokenBroker.LockRelease(reply: .null) }
        #expect(throws: PlatformScripts.UnexpectedReply.self) { try AccessTokenBroker.LockRelease(reply: .status("OK")) }
    }

    @Test("the scripts ship as resources and load")
    func scriptsLoad() throws {
        try PushScripts.check()
        try PlatformScripts.check()
        #expect(try PushScripts.named("pace").source.contains("HMGET"))
    }

    @Test("retries wait base × 2^(n-1) × [0.5, 1]; a policy's bounds are clamped")
    func retryPolicy() {
        let policy = PushDelivery.RetryPolicy(maxAttempts: 6, baseBackoffSeconds: 2)
        let now = Date(timeIntervalSince1970: 1_800_000_000)
        #expect(policy.retryDue(next: 1, now: now, random: 1).timeIntervalSince(now) == 2)
        #expect(policy.retryDue(next: 5, now: now, random: 0.5).timeIntervalSince(now) == 16)
        #expect(policy.retryDue(next: 10_000, now: now, random: 1) > now)  // no overflow past 2^30
        #expect(PushDelivery.RetryPolicy(maxAttempts: 0, baseBackoffSeconds: -1).maxAttempts == 1)
    }

    @Test("template values: amounts in yuan for any Int64 without trapping; unknown values absent")
    func templateValues() {
        let recipient = PushStore.Recipient(member: 7, openid: "o1", nickname: "", balance: 10, growth: 0, level: "gold")
        func yuan(_ amount: Int64) -> String? {
            let event = Envelope(id: "e", platform: .fanflow, app: "", kind: "flashsale.reserved", subject: .init(), occurredAt: Date(),
                                 receivedAt: Date(), attributes: ["amount": .integer(amount)])
            return recipient.templateValues(for: event)["amountYuan"]
        }
        #expect(yuan(19800) == "198.00" && yuan(5) == "0.05" && yuan(-150) == "-1.50" && yuan(-5) == "-0.05")
        #expect(yuan(Int64.min) == "-92233720368547758.08" && yuan(Int64.max) == "92233720368547758.07")
        let values = recipient.templateValues(for: Envelope(id: "e", platform: .fanflow, app: "", kind: "x", subject: .init(),
                                                            occurredAt: Date(), receivedAt: Date(), attributes: [:]))
        #expect(values["nickname"] == nil && values["memberId"] == "7" && values["level"] == "gold")
    }

    @Test("row reads: a missing column, a NULL where a value is required and a value of another type throw, naming the column")
    func rowReads() throws {
        let row = PostgresRow(columns: ["id", "note", "flag", "name"], format: .text,
                              cells: [Array("42".utf8), nil, Array("t".utf8), Array("x".utf8)])
        #expect(try row.require("id", as: Int64.self) == 42)
        #expect(try row.require("flag", as: Bool.self))
        #expect(try row.optional("note", as: String.self) == nil)
        for read in [{ _ = try row.require("missing", as: Int.self) }, { _ = try row.require("note", as: String.self) },
                     { _ = try row.require("name", as: Int.self) }, { _ = try row.optional("missing", as: String.self) }] as [() throws -> Void] {
            do {
                try read()
                Issue.record("read without an error")
            } catch let error as PostgresError {
                #expect(error.code == .column, "\(error)")
            } catch {
                Issue.record("not a PostgresError: \(error)")
            }
        }
        #expect(throws: PostgresError.self) { try row.require("flag", as: Double.self) }
    }
}
