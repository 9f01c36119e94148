import Metrics

/// The library's metrics, through swift-metrics (whatever backend the application bootstrapped):
/// `multiredlock_attempts_total`, `multiredlock_grants_total`,
/// `multiredlock_failures_total{reason}` and the `multiredlock_acquire_duration` timer.
struct RedlockMetrics: Sendable {
    let attempts = Counter(label: "multiredlock_attempts_total")
    let grants = Counter(label: "multiredlock_grants_total")
    let acquireDuration = Timer(label: "multiredlock_acquire_duration")
    private let failures: [RedlockError.Kind: Counter] = Dictionary(
        uniqueKeysWithValues: [
            RedlockError.Kind.taken, .quorumUnavailable, .validityExpired, .notHeld, .invalidArgument,
            .closed,
        ].map { ($0, Counter(label: "multiredlock_failures_total", dimensions: [("reason", $0.rawValue)])) })

    func failed(_ kind: RedlockError.Kind) {
        failures[kind]?.increment()
    }
}

extension Timer {
    func recordInterval(since start: ContinuousClock.Instant) {
        let elapsed = ContinuousClock.now - start
        recordNanoseconds(elapsed.nanosecondsClamped)
    }
}
