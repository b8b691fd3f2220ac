@testable import FlashSales
@testable import PostgresClient
import RedisClient
import Testing

/// The flash-sale scripts' replies are read by one typed decoder each: anything else is a loud
/// error naming the script, never a refusal or a success.
@Suite("Flash-sale script replies")
struct FlashSaleScriptReplyTests {
    static func bulk(_ text: String) -> RedisReply { .bulk(Array(text.utf8)) }

    @Test("reserve: refusals, new and confirmed answers; the old colon text, unknown refusals and short arrays fail")
    func reserve() throws {
        #expect(try ScriptReply.Reserve.decode(.array([Self.bulk("refused"), Self.bulk("sold_out")])) == .refused(.soldOut))
        #expect(try ScriptReply.Reserve.decode(.array([Self.bulk("refused"), Self.bulk("not_eligible")])) == .refused(.notEligible))
        #expect(try ScriptReply.Reserve.decode(.array([Self.bulk("pending"), Self.bulk("abc123"), .integer(1_800_000_000_000), .integer(2)]))
                == .answer(confirmed: false, reservationID: "abc123", payByMilliseconds: 1_800_000_000_000, quantity: 2))
        #expect(try ScriptReply.Reserve.decode(.array([Self.bulk("ok"), Self.bulk("abc123"), .integer(5), .integer(1)]))
                == .answer(confirmed: true, reservationID: "abc123", payByMilliseconds: 5, quantity: 1))
        for unread: RedisReply in [
            Self.bulk("pending:abc123:1800000000000:1"),  // the reply before it was typed
            Self.bulk("err:sold_out"),
            .array([Self.bulk("refused"), Self.bulk("out_of_luck")]),
            .array([Self.bulk("pending"), Self.bulk("abc123"), .integer(5)]),
            .array([Self.bulk("pending"), Self.bulk("abc123"), Self.bulk("5"), .integer(1)]),
            .array([Self.bulk("pending"), Self.bulk("abc123"), .integer(5), .integer(0)]),
            .array([Self.bulk("unreadable"), Self.bulk("garbage")]),
            .null, .integer(1),
        ] {
            #expect(throws: FlashSaleScriptError.self, "\(unread)") { try ScriptReply.Reserve.decode(unread) }
        }
        let error = try #require(throws: FlashSaleScriptError.self) { try ScriptReply.Reserve.decode(.integer(7)) }
        #expect(error.script == "reserve" && error.description.contains("reserve.lua"))
    }

    @Test("hold: lost, changed and unchanged with each state; none only when unchanged; anything else fails")
    func hold() throws {
        #expect(try ScriptReply.Hold.decode(.array([Self.bulk("lost")])) == .lost)
        for state in FlashSaleStock.HoldState.allCases {
            #expect(try ScriptReply.Hold.decode(.array([Self.bulk("changed"), Self.bulk(state.rawValue)])) == .change(won: true, state: state))
            #expect(try ScriptReply.Hold.decode(.array([Self.bulk("unchanged"), Self.bulk(state.rawValue)])) == .change(won: false, state: state))
        }
        #expect(try ScriptReply.Hold.decode(.array([Self.bulk("unchanged"), Self.bulk("none")])) == .change(won: false, state: nil))
        for unread: RedisReply in [
            Self.bulk("1:held"), Self.bulk("lost"),
            .array([Self.bulk("changed"), Self.bulk("none")]),
            .array([Self.bulk("changed"), Self.bulk("shipped")]),
            .array([Self.bulk("lost"), Self.bulk("held")]),
            .array([]),
        ] {
            #expect(throws: FlashSaleScriptError.self, "\(unread)") { try ScriptReply.Hold.decode(unread) }
        }
    }

    @Test("load, lend, credit and drained read their integers and nothing else")
    func integers() throws {
        #expect(try ScriptReply.load(.integer(1)) == true)
        #expect(try ScriptReply.load(.integer(-1)) == false)
        #expect(throws: FlashSaleScriptError.self) { try ScriptReply.load(.integer(0)) }
        #expect(throws: FlashSaleScriptError.self) { try ScriptReply.load(Self.bulk("1")) }
        #expect(try ScriptReply.lend(.integer(0)) == 0)
        #expect(try ScriptReply.lend(.integer(12)) == 12)
        #expect(throws: FlashSaleScriptError.self) { try ScriptReply.lend(.integer(-1)) }
        #expect(throws: FlashSaleScriptError.self) { try ScriptReply.lend(.null) }
        #expect(try ScriptReply.credit(.integer(1)) == true)
        #expect(try ScriptReply.credit(.integer(0)) == false)
        #expect(throws: FlashSaleScriptError.self) { try ScriptReply.credit(.integer(2)) }
        #expect(try ScriptReply.drained(.integer(1)) == true)
        #expect(try ScriptReply.drained(.integer(0)) == false)
        #expect(throws: FlashSaleScriptError.self) { try ScriptReply.drained(.status("OK")) }
    }

    @Test("order statuses keep the wire names of flash_orders.status")
    func orderStatuses() {
        #expect(OrderStatus.allCases.map(\.rawValue) == ["reserved", "paid", "expired", "refund_required", "cancelled"])
        #expect(OrderStatus.allCases.filter(\.holdsUnits) == [.reserved, .paid])
        #expect(FlashSaleStock.HoldState.allCases.map(\.rawValue) == ["held", "confirmed", "ordered", "released", "paid"])
    }

    @Test("a required cell that is absent, NULL or unreadable fails with its column's name")
    func requiredColumns() throws {
        let row = PostgresRow(columns: ["n", "t", "b", "f", "nothing"], format: .text,
                              cells: [Array("42".utf8), Array("text".utf8), Array("t".utf8), Array("1.5".utf8), nil])
        #expect(try row.requiredInt("n") == 42)
        #expect(try row.requiredInt64("n") == 42)
        #expect(try row.requiredString("t") == "text")
        #expect(try row.requiredBool("b") == true)
        #expect(try row.requiredDouble("f") == 1.5)
        #expect(throws: PostgresRowError(column: "missing", problem: .missingColumn)) { try row.requiredInt("missing") }
        #expect(throws: PostgresRowError(column: "nothing", problem: .null)) { try row.requiredInt("nothing") }
        #expect(throws: PostgresRowError(column: "nothing", problem: .null)) { try row.requiredString("nothing") }
        #expect(throws: PostgresRowError(column: "t", problem: .malformed("text"))) { try row.requiredInt("t") }
        #expect(throws: PostgresRowError(column: "t", problem: .malformed("text"))) { try row.requiredDouble("t") }
    }
}
