extension Redlock {
    /// What a quorum round was for, for how its outcome is judged and worded.
    enum Operation {
        case acquire, fence, renew, release
    }

    /// Until when a lock set or extended with `ttl` by a round that started at `start` is valid: the
    /// nodes keep the keys for whole milliseconds (PX), less the drift allowance.
    static func validUntil(start: ContinuousClock.Instant, ttl: Duration, options: RedlockOptions)
        -> ContinuousClock.Instant
    {
        start + .milliseconds(ttl.wholeMilliseconds) - options.driftAllowance(for: ttl)
    }

    /// The one place that judges a quorum round: nil when it succeeded, else the error, its kind
    /// and its words.
    ///
    /// Acquire, fence and renew succeed when a quorum agreed and `now` is before `validUntil`. A
    /// failure is, in this order: `closed`; `validityExpired` for a quorum that came too late;
    /// refused by a quorum: `taken` for an acquire, `validityExpired` for a fencing write-back
    /// (its refusals mean this attempt's keys expired), else `notHeld`; otherwise
    /// `quorumUnavailable`. A grant that comes in while ``close()`` runs (`closed`) is not returned.
    ///
    /// A release succeeds when any node released the keys; otherwise it is `notHeld` when every
    /// node answered, else `quorumUnavailable` (`closed` and `validUntil` do not apply).
    func verdict(
        _ operation: Operation, _ tally: QuorumTally, resource: String, attempts: Int = 1,
        elapsed: Duration = .zero, validUntil: ContinuousClock.Instant? = nil,
        now: ContinuousClock.Instant = .now,
        closed: Bool = false
    ) -> RedlockError? {
        if operation == .release {
            if tally.succeeded > 0 { return nil }
            if tally.failed == 0 {
                return RedlockError(
                    .notHeld, resource: resource, attempts: attempts, nodes: tally.evidence(names: names),
                    message: "no node held the lock (expired, released, or another owner's)")
            }
            return RedlockError(
                .quorumUnavailable, resource: resource, attempts: attempts,
                nodes: tally.evidence(names: names),
                message:
                    "no node released the lock: \(tally.refused) did not hold it, \(tally.failed) failed")
        }
        let inTime = validUntil.map { now < $0 } ?? true
        if tally.decision == .succeeded && inTime && !(closed && operation == .acquire) { return nil }
        if closed {
            return RedlockError(
                .closed, resource: resource, attempts: attempts, message: "redlock was closed")
        }
        let verb =
            switch operation {
            case .acquire: "granted the lock"
            case .fence: "took the fencing token"
            case .renew: "extended the lock"
            case .release: "released the lock"
            }
        if tally.decision == .succeeded {
            return RedlockError(
                .validityExpired, resource: resource, attempts: attempts, nodes: tally.evidence(names: names),
                message: "a quorum \(verb), but that took \(elapsed), leaving no validity")
        }
        if tally.refusedByQuorum {
            switch operation {
            case .acquire:
                return RedlockError(
                    .taken, resource: resource, attempts: attempts, nodes: tally.evidence(names: names),
                    message:
                        "held by someone else: \(tally.refused) of \(nodes.count) nodes hold another value")
            case .fence:
                return RedlockError(
                    .validityExpired, resource: resource, attempts: attempts,
                    nodes: tally.evidence(names: names),
                    message:
                        "the lock expired before its fencing token was written back: \(tally.refused) of "
                        + "\(nodes.count) nodes no longer hold it")
            case .renew, .release:
                return RedlockError(
                    .notHeld, resource: resource, attempts: attempts, nodes: tally.evidence(names: names),
                    message: "the lock is not held (expired, released, or another owner's) on enough nodes")
            }
        }
        return RedlockError(
            .quorumUnavailable, resource: resource, attempts: attempts, nodes: tally.evidence(names: names),
            message:
                "not enough nodes answered: \(tally.succeeded) \(operation == .acquire ? "granted" : "succeeded"), "
                + "\(tally.refused) refused, \(tally.failed) failed; \(quorum) of \(nodes.count) needed")
    }
}
