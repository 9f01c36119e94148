/// Lock values: `<id>_<ms since epoch>_<32 hex chars>`, the npm package's shape with 128 random bits from
/// the system's CSPRNG (`SystemRandomNumberGenerator`, getrandom(2) on Linux), so a value cannot
/// be guessed and two grants never share one.
enum LockValue {
    static func make(id: String) -> String {
        var generator = SystemRandomNumberGenerator()
        let high = generator.next() as UInt64
        let low = generator.next() as UInt64
        let milliseconds =
            Int64((ContinuousClock.now - startInstant).wholeMilliseconds) + startEpochMilliseconds
        return "\(id)_\(milliseconds)_\(hex(high))\(hex(low))"
    }

    private static func hex(_ value: UInt64) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }

    // The wall clock only labels values; it is read once and advanced on the monotonic clock.
    private static let startInstant = ContinuousClock.now
    private static let startEpochMilliseconds: Int64 = {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
    }()
}

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif
