#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Lock values: `<id>_<ms since epoch>_<32 hex chars>`, the npm package's shape with 128 random bits from
/// the system's CSPRNG (getrandom(2) on Linux, one 16-byte draw; `SystemRandomNumberGenerator`
/// where getrandom is missing), so a value cannot be guessed and two grants never share one.
enum LockValue {
    static func make(id: String) -> String {
        let (high, low) = randomBits()
        let milliseconds =
            Int64((ContinuousClock.now - startInstant).wholeMilliseconds) + startEpochMilliseconds
        return format(id: id, milliseconds: milliseconds, high: high, low: low)
    }

    /// `<id>_<milliseconds>_<high><low>` (each of `high` and `low` as 16 lowercase hex digits),
    /// written straight into the string's one buffer.
    static func format(id: String, milliseconds: Int64, high: UInt64, low: UInt64) -> String {
        let idCount = id.utf8.count
        // 20 digits and a sign hold any Int64.
        return String(unsafeUninitializedCapacity: idCount + 1 + 21 + 1 + 32) { buffer in
            var end = 0
            let copied = id.utf8.withContiguousStorageIfAvailable { utf8 in
                buffer.baseAddress!.initialize(from: utf8.baseAddress!, count: utf8.count)
                return utf8.count
            }
            if let copied {
                end = copied
            } else {
                for byte in id.utf8 {
                    buffer[end] = byte
                    end += 1
                }
            }
            buffer[end] = UInt8(ascii: "_")
            end += 1
            if milliseconds < 0 {
                buffer[end] = UInt8(ascii: "-")
                end += 1
            }
            // The decimal digits, written backwards from their last place.
            var magnitude = milliseconds.magnitude
            var digits = 1
            var rest = magnitude / 10
            while rest > 0 {
                digits += 1
                rest /= 10
            }
            var place = end + digits - 1
            repeat {
                buffer[place] = UInt8(ascii: "0") + UInt8(truncatingIfNeeded: magnitude % 10)
                magnitude /= 10
                place -= 1
            } while magnitude > 0
            end += digits
            buffer[end] = UInt8(ascii: "_")
            end += 1
            func hex(_ word: UInt64) {
                var shift: UInt64 = 64
                while shift > 0 {
                    shift -= 4
                    let nibble = UInt8(truncatingIfNeeded: (word >> shift) & 0xf)
                    buffer[end] = nibble < 10 ? UInt8(ascii: "0") + nibble : UInt8(ascii: "a") + nibble - 10
                    end += 1
                }
            }
            hex(high)
            hex(low)
            return end
        }
    }

    /// 128 bits from the OS CSPRNG, in one getrandom(2) call where the C library has it.
    private static func randomBits() -> (UInt64, UInt64) {
        var bits: (UInt64, UInt64) = (0, 0)
        #if canImport(Glibc)
            if let getrandom = getrandomFunction {
                let filled = withUnsafeMutableBytes(of: &bits) { bytes -> Bool in
                    var done = 0
                    while done < bytes.count {
                        let count = getrandom(bytes.baseAddress! + done, bytes.count - done, 0)
                        if count > 0 {
                            done += count
                        } else if count < 0 && errno == EINTR {
                            continue
                        } else {
                            return false
                        }
                    }
                    return true
                }
                if filled { return bits }
            }
        #endif
        var generator = SystemRandomNumberGenerator()
        bits = (generator.next(), generator.next())
        return bits
    }

    #if canImport(Glibc)
        private typealias GetRandom = @convention(c) (UnsafeMutableRawPointer?, Int, UInt32) -> Int

        /// glibc's getrandom (2.25 and later), looked up once: the Glibc module does not import
        /// <sys/random.h>. Nil when absent (then `SystemRandomNumberGenerator` is used).
        private static let getrandomFunction: GetRandom? = {
            guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "getrandom") else { return nil }
            return unsafeBitCast(symbol, to: GetRandom.self)
        }()
    #endif

    // The wall clock only labels values; it is read once and advanced on the monotonic clock.
    private static let startInstant = ContinuousClock.now
    private static let startEpochMilliseconds: Int64 = {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
    }()
}
