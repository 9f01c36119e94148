/// A lock held by ``Redlock/withLock(_:ttl:_:)-(String,_,_)``: renewed in the background while the body runs.
public final class HeldLock: Sendable {
    private let state: Locked<(lock: Lock, lost: RedlockError?)>

    init(_ lock: Lock) {
        state = Locked((lock, nil))
    }

    /// The lock as last granted or renewed.
    public var lock: Lock { state.withLock { $0.lock } }
    /// The locked resource.
    public var resource: String { lock.resource }
    /// The lock's value.
    public var value: String { lock.value }
    /// The lock's fencing token, when ``RedlockOptions/fencingTokens`` is on.
    public var fencingToken: Int64? { lock.fencingToken }
    /// Whether the lock is still valid: renewed in time and not lost.
    public var isValid: Bool { state.withLock { $0.lost == nil && $0.lock.isValid } }
    /// How much validity is left now (zero once lost or expired).
    public var remainingValidity: Duration {
        state.withLock { $0.lost == nil ? $0.lock.remainingValidity : .zero }
    }
    /// Why the lock was lost, once it was.
    public var lostError: RedlockError? { state.withLock { $0.lost } }

    func renewed(_ lock: Lock) {
        state.withLock { $0.lock = lock }
    }

    func lose(_ error: RedlockError) {
        state.withLock { if $0.lost == nil { $0.lost = error } }
    }
}

extension Redlock {
    /// Acquires a lock, runs `body` while holding it, and always releases it at the end (return,
    /// throw or cancellation).
    ///
    /// While the body runs, the lock is renewed in the background a third of the way through each
    /// validity. The renewals of a Redlock over servers run on its connections' queue (see
    /// ``taskExecutor``), not on the cooperative pool: a body, or other work, that keeps the pool's
    /// threads busy does not delay them. When renewing fails until the validity runs out (or a
    /// quorum says the lock is no longer held, or ``RedlockOptions/maxHold`` is reached), the body's task is **cancelled**, and
    /// `withLock` throws ``RedlockError/Kind/lost`` once the body returns. Inside the body,
    /// ``HeldLock/isValid`` and ``HeldLock/remainingValidity`` tell how things stand.
    ///
    /// ```swift
    /// try await redlock.withLock("report", ttl: .seconds(10)) { held in
    ///     for chunk in chunks {
    ///         try Task.checkCancellation()   // stops promptly if the lock is lost
    ///         try await write(chunk, fencedBy: held.value)
    ///     }
    /// }
    /// ```
    /// - Throws: what ``lock(_:ttl:)-(String,_)`` throws when the lock is not acquired; ``RedlockError/Kind/lost``
    ///   when it was lost while the body ran; otherwise whatever the body throws.
    public func withLock<T: Sendable>(
        _ resource: String, ttl: Duration, _ body: @escaping @Sendable (HeldLock) async throws -> T
    ) async throws -> T {
        try await withLock([resource], ttl: ttl, body)
    }

    /// ``withLock(_:ttl:_:)`` for several resources at once (see ``lock(_:ttl:)-([String],_)``).
    public func withLock<T: Sendable>(
        _ resources: [String], ttl: Duration, _ body: @escaping @Sendable (HeldLock) async throws -> T
    ) async throws -> T {
        let options = try prepare(resources, ttl: ttl)
        let started = ContinuousClock.now
        let held = HeldLock(
            try await acquire(resources, ttl: ttl, options: options, until: .attempts(options.retries + 1)))
        let outcome: Result<T, any Error>
        do {
            outcome = .success(
                try await withThrowingTaskGroup(of: T?.self) { group in
                    group.addTask { try await body(held) }
                    // The keeper runs on the connections' executor (when there are connections):
                    // its timers and renewals then never wait behind the cooperative pool's queue,
                    // so a pool kept busy (or blocked) by other work, the body included, does not
                    // make the lock lapse.
                    group.addTask(executorPreference: connectionExecutor) {
                        await self.keep(held, ttl: ttl, holdUntil: started + options.maxHold)
                        return nil
                    }
                    var result: T?
                    while let next = try await group.next() {
                        // The first task to finish decides: the body (stop renewing) or the keeper
                        // (the lock is lost: cancel the body and wait for it to return).
                        group.cancelAll()
                        if let next { result = next }
                    }
                    // The loop ends without throwing only when the body returned normally.
                    guard let result else { throw CancellationError() }
                    return result
                })
        } catch {
            outcome = .failure(error)
        }
        let lock = held.lock
        if let lost = held.lostError {
            metrics.lost.increment()
            // Best effort and at once: the caller must not wait for retries on a lost lock.
            releaseEverywhere(
                lock.resources, value: lock.value, until: lock.validUntil + ttl, options: options)
            throw lost
        }
        _ = try? await release(lock)
        return try outcome.get()
    }

    /// Renews `held` until its task is cancelled or the lock is lost.
    private func keep(_ held: HeldLock, ttl: Duration, holdUntil: ContinuousClock.Instant) async {
        let tuning = options.tuning
        while !Task.isCancelled {
            let lock = held.lock
            // Renew a third of the way through the validity, leaving two thirds for retries.
            let renewAt =
                lock.validUntil - lock.validity * tuning.renewLeaving.numerator
                / tuning.renewLeaving.denominator
            guard (try? await Task.sleep(until: renewAt, clock: .continuous)) != nil else { return }
            if ContinuousClock.now + ttl > holdUntil {
                // No more renewals: let the lock expire, then the body must stop.
                guard (try? await Task.sleep(until: lock.validUntil, clock: .continuous)) != nil else {
                    return
                }
                held.lose(
                    RedlockError(
                        .lost, resource: lock.resource, attempts: 0,
                        message: "the maximum hold time (options.maxHold) was reached; the lock expired"))
                return
            }
            var renewed = false
            var lastError: RedlockError?
            while !renewed && ContinuousClock.now < lock.validUntil {
                do {
                    held.renewed(try await renew(lock, ttl: ttl))
                    renewed = true
                } catch {
                    lastError = error
                    if error.kind == .notHeld || error.kind == .closed { break }
                    let pause = min(tuning.renewRetryPause, lock.remainingValidity / 4)
                    guard (try? await Task.sleep(for: pause)) != nil else { return }
                }
            }
            if !renewed {
                let reason = lastError?.message ?? "no renewal succeeded before the validity ran out"
                held.lose(
                    RedlockError(
                        .lost, resource: lock.resource, attempts: lastError?.attempts ?? 0,
                        nodes: lastError?.nodes ?? [], message: "the lock was lost: \(reason)"))
                return
            }
        }
    }
}
