import Testing

@testable import MultiRedlock

@Suite("LockValue")
struct LockValueTests {
    @Test("format writes <id>_<ms>_<high as 16 hex><low as 16 hex>, zero-padded, lowercase")
    func formatShape() {
        #expect(
            LockValue.format(id: "host", milliseconds: 1_700_000_000_123, high: 0, low: 1)
                == "host_1700000000123_00000000000000000000000000000001")
        #expect(
            LockValue.format(id: "a", milliseconds: 0, high: .max, low: 0xabc)
                == "a_0_ffffffffffffffff0000000000000abc")
        #expect(
            LockValue.format(
                id: "x", milliseconds: 9, high: 0x0123_4567_89ab_cdef, low: 0xfedc_ba98_7654_3210)
                == "x_9_0123456789abcdeffedcba9876543210")
    }

    @Test("format matches the former String-built value for any id and any Int64 milliseconds")
    func formatMatchesInterpolation() {
        func padded(_ value: UInt64) -> String {
            let digits = String(value, radix: 16)
            return String(repeating: "0", count: 16 - digits.count) + digits
        }
        var generator = SystemRandomNumberGenerator()
        let ids = ["id", "ünïcode-ホスト", String(repeating: "long-id-", count: 40), "a_b"]
        let milliseconds: [Int64] = [0, 1, 9, 10, 99, 100, 1_733_300_000_000, .max, .min, -1, -10]
        for id in ids {
            for ms in milliseconds {
                let high: UInt64 = generator.next()
                let low: UInt64 = generator.next()
                #expect(
                    LockValue.format(id: id, milliseconds: ms, high: high, low: low)
                        == "\(id)_\(ms)_\(padded(high))\(padded(low))")
            }
        }
    }

    @Test("made values have the shape, 32 hex digits of randomness, and are unique")
    func madeValues() {
        var seen = Set<String>()
        var hexSeen = Set<Substring>()
        for _ in 0..<10_000 {
            let value = LockValue.make(id: "worker-1")
            #expect(value.wholeMatch(of: /worker-1_[0-9]+_[0-9a-f]{32}/) != nil, "\(value)")
            let hex = value.suffix(32)
            #expect(hex.count == 32)
            seen.insert(value)
            hexSeen.insert(hex)
        }
        #expect(seen.count == 10_000)
        #expect(hexSeen.count == 10_000)
    }

    @Test("the random part covers every hex digit in every place (not stuck bits)")
    func randomPartVaries() {
        var digitsAt = Array(repeating: Set<Character>(), count: 32)
        for _ in 0..<2_000 {
            for (place, digit) in LockValue.make(id: "v").suffix(32).enumerated() {
                digitsAt[place].insert(digit)
            }
        }
        // 2,000 draws miss a given digit in a given place with probability (15/16)^2000 ≈ 1e-56.
        #expect(digitsAt.allSatisfy { $0.count == 16 })
    }
}
