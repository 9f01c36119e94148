// Renewing: one compare-and-pexpire round over all nodes (no retries; `withLock` retries).
extension Redlock {
    /// `heldUntil`: the validity of the lock being renewed, when known (see the notHeld case below).
    func renew(
        _ keys: [String], value: String, ttl: Duration, fencingToken: Int64?,
        heldUntil: ContinuousClock.Instant?
    ) async throws(RedlockError) -> Lock {
        let options = try prepare(keys, ttl: ttl)
        let resource = Lock.name(of: keys)
        guard !value.isEmpty else {
            throw RedlockError(.invalidArgument, resource: resource, message: "the lock value is empty")
        }
        return try await traced(
            "multiredlock.renew", keys, options: options,
            outcome: { result in
                switch result {
                case .success(let lock): SpanOutcome(kind: "renewed", attempts: 1, nodes: lock.nodes.count)
                case .failure(let error): SpanOutcome(error)
                }
            }
        ) { () async -> Result<Lock, RedlockError> in
            do throws(RedlockError) {
                return .success(
                    try await renewOnce(
                        keys, value: value, ttl: ttl, fencingToken: fencingToken, heldUntil: heldUntil,
                        options: options))
            } catch {
                return .failure(error)
            }
        }.get()
    }

    /// One renew round: compare-and-pexpire on every node.
    private func renewOnce(
        _ keys: [String], value: String, ttl: Duration, fencingToken: Int64?,
        heldUntil: ContinuousClock.Instant?, options: RedlockOptions
    ) async throws(RedlockError) -> Lock {
        let resource = Lock.name(of: keys)
        metrics.renewAttempts.increment()
        let start = ContinuousClock.now
        let timeout = options.nodeTimeout
        let (tally, _) = await fanOut(.extend, options: options) { _, node, done in
            node.extend(keys: keys, value: value, ttl: ttl, timeout: timeout, completion: done)
        }
        let now = ContinuousClock.now
        let validUntil = Self.validUntil(start: start, ttl: ttl, options: options)
        log(options, "renew", resource, attempt: 1, tally: tally, elapsed: now - start)
        guard
            let error = verdict(
                .renew, tally, resource: resource, elapsed: now - start, validUntil: validUntil, now: now,
                closed: isClosed)
        else {
            metrics.renewals.increment()
            metrics.renewDuration.recordInterval(since: start)
            return Lock(
                resources: keys, value: value, validity: validUntil - now, ttl: ttl, validUntil: validUntil,
                attempts: 1, nodes: tally.grantedIndices.map { names[$0] }, fencingToken: fencingToken)
        }
        if error.kind == .notHeld && tally.refused < nodes.count, let heldUntil {
            // The lock is gone from a quorum, yet other nodes may just have extended it (also those
            // that had not answered when a quorum refused): they would block the resource for the
            // new ttl with a lock nobody holds. Release them, but only once the lock being renewed
            // is past its validity (and drift): until then its holder may still rely on it, and its
            // keys on those nodes are what keeps another client from a quorum (found by `make sim`,
            // seed 125: releasing at once let a second client in while the first was still valid).
            let targets = tally.outcomes.map { $0 != .refused }
            let releaseAt = heldUntil + options.driftAllowance(for: ttl)
            operationsInFlight.enter()
            Task {
                defer { self.operationsInFlight.leave() }
                try? await Task.sleep(until: releaseAt, clock: .continuous)
                guard !self.isClosed else { return }
                _ = await self.releaseOnce(
                    keys, value: value, until: .now + ttl, options: options, on: targets)
            }
        }
        metrics.renewFailed(error.kind)
        throw error
    }

}
