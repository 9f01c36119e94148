import Foundation
import LocalRedis
import Testing

/// A search for tests that depend on the cooperative pool's promptness, not a test of the library:
/// with `MULTIREDLOCK_TEST_HOLD_POOL_AT_MS` set (`make test-pool-held HOLD_AT_MS=…`), these block
/// every thread of the pool for 7 s, that many milliseconds after the run starts. That is what the
/// first seconds of a loaded AddressSanitizer run did in CI (pure tests took 5 to 7 s, and a
/// renewal queued behind them came after its lock's validity). A test that then fails waits for
/// the pool where it claims something about the library's timing: it runs on an executor of its
/// own (`.ownExecutor`), or its bound leaves room. Skipped in `make test`.
@Suite("the cooperative pool held (make test-pool-held)")
struct PoolHoldTests {
    static let holdAt = ProcessInfo.processInfo.environment["MULTIREDLOCK_TEST_HOLD_POOL_AT_MS"].flatMap {
        Int($0)
    }

    /// Three blockers (more than the pool's threads here, one per core), each holding its thread for
    /// 7 s.
    @Test(.enabled(if: holdAt != nil), arguments: 0..<3)
    func holdThePool(blocker: Int) async throws {
        let holdAt = try #require(Self.holdAt)
        try await Task.sleep(for: .milliseconds(holdAt))
        sleepThread(.seconds(7))
    }
}
