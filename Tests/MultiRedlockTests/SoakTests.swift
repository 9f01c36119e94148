import Foundation
import LocalRedis
import MultiRedlock
import MultiRedlockTesting
import TestSupport
import Testing

/// Scenario 12 for as long as asked: `make soak DURATION=seconds` (or MULTIREDLOCK_SOAK_SECONDS=N
/// swift test --filter SoakTests). Skipped unless MULTIREDLOCK_SOAK_SECONDS is set.
@Suite(.serialized)
struct SoakTests {
    static let seconds: Int? = ProcessInfo.processInfo.environment["MULTIREDLOCK_SOAK_SECONDS"].flatMap {
        Int($0.trimmingCharacters(in: .whitespaces))
    }

    @Test(
        .enabled(
            if: seconds != nil,
            "soak skipped: set MULTIREDLOCK_SOAK_SECONDS (e.g. `make soak DURATION=600`) to run scenario 12"))
    func clientsContendWhileServersCrashAndHang() async throws {
        let seconds = try #require(
            Self.seconds, "MULTIREDLOCK_SOAK_SECONDS must be a whole number of seconds")
        try #require(seconds > 0, "MULTIREDLOCK_SOAK_SECONDS must be positive")
        let group = try await RedisServerGroup.start(count: 3, RedisServerConfiguration(appendOnly: true))
        defer { group.stopInBackground() }
        var configuration = CounterContention.Configuration()
        configuration.workers = 4
        configuration.iterations = nil
        configuration.duration = .seconds(seconds)
        configuration.progressEvery = .seconds(min(30, max(5, seconds / 10)))
        print("soak: \(configuration.workers) redlock clients for \(seconds) s against 3 servers (AOF)")
        let descriptors = openDescriptorCount()
        let sockets = group.ports.map { socketsConnected(toPort: $0) }
        let outcome = try await CounterContention.run(group, configuration)
        // Closes may lag a moment behind the last run.
        var socketsAfter = sockets
        try await waitUntil(timeout: .seconds(5), "sockets to the servers back to \(sockets)") {
            socketsAfter = group.ports.map { socketsConnected(toPort: $0) }
            return socketsAfter == sockets
        }
        let descriptorsAfter = openDescriptorCount()
        print(
            "soak: open descriptors of the test process \(descriptors) → \(descriptorsAfter); sockets to "
                + "the servers \(sockets) → \(socketsAfter)")
        // The soak runs alone (`make soak`), for hundreds of `redlock` runs: a descriptor leaked per run
        // (each gets two pipes) passes 100 within minutes.
        #expect(
            descriptorsAfter - descriptors < 100,
            "descriptors grew \(descriptors) → \(descriptorsAfter) over \(outcome.succeeded + outcome.failures.count) runs"
        )

        let kills = outcome.faults.filter { $0.hasPrefix("kill9") }.count
        print(
            "soak: done after \(outcome.elapsed): \(outcome.succeeded) runs succeeded, \(outcome.failures.count) "
                + "failed; counter \(outcome.counter); \(outcome.holds.count) holds, \(outcome.violations.count) "
                + "overlaps; \(outcome.faults.count) faults (\(kills) crashes, "
                + "\(outcome.faults.count - kills) hangs)")
        for failure in outcome.failures.prefix(5) { print("soak: failure: \(failure)") }
        #expect(outcome.counter == outcome.succeeded, "a lost or doubled increment")
        #expect(outcome.holds.count == outcome.succeeded)
        #expect(outcome.failures.isEmpty)
        #expect(outcome.violations.isEmpty, "\(outcome.violations.prefix(3).map { "\($0.0) / \($0.1)" })")
        #expect(outcome.succeeded > 0)
    }
}
