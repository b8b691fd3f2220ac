@testable import FlashSales
import Testing

@Suite("Flash-sale stripes")
struct FlashSaleStripeTests {
    @Test("stock spreads over stripes in near-equal shares that add up")
    func shares() {
        #expect(FlashSaleStock.shares(100, over: 8) == [13, 13, 13, 13, 12, 12, 12, 12])
        #expect(FlashSaleStock.shares(3, over: 5) == [1, 1, 1, 0, 0])
        #expect(FlashSaleStock.shares(0, over: 2) == [0, 0])
    }

    @Test("less stock is taken from the fullest stripes; more than they hold is refused")
    func deltas() {
        #expect(FlashSaleStock.deltas(6, remaining: [0, 5, 1]) == [2, 2, 2])
        #expect(FlashSaleStock.deltas(-5, remaining: [1, 4, 2]) == [0, -4, -1])
        #expect(FlashSaleStock.deltas(-7, remaining: [1, 4, 2]) == [-1, -4, -2])
        #expect(FlashSaleStock.deltas(-8, remaining: [1, 4, 2]) == nil)
        #expect(FlashSaleStock.deltas(-1, remaining: [-2, 1]) == [0, -1])
    }

    @Test("one stripe keeps the unstriped key layout; K stripes get their own hash tags and members map by id")
    func layout() {
        #expect(FlashSaleStock.stripes("s1", slots: 1).map { $0.key("sale") } == ["fanflow:{fs:s1}:sale"])
        #expect(FlashSaleStock.stripes("s1", slots: 3).map { $0.key("sale") } ==
                ["fanflow:{fs:s1#0}:sale", "fanflow:{fs:s1#1}:sale", "fanflow:{fs:s1#2}:sale"])
        #expect(FlashSaleStock.home("s1", slots: 3, member: 7).key("held:7") == "fanflow:{fs:s1#1}:held:7")
        #expect(FlashSaleStock.home("s1", slots: 1, member: 7).index == 0)
    }
}
