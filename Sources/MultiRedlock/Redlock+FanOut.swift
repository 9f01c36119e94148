extension Redlock {
    /// Runs `operation` on every node at once and returns when the outcome is certain (or, with
    /// `.answered`, when the nodes waited for have answered); `whenAllAnswered` runs once every
    /// node has. A cancellable fan-out returns at once when its task is cancelled, with the answers
    /// so far (undecided); a release is never cut short.
    ///
    /// How answers count is decided by ``QuorumRound``, once for every operation: the node timeout
    /// is strict (an answer that comes after it, though before the node's own timer fired, is a
    /// timeout), a node whose server restarted within the quarantine does not grant, and a node that
    /// is another node's server (same `run_id`) has no vote.
    ///
    /// Returns the tally at the decision, and the round, which goes on recording the answers that
    /// come after it.
    func fanOut(
        _ kind: QuorumRound.Kind,
        options: RedlockOptions,
        until: QuorumRound.Until = .settled,
        cancellable: Bool = false,
        whenAllAnswered: (@Sendable (QuorumTally) -> Void)? = nil,
        _ operation:
            @escaping @Sendable (Int, any RedlockNode, @escaping @Sendable (NodeResult) -> Void) -> Void
    ) async -> (tally: QuorumTally, round: FanOutRound) {
        let nodes = nodes
        let names = names
        let (duplicates, longestTTL) = state.withLock { ($0.duplicateOf, $0.longestTTL) }
        let quarantine: Duration? =
            switch options.restartQuarantine {
            case .longestTTL: longestTTL
            case .fixed(let duration): duration
            case .off: nil
            }
        let rules = QuorumRound.Rules(kind: kind, timeout: options.nodeTimeout, quarantine: quarantine)
        let round = FanOutRound(
            QuorumRound(nodeCount: nodes.count, rules: rules, until: until), whenAllAnswered: whenAllAnswered)
        let tally = await withTaskCancellationHandler {
            // Checked, not unsafe: the unsafe one's hand-over happens inside the Swift runtime,
            // which ThreadSanitizer does not see, so it reported the resumed task's first write
            // as a race with `resume` (make tsan, CI run of 2026-12-04).
            await withCheckedContinuation { continuation in
                round.start(continuation)
                let send: @Sendable () -> Void = {
                    let sent = ContinuousClock.now
                    for (index, node) in nodes.enumerated() {
                        if let first = duplicates[index] {
                            round.duplicate(at: index, of: names[first], serverID: node.serverID ?? "?")
                            continue
                        }
                        operation(index, node) { result in
                            // Counted outside the round's lock (it may read the node's state).
                            let elapsed = kind == .release ? .zero : ContinuousClock.now - sent
                            round.record(
                                rules.counted(result, elapsed: elapsed) { node.timeSinceRestart }, at: index)
                        }
                    }
                }
                // One write batch on the nodes' shared queue (run on this thread when the queue is
                // idle): each command goes straight to hiredis, and all of them are written when
                // `send` returns, with no queue turn per node for the flush.
                if let ioQueue { RedisConnection.batch(on: ioQueue, send) } else { send() }
            }
        } onCancel: {
            if cancellable { round.finishEarly() }
        }
        return (tally, round)
    }
}

/// One fan-out in progress: a ``QuorumRound`` under a lock, and its waiter, resumed once.
final class FanOutRound: Sendable {
    private struct State {
        var round: QuorumRound
        /// The waiter, until it is resumed (held here directly: no closure to allocate for it).
        var waiter: CheckedContinuation<QuorumTally, Never>?
        var whenAllAnswered: (@Sendable (QuorumTally) -> Void)?
    }

    private let state: Locked<State>

    init(_ round: QuorumRound, whenAllAnswered: (@Sendable (QuorumTally) -> Void)? = nil) {
        state = Locked(State(round: round, whenAllAnswered: whenAllAnswered))
    }

    /// What each node answered so far: answers keep coming after the outcome was decided.
    var outcomes: [NodeEvidence.Outcome] { state.withLock { $0.round.tally.outcomes } }

    /// Sets the waiter; it is resumed at once if the round already finished early.
    func start(_ waiter: CheckedContinuation<QuorumTally, Never>) {
        let tally: QuorumTally? = state.withLock { state in
            if state.round.finished { return state.round.tally }
            state.waiter = waiter
            return nil
        }
        if let tally { waiter.resume(returning: tally) }
    }

    /// Records an answer, already counted (``QuorumRound/Rules/counted(_:elapsed:timeSinceRestart:)``).
    func record(_ counted: NodeResult, at index: Int) {
        perform { $0.record(counted, at: index) }
    }

    func duplicate(at index: Int, of first: String, serverID: String) {
        perform { $0.duplicate(at: index, of: first, serverID: serverID) }
    }

    /// Completes now with the answers so far (the task was cancelled).
    func finishEarly() {
        perform { QuorumRound.Action(finish: $0.cancel()) }
    }

    /// What an event hands over to run outside the lock. A struct, not a tuple: its closure then
    /// passes through the lock's generic `withLock` as it is, with no reabstraction thunk
    /// allocated for each.
    private struct Handoff {
        var tally: QuorumTally
        var finish: CheckedContinuation<QuorumTally, Never>?
        var allAnswered: (@Sendable (QuorumTally) -> Void)?
    }

    /// Runs one event of the round under the lock, then what it asks for outside it.
    private func perform(_ event: (inout QuorumRound) -> QuorumRound.Action) {
        let handoff = state.withLock { state -> Handoff? in
            // Answers are recorded after the round finished too: a failed acquire's release reads
            // them (`outcomes`), to skip the nodes that refused.
            let action = event(&state.round)
            var finish: CheckedContinuation<QuorumTally, Never>?
            var allAnswered: (@Sendable (QuorumTally) -> Void)?
            if action.finish {
                finish = state.waiter
                state.waiter = nil
            }
            if action.allAnswered {
                allAnswered = state.whenAllAnswered
                state.whenAllAnswered = nil
            }
            guard finish != nil || allAnswered != nil else { return nil }
            return Handoff(tally: state.round.tally, finish: finish, allAnswered: allAnswered)
        }
        guard let handoff else { return }
        handoff.finish?.resume(returning: handoff.tally)
        handoff.allAnswered?(handoff.tally)
    }
}
