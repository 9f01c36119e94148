import Logging
import Synchronization

// Acquiring: the retry loop (`acquire`) → one attempt over all nodes (`acquireOnce`) → one node
// (the node's `acquire(keys:…)`, in a fan-out: Redlock+FanOut.swift).
extension Redlock {
    enum RetryLimit {
        case attempts(Int)
        case deadline(ContinuousClock.Instant)
    }

    /// The retry loop. Each attempt has a value of its own: what runs later for a failed attempt (its
    /// release, and the background retries of that release) can only ever touch that attempt's
    /// keys, never the keys of a later attempt that succeeded. A failed attempt is released on the
    /// nodes that may hold its keys before the next attempt starts (in the background after the last
    /// one). Cancellation stops the loop at once, in an attempt or between two: whatever the attempt
    /// set is released, and `CancellationError` is thrown.
    func acquire(
        _ keys: [String], ttl: Duration, options: RedlockOptions, until limit: RetryLimit
    ) async throws -> Lock {
        try await traced(
            "multiredlock.lock", keys, options: options,
            outcome: { result in
                switch result {
                case .success(let lock):
                    SpanOutcome(kind: "granted", attempts: lock.attempts, nodes: lock.nodes.count)
                case .failure(let error): SpanOutcome(error)
                }
            }
        ) { () async -> Result<Lock, any Error> in
            do {
                return .success(try await acquireLoop(keys, ttl: ttl, options: options, until: limit))
            } catch {
                return .failure(error)
            }
        }.get()
    }

    /// The retry loop of ``acquire(_:ttl:options:until:)``.
    private func acquireLoop(
        _ keys: [String], ttl: Duration, options: RedlockOptions, until limit: RetryLimit
    ) async throws -> Lock {
        let start = ContinuousClock.now
        var attempt = 0
        while true {
            attempt += 1
            let value = LockValue.make(id: options.id)
            let attemptStart = ContinuousClock.now
            let (result, answers) = await operationsInFlight.run {
                await acquireOnce(keys, value: value, ttl: ttl, options: options, attempt: attempt)
            }
            let attemptEnd = ContinuousClock.now
            let elapsed = attemptEnd - attemptStart
            // A key set in this attempt lives at most ttl from now.
            let expiry = attemptEnd + ttl
            switch result {
            case .success(let lock):
                logAttempt(options, keys, attempt: attempt, result, elapsed: elapsed, retryIn: nil)
                if Task.isCancelled {
                    releaseEverywhere(keys, value: value, until: expiry, options: options)
                    throw CancellationError()
                }
                metrics.grants.increment()
                metrics.acquireDuration.recordInterval(since: start)
                return lock
            case .failure(let error):
                var wait = Duration.random(upTo: options.retryWait)
                let exhausted: Bool
                switch limit {
                case .attempts(let count):
                    exhausted = attempt >= count
                case .deadline(let deadline):
                    // Retry until the deadline has passed, never sleeping past it: a wait that would
                    // cross it is cut short, so the last attempt starts once the deadline is reached.
                    exhausted = attemptEnd >= deadline
                    wait = min(wait, deadline - attemptEnd)
                }
                let last = exhausted || error.kind == .closed || Task.isCancelled
                logAttempt(
                    options, keys, attempt: attempt, result, elapsed: elapsed, retryIn: last ? nil : wait)
                // Only nodes that may hold this attempt's keys are released: a node that refused the
                // SET NX holds another value (and this attempt's value is unique to it). Read now, not
                // when the attempt was decided: a node that had not answered then (a refusal behind
                // the refusals that decided it, often in the same read) has usually answered since.
                let outcomes = answers.outcomes
                let targets = outcomes.map { $0 != .refused }
                if last {
                    releaseEverywhere(keys, value: value, until: expiry, options: options, on: targets)
                    try Task.checkCancellation()
                    metrics.failed(error.kind)
                    throw error
                }
                // Wait for the release on the nodes that answered the attempt promptly (granted, or
                // an error reply); a node that timed out, was not connected or lost its connection
                // is released in the background: waiting for it could cost another node timeout.
                let answeredInTime = outcomes.map { outcome in
                    switch outcome {
                    case .pending, .refused: false
                    case .failed(let failure): failure.kind == .errorReply
                    case .granted: true
                    }
                }
                if targets.contains(true) {
                    _ = await tracedRelease(keys, options: options) {
                        await releaseOnce(
                            keys, value: value, until: expiry, options: options, on: targets,
                            waitingFor: answeredInTime)
                    }
                }
                if wait > .zero { try await Task.sleep(for: wait) }
                try Task.checkCancellation()
            }
        }
    }

