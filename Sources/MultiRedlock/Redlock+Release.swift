import Synchronization

// Releasing: one compare-and-delete round over all nodes (`releaseOnce`), and the background
// retries of the nodes that failed (`retryRelease`), kept per node until the keys would have expired
// anyway, and dropped when a later grant of the same keys shows the value is gone (supersede).
extension Redlock {
    /// A failed release waiting for its retry.
    struct PendingRelease {
        var keys: [String]
        var expiry: ContinuousClock.Instant
        var id: UInt64
        var chain: RetryChain
        var run: @Sendable () -> Void
    }

    /// The retries of one release on one node: dropping the chain stops a retry already under way
    /// from scheduling the next.
    final class RetryChain: Sendable {
        let dropped = Atomic<Bool>(false)
        private let count: Count

        final class Count: Sendable {
            let alive = Atomic<Int>(0)
        }

        init(_ count: Count) {
            self.count = count
            count.alive.add(1, ordering: .relaxed)
        }

        deinit {
            count.alive.subtract(1, ordering: .relaxed)
        }
    }

    /// Fire-and-forget release on the nodes marked in `targets` (all by default), with background
    /// retries for failed nodes. ``close()`` waits for these first releases (not for later retries),
    /// so a client that fails to lock and closes at once (a CLI, a short job) leaves nothing locked.
    func releaseEverywhere(
        _ keys: [String], value: String, until expiry: ContinuousClock.Instant, options: RedlockOptions,
        on targets: [Bool]? = nil
    ) {
        // An attempt every node refused holds nothing anywhere: no task, span or round for it (a
        // losing contender costs the servers its SETs and nothing more).
        if let targets, !targets.contains(true) { return }
        operationsInFlight.enter()
        Task {
            _ = await self.tracedRelease(keys, options: options) {
                await self.releaseOnce(keys, value: value, until: expiry, options: options, on: targets)
            }
            self.operationsInFlight.leave()
        }
    }

    /// A release round in a `multiredlock.release` span: the outcome is `released` when a node
    /// deleted the keys, `notHeld` when every node answered and none held them, else
    /// `quorumUnavailable`.
    func tracedRelease(
        _ keys: [String], options: RedlockOptions, _ round: () async -> QuorumTally
    ) async -> QuorumTally {
        await traced(
            "multiredlock.release", keys, options: options,
            outcome: { (result: Result<QuorumTally, Never>) in
                let tally = result.get()
                let kind =
                    verdict(.release, tally, resource: Lock.name(of: keys))?.kind.rawValue ?? "released"
                return SpanOutcome(kind: kind, attempts: 1, nodes: tally.succeeded)
            }
        ) { () async -> Result<QuorumTally, Never> in
            .success(await round())
        }.get()
    }

    /// Compare-and-delete on the nodes marked in `targets` (all by default; the others count as
    /// refused), waiting for the answers of those marked in `awaited` (all by default). Nodes that
    /// failed (timeout, no connection, error) are retried in the background until `expiry` (past it
    /// the keys have expired on their own): as soon as the node reconnects, or after a doubling
    /// delay, whichever is first.
    func releaseOnce(
        _ keys: [String], value: String, until expiry: ContinuousClock.Instant, options: RedlockOptions,
        on targets: [Bool]? = nil, waitingFor awaited: [Bool]? = nil
    ) async -> QuorumTally {
        let timeout = options.nodeTimeout
        let delays = options.tuning.releaseRetryDelay
        let retryFailed: @Sendable (QuorumTally) -> Void = { [weak self] tally in
            guard let self else { return }
            for index in tally.outcomes.indices {
                guard case .failed = tally.outcomes[index] else { continue }
                self.retryRelease(
                    on: index, keys, value, expiry, timeout, delay: delays.first, longest: delays.longest,
                    chain: RetryChain(self.retryChains))
            }
        }
        return await fanOut(
            .release, options: options, until: awaited.map { .answered($0) } ?? .allAnswered,
            whenAllAnswered: retryFailed
        ) { index, node, done in
            if let targets, !targets[index] { return done(.refused) }
            node.release(keys: keys, value: value, timeout: timeout, completion: done)
        }.tally
    }

    /// Retries a failed release on node `index` once it reconnects or after `delay`, whichever comes
    /// first; a retry that fails again schedules the next with twice the delay (at most `longest`).
    /// Stops at `expiry`, when the keys have expired anyway, and when the Redlock is closed. A node
    /// keeps one retry per value (a newer one replaces it), dropped when a later grant of the same
    /// keys on that node shows the value is gone.
    private func retryRelease(
        on index: Int, _ keys: [String], _ value: String, _ expiry: ContinuousClock.Instant,
        _ timeout: Duration, delay: Duration, longest: Duration, chain: RetryChain
    ) {
        guard ContinuousClock.now < expiry, !chain.dropped.load(ordering: .relaxed) else { return }
        let attempt: @Sendable () -> Void = { [weak self] in
            guard let self, !self.isClosed, ContinuousClock.now < expiry else { return }
            self.nodes[index].release(keys: keys, value: value, timeout: timeout) { [weak self] result in
                guard case .failed = result else { return }
                self?.retryRelease(
                    on: index, keys, value, expiry, timeout, delay: min(delay * 2, longest), longest: longest,
                    chain: chain)
            }
        }
        let id: UInt64? = state.withLock { state in
            let limit = state.options.tuning.maxPendingReleasesPerNode
            guard !state.closed, !chain.dropped.load(ordering: .relaxed) else { return nil }
            state.nextRetryID &+= 1
            let id = state.nextRetryID
            let pending = PendingRelease(keys: keys, expiry: expiry, id: id, chain: chain, run: attempt)
            if let replaced = state.releaseRetries[index].updateValue(pending, forKey: value),
                replaced.chain !== chain
            {
                replaced.chain.dropped.store(true, ordering: .relaxed)
            }
            if state.releaseRetries[index].count > limit,
                let soonest = state.releaseRetries[index].min(by: { $0.value.expiry < $1.value.expiry })
            {
                soonest.value.chain.dropped.store(true, ordering: .relaxed)
                state.releaseRetries[index][soonest.key] = nil
            }
            return id
        }
        guard let id else { return }
        Task { [weak self] in
            try? await Task.sleep(for: min(delay, expiry - .now))
            // Runs the retry unless the node's reconnect took it first (or a newer one replaced it).
            let retry: (@Sendable () -> Void)? = self?.state.withLock { state in
                guard let pending = state.releaseRetries[index][value], pending.id == id else { return nil }
                state.releaseRetries[index][value] = nil
                return pending.run
            }
            retry?()
        }
    }

    /// Drops node `index`'s pending releases of exactly `keys`: the node has just granted them to a
    /// new value, so no older value of this client's is left there.
    func supersedeReleases(of keys: [String], on index: Int) {
        guard retryChains.alive.load(ordering: .relaxed) > 0 else { return }
        state.withLock { state in
            state.releaseRetries[index] = state.releaseRetries[index].filter { _, pending in
                guard pending.keys == keys else { return true }
                pending.chain.dropped.store(true, ordering: .relaxed)
                return false
            }
        }
    }

}
