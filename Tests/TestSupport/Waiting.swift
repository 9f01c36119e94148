import Testing

// Polling, for conditions that other threads or processes make true. Every wait is bounded, so that
// a hang makes a test fail instead of stalling the whole run; the bounds are generous because the
// machine is small and busy (they are limits, not measurements).

/// Polls `condition` every `interval` until it holds or `timeout` passes (then checks once more);
/// returns whether it held. For a test that asserts on the result itself, or that expects a
/// condition NOT to become true.
package func eventually(
    timeout: Duration = .seconds(10),
    every interval: Duration = .milliseconds(10),
    _ condition: () async throws -> Bool
) async rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: interval)
    }
    return try await condition()
}

/// Polls `condition` every `interval` until it holds or `timeout` passes; then records an issue
/// ("`what` did not hold within `timeout`") at the caller's location. Returns how long it waited.
@discardableResult
package func waitUntil(
    timeout: Duration = .seconds(10),
    _ what: @autoclosure () -> String = "condition",
    every interval: Duration = .milliseconds(10),
    sourceLocation: SourceLocation = #_sourceLocation,
    _ condition: () async throws -> Bool
) async throws -> Duration {
    let start = ContinuousClock.now
    let held = try await eventually(timeout: timeout, every: interval, condition)
    #expect(held, "\(what()) did not hold within \(timeout)", sourceLocation: sourceLocation)
    return ContinuousClock.now - start
}
