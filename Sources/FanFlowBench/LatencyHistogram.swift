/// Latencies in microseconds, log-bucketed: exact below 128 µs, then 64 buckets per doubling, so a
/// reported percentile is within 1/64 (1.6%) of the recorded value whatever its size. Recording is
/// an index computation and an increment (no allocation), cheap enough to run for every response
/// on the load generator's event loop; 3,776 counters cover every `UInt64`.
struct LatencyHistogram: Sendable {
    /// 2^7 = 128 exact values, then 2^6 = 64 sub-buckets per power of two.
    static let subBits = 7
    static let half = 1 << (subBits - 1)
    static let bucketCount = (64 - subBits + 1) * half + half

    private(set) var counts = [UInt64](repeating: 0, count: LatencyHistogram.bucketCount)
    private(set) var total: UInt64 = 0
    private(set) var maximum: UInt64 = 0
    private(set) var minimum: UInt64 = .max

    static func index(of value: UInt64) -> Int {
        guard value >= UInt64(1 << subBits) else { return Int(value) }
        let exponent = (63 - value.leadingZeroBitCount) - (subBits - 1)
        return exponent * half + Int(value >> UInt64(exponent))
    }

    /// The smallest value that lands in bucket `index`, and the bucket's width.
    static func bounds(of index: Int) -> (low: UInt64, width: UInt64) {
        guard index >= 1 << subBits else { return (UInt64(index), 1) }
        let exponent = index / half - 1
        let mantissa = index - exponent * half
        return (UInt64(mantissa) << UInt64(exponent), 1 << UInt64(exponent))
    }

    mutating func record(microseconds value: UInt64) {
        counts[Self.index(of: value)] &+= 1
        total &+= 1
        if value > maximum { maximum = value }
        if value < minimum { minimum = value }
    }

    mutating func merge(_ other: LatencyHistogram) {
        for i in counts.indices { counts[i] &+= other.counts[i] }
        total &+= other.total
        maximum = max(maximum, other.maximum)
        minimum = min(minimum, other.minimum)
    }

    /// The value at quantile `q` (0...1): the middle of the bucket holding the ⌈q·n⌉-th smallest
    /// value, clamped to the recorded extremes. Nil when nothing was recorded.
    func percentile(_ q: Double) -> UInt64? {
        guard total > 0 else { return nil }
        let rank = max(1, UInt64((q * Double(total)).rounded(.up)))
        if rank >= total { return maximum }
        var seen: UInt64 = 0
        for (index, count) in counts.enumerated() where count > 0 {
            seen += count
            if seen >= rank {
                let (low, width) = Self.bounds(of: index)
                return min(max(low + width / 2, minimum), maximum)
            }
        }
        return maximum
    }

    /// Milliseconds with one decimal, as the tables print them; "-" when nothing was recorded.
    func milliseconds(_ q: Double) -> String {
        guard let value = percentile(q) else { return "-" }
        return Format.fixed(Double(value) / 1000, 1)
    }

    var maxMilliseconds: String { total == 0 ? "-" : Format.fixed(Double(maximum) / 1000, 1) }

    /// Checks the bucketing against exact percentiles of known values: run by `FanFlowBench self-check`.
    static func selfCheck() -> [String] {
        var problems: [String] = []
        // Every bucket's bounds map back to it, and buckets tile the line without gaps.
        var expectedLow: UInt64 = 0
        for index in 0..<(bucketCount - 1) {
            let (low, width) = bounds(of: index)
            if low != expectedLow { problems.append("bucket \(index) starts at \(low), expected \(expectedLow)"); break }
            if Self.index(of: low) != index || Self.index(of: low + width - 1) != index {
                problems.append("bucket \(index) does not hold its own bounds"); break
            }
            if width > 1, Double(width) / Double(low) > 1.0 / Double(half) + 1e-12 {
                problems.append("bucket \(index) is wider than 1/\(half) of its value"); break
            }
            expectedLow = low + width
            if expectedLow > UInt64(1) << 62 { break }
        }
        // 1...100,000 µs once each: the p-th percentile is p·100,000 µs, give or take a bucket.
        var histogram = LatencyHistogram()
        for value in 1...100_000 { histogram.record(microseconds: UInt64(value)) }
        for (q, exact) in [(0.5, 50_000.0), (0.9, 90_000.0), (0.99, 99_000.0)] {
            let got = Double(histogram.percentile(q) ?? 0)
            if abs(got - exact) / exact > 1.0 / Double(half) { problems.append("p\(Int(q * 100)) of 1...100000 is \(got), expected \(exact) ± 1.6%") }
        }
        if histogram.percentile(1) != 100_000 { problems.append("p100 is not the maximum") }
        if LatencyHistogram().percentile(0.5) != nil { problems.append("an empty histogram has a percentile") }
        var small = LatencyHistogram()
        for value: UInt64 in [3, 3, 3, 7] { small.record(microseconds: value) }
        if small.percentile(0.5) != 3 || small.percentile(0.99) != 7 { problems.append("small exact values are not exact") }
        return problems
    }
}

/// Sparse on disk (bucket index → count), so a round's result line stays small.
extension LatencyHistogram: Codable {
    enum CodingKeys: String, CodingKey { case buckets, total, maximum, minimum }

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init()
        for (index, count) in try c.decode([Int: UInt64].self, forKey: .buckets) {
            guard (0..<Self.bucketCount).contains(index) else {
                throw DecodingError.dataCorruptedError(forKey: .buckets, in: c, debugDescription: "bucket \(index) out of range")
            }
            counts[index] = count
        }
        total = try c.decode(UInt64.self, forKey: .total)
        maximum = try c.decode(UInt64.self, forKey: .maximum)
        minimum = try c.decode(UInt64.self, forKey: .minimum)
    }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        var buckets: [Int: UInt64] = [:]
        for (index, count) in counts.enumerated() where count > 0 { buckets[index] = count }
        try c.encode(buckets, forKey: .buckets)
        try c.encode(total, forKey: .total)
        try c.encode(maximum, forKey: .maximum)
        try c.encode(minimum, forKey: .minimum)
    }
}