    /// One attempt: SET NX PX (or the all-or-none script) on every node, decided as soon as the
    /// outcome is certain; with fencing tokens, then the token's write-back to a quorum. Returns the
    /// lock or the error, and the SET's round, which goes on recording what each node answers
    /// (which nodes may hold the keys).
    private func acquireOnce(
        _ keys: [String], value: String, ttl: Duration, options: RedlockOptions, attempt: Int
    ) async -> (Result<Lock, RedlockError>, FanOutRound) {
        metrics.attempts.increment()
        let resource = Lock.name(of: keys)
        let start = ContinuousClock.now
        let timeout = options.nodeTimeout
        let counters = options.fencingTokens ? FencingCounters(count: nodes.count) : nil
        let (tally, round) = await fanOut(.acquire, options: options, cancellable: true) {
            [self] index, node, answer in
            // A node that grants these keys holds no older value of ours for them any more. Only
            // wrapped while retry chains exist: the usual lock costs no extra closure per node.
            let done: @Sendable (NodeResult) -> Void
            if retryChains.alive.load(ordering: .relaxed) > 0 {
                done = { result in
                    if result == .succeeded { self.supersedeReleases(of: keys, on: index) }
                    answer(result)
                }
            } else {
                done = answer
            }
            if let counters {
                guard let node = fencingNodes[index] else { return done(.failed(Self.noFencing(node))) }
                node.acquireFenced(
                    key: keys[0], counterKey: Lock.fencingKey(for: keys[0]), value: value, ttl: ttl,
                    timeout: timeout
                ) { result, counter in
                    counters.record(counter, at: index)
                    done(result)
                }
            } else {
                node.acquire(keys: keys, value: value, ttl: ttl, timeout: timeout, completion: done)
            }
        }
        var decided = tally
        var fencingToken: Int64?
        if let counters, tally.decision == .succeeded {
            // Take max + 1 over the granting majority, and write it back to a majority before the lock
            // is returned: majorities intersect, so the next grant reads at least this token.
            let token = counters.max(over: tally.grantedIndices) + 1
            let (writeBack, _) = await fanOut(.extend, options: options, cancellable: true) {
                [fencingNodes] index, node, done in
                guard let node = fencingNodes[index] else { return done(.failed(Self.noFencing(node))) }
                node.raiseFence(
                    key: keys[0], counterKey: Lock.fencingKey(for: keys[0]), value: value, token: token,
                    timeout: timeout, completion: done)
            }
            log(options, "fence", resource, attempt: attempt, tally: writeBack, elapsed: .now - start)
            fencingToken = token
            if writeBack.decision != .succeeded { decided = writeBack }
        }
        let now = ContinuousClock.now
        let validUntil = Self.validUntil(start: start, ttl: ttl, options: options)
        let operation: Operation = fencingToken != nil && decided.decision != .succeeded ? .fence : .acquire
        // A grant that comes in while close() runs is not returned: it fails with `closed` and is
        // released (close() waits for this attempt and its release).
        if let error = verdict(
            operation, decided, resource: resource, attempts: attempt, elapsed: now - start,
            validUntil: validUntil, now: now, closed: isClosed)
        {
            // The caller releases the nodes that may hold the keys: also those that failed or did not
            // answer, since a SET that timed out may have landed.
            return (.failure(error), round)
        }
        let lock = Lock(
            resources: keys, value: value, validity: validUntil - now, ttl: ttl, validUntil: validUntil,
            attempts: attempt, nodes: tally.grantedNames(names), fencingToken: fencingToken)
        return (.success(lock), round)
    }

    /// How a node that is not a ``FencingRedlockNode`` answers a fenced acquire or write-back.
    private static func noFencing(_ node: any RedlockNode) -> NodeFailure {
        NodeFailure(.errorReply, "node \(node.name) does not support fencing tokens")
    }

    /// Reports an attempt to ``RedlockOptions/onAttempt``, and logs one line per acquire attempt, with its outcome: `granted` or the error's kind, and the
    /// details (the nodes that granted, or the error's message with its per-node evidence). `retryIn`
    /// is the random wait before the next attempt (`retry_in_ms`), nil after the last one.
    private func logAttempt(
        _ options: RedlockOptions, _ keys: [String], attempt: Int, _ result: Result<Lock, RedlockError>,
        elapsed: Duration, retryIn: Duration?
    ) {
        options.onAttempt?(
            AcquireAttempt(
                resources: keys, number: attempt, elapsed: elapsed, result: result, retryIn: retryIn))
        options.logger.log(
            level: options.debug ? .debug : .trace, "acquire attempt",
            metadata: {
                var metadata: Logger.Metadata = [
                    "resource": "\(Lock.name(of: keys))", "attempt": "\(attempt)",
                    "elapsed_ms": "\(elapsed.milliseconds)",
                ]
                switch result {
                case .success(let lock):
                    metadata["outcome"] = "granted"
                    metadata["granted"] = "\(lock.nodes.count)"
                    metadata["validity_ms"] = "\(lock.validity.milliseconds)"
                case .failure(let error):
                    metadata["outcome"] = "\(error.kind.rawValue)"
                    metadata["error"] = "\(error)"
                }
                if let retryIn { metadata["retry_in_ms"] = "\(retryIn.milliseconds)" }
                return metadata
            }())
    }

    func log(
        _ options: RedlockOptions, _ operation: String, _ resource: String, attempt: Int, tally: QuorumTally,
        elapsed: Duration
    ) {
        options.logger.log(
            level: options.debug ? .debug : .trace, "\(operation) attempt",
            metadata: [
                "resource": "\(resource)", "attempt": "\(attempt)", "granted": "\(tally.succeeded)",
                "refused": "\(tally.refused)", "failed": "\(tally.failed)",
                "elapsed_ms": "\(elapsed.milliseconds)",
            ])
    }
}

/// The fencing counters the granting nodes answered in one fenced attempt.
private final class FencingCounters: Sendable {
    private let counters: Locked<[Int64]>

    init(count: Int) {
        counters = Locked(Array(repeating: 0, count: count))
    }

    func record(_ counter: Int64, at index: Int) {
        counters.withLock { $0[index] = counter }
    }

    func max(over indices: [Int]) -> Int64 {
        counters.withLock { counters in indices.map { counters[$0] }.max() ?? 0 }
    }
}
