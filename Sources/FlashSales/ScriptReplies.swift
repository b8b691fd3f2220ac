import RedisClient

/// A flash-sale script answered something this version does not read: a script and its reader
/// out of step (a deploy that shipped one without the other), never a decision. It names the
/// script and carries the reply, and is never taken for a refusal or a success.
public struct FlashSaleScriptError: Error, Sendable, Equatable, CustomStringConvertible {
    public let script: String
    public let reply: String

    init(_ script: String, _ reply: RedisReply) {
        self.script = script
        self.reply = "\(reply)"
    }

    public var description: String { "the flash-sale script \(script).lua answered \(reply), which this version does not read" }
}

/// The typed replies of the scripts in `Resources/*.lua`, one decoder per script. Error replies
/// are not theirs to read: ``FlashSaleStock`` turns those into `RedisError(.server, …)` first,
/// so a consumer still tells a refused write (`WRONGTYPE`) from an outage.
enum ScriptReply {
    /// reserve.lua: `{"refused", <refusal>}`, or the request's answer `{"pending"|"ok", <id>,
    /// <pay-by ms>, <quantity>}` (`pending` until the hold is confirmed, ordered or paid).
    enum Reserve: Equatable {
        case refused(FlashSaleStock.Refusal)
        case answer(confirmed: Bool, reservationID: String, payByMilliseconds: Int64, quantity: Int)

        static func decode(_ reply: RedisReply) throws(FlashSaleScriptError) -> Reserve {
            guard let items = reply.array, let head = items.first?.string else { throw FlashSaleScriptError("reserve", reply) }
            switch (head, items.count) {
            case ("refused", 2):
                guard let refusal = items[1].string.flatMap(FlashSaleStock.Refusal.init(rawValue:)) else {
                    throw FlashSaleScriptError("reserve", reply)
                }
                return .refused(refusal)
            case ("pending", 4), ("ok", 4):
                guard case .integer(let payBy) = items[2], case .integer(let quantity) = items[3], quantity > 0, quantity <= Int64(Int32.max),
                      let id = items[1].string, !id.isEmpty else {
                    throw FlashSaleScriptError("reserve", reply)
                }
                return .answer(confirmed: head == "ok", reservationID: id, payByMilliseconds: payBy, quantity: Int(quantity))
            default:
                throw FlashSaleScriptError("reserve", reply)
            }
        }
    }

    /// hold.lua: `{"lost"}` when Redis no longer holds the campaign, else `{"changed"|"unchanged",
    /// <state>}` with the state after the call (`none`: no record, only when unchanged).
    enum Hold: Equatable {
        case lost
        case change(won: Bool, state: FlashSaleStock.HoldState?)

        static func decode(_ reply: RedisReply) throws(FlashSaleScriptError) -> Hold {
            guard let items = reply.array, let head = items.first?.string else { throw FlashSaleScriptError("hold", reply) }
            if head == "lost", items.count == 1 { return .lost }
            guard head == "changed" || head == "unchanged", items.count == 2, let text = items[1].string else {
                throw FlashSaleScriptError("hold", reply)
            }
            if text == "none", head == "unchanged" { return .change(won: false, state: nil) }
            guard let state = FlashSaleStock.HoldState(rawValue: text) else { throw FlashSaleScriptError("hold", reply) }
            return .change(won: head == "changed", state: state)
        }
    }

    /// load.lua: 1 loaded, -1 refused (the new stock is below what the stripe already holds).
    static func load(_ reply: RedisReply) throws(FlashSaleScriptError) -> Bool {
        switch reply {
        case .integer(1): return true
        case .integer(-1): return false
        default: throw FlashSaleScriptError("load", reply)
        }
    }

    /// lend.lua: the units the donor stripe gave up, 0 or more.
    static func lend(_ reply: RedisReply) throws(FlashSaleScriptError) -> Int64 {
        guard case .integer(let units) = reply, units >= 0 else { throw FlashSaleScriptError("lend", reply) }
        return units
    }

    /// credit.lua: 1 credited, 0 when the stripe is gone.
    static func credit(_ reply: RedisReply) throws(FlashSaleScriptError) -> Bool {
        switch reply {
        case .integer(1): return true
        case .integer(0): return false
        default: throw FlashSaleScriptError("credit", reply)
        }
    }

    /// drained.lua: 1 when the mark is (or was just) set, 0 when it is not.
    static func drained(_ reply: RedisReply) throws(FlashSaleScriptError) -> Bool {
        switch reply {
        case .integer(1): return true
        case .integer(0): return false
        default: throw FlashSaleScriptError("drained", reply)
        }
    }
}

extension RedisReply {
    /// The reply read by one of ``ScriptReply``'s decoders.
    func decoded<T>(_ decode: (RedisReply) throws(FlashSaleScriptError) -> T) throws(FlashSaleScriptError) -> T { try decode(self) }
}
