extension Duration {
    /// The duration in seconds, fractions included (metrics, rates and timeouts are in seconds).
    public var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
