import Metrics

/// The library's metrics, through swift-metrics: the factory of ``RedlockOptions/metricsFactory``,
/// else whatever backend the application bootstrapped (`MetricsSystem.factory`). The names and what
/// they count are listed in the Operating it article (and the README).
struct RedlockMetrics: Sendable {
    /// Acquire attempts (a `lock` that retries makes several).
    let attempts: Counter
    /// Locks granted.
    let grants: Counter
    /// From the first attempt of a `lock` to its grant.
    let acquireDuration: Timer
    /// Renew attempts (one per `renew` call, also the background renewals of `withLock`).
    let renewAttempts: Counter
    /// Renewals that extended the lock.
    let renewals: Counter
    /// How long a successful renew took.
    let renewDuration: Timer
    /// Locks held by `withLock` that were lost while the body ran.
    let lost: Counter
    /// How many of this Redlock's nodes are connected.
    let connectedNodes: Gauge
    private let failures: [RedlockError.Kind: Counter]
    private let renewFailures: [RedlockError.Kind: Counter]

    init(factory: any MetricsFactory) {
        attempts = Counter(label: "multiredlock_attempts_total", factory: factory)
        grants = Counter(label: "multiredlock_grants_total", factory: factory)
        acquireDuration = Timer(label: "multiredlock_acquire_duration", factory: factory)
        renewAttempts = Counter(label: "multiredlock_renew_attempts_total", factory: factory)
        renewals = Counter(label: "multiredlock_renewals_total", factory: factory)
        renewDuration = Timer(label: "multiredlock_renew_duration", factory: factory)
        lost = Counter(label: "multiredlock_lost_total", factory: factory)
        connectedNodes = Gauge(label: "multiredlock_connected_nodes", factory: factory)
        let kinds: [RedlockError.Kind] = [
            .taken, .quorumUnavailable, .validityExpired, .notHeld, .invalidArgument, .closed,
        ]
        func byReason(_ label: String) -> [RedlockError.Kind: Counter] {
            Dictionary(
                uniqueKeysWithValues: kinds.map {
                    ($0, Counter(label: label, dimensions: [("reason", $0.rawValue)], factory: factory))
                })
        }
        failures = byReason("multiredlock_failures_total")
        renewFailures = byReason("multiredlock_renew_failures_total")
    }

    /// A `lock` failed (after its last attempt).
    func failed(_ kind: RedlockError.Kind) {
        failures[kind]?.increment()
    }

    /// A renew failed.
    func renewFailed(_ kind: RedlockError.Kind) {
        renewFailures[kind]?.increment()
    }
}

extension Timer {
    func recordInterval(since start: ContinuousClock.Instant) {
        let elapsed = ContinuousClock.now - start
        recordNanoseconds(elapsed.nanosecondsClamped)
    }
}
