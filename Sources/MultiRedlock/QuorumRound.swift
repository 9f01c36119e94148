/// One quorum round over N nodes as a pure state machine: how each node's answer counts (the
/// strict node timeout, the restart quarantine, one vote per server), the ``QuorumTally`` of those
/// answers, and when the awaited part of the round is over ("decide when").
///
/// No I/O, no clock, no tasks: the caller passes each answer with the time it took, and carries
/// out the returned ``Action`` (resume the waiter, start the background retries). The fan-out in
/// `Redlock+FanOut.swift` drives it under a lock.
struct QuorumRound: Sendable {
    /// What the round asks of the nodes, for how their answers count.
    enum Kind: Sendable {
        /// SET NX: a late answer is a timeout, a restarted node's grant does not count yet, and a
        /// duplicate node fails.
        case acquire
        /// Compare-and-pexpire (renew, fencing write-back): a late answer is a timeout, and a
        /// duplicate node fails.
        case extend
        /// Compare-and-delete: answers count as they come; a duplicate node is not asked (its server
        /// is asked as the earlier node) and counts as refused.
        case release
    }

    /// When the awaited part of a round is over.
    enum Until: Sendable, Equatable {
        /// The quorum's outcome and its kind are final (see ``QuorumTally/isSettled``).
        case settled
        /// Every node marked true has answered (the others may still answer later).
        case answered([Bool])
        /// Every node has answered (`answered` with every node marked, without the array).
        case allAnswered
    }

    /// What the caller must do after an event. Each is true at most once per round.
    struct Action: Sendable, Equatable {
        /// Hand the tally to the waiter: the awaited part is over.
        var finish = false
        /// Every node has answered (for the background work that needs all answers).
        var allAnswered = false
    }

    /// How answers count in a round.
    struct Rules: Sendable {
        let kind: Kind
        /// The node timeout, strict: an answer that took longer counts as a timeout.
        let timeout: Duration
        /// How long a restarted node's grants do not count (acquire rounds only); nil for none.
        let quarantine: Duration?

        init(kind: Kind, timeout: Duration, quarantine: Duration? = nil) {
            self.kind = kind
            self.timeout = timeout
            self.quarantine = kind == .acquire ? quarantine : nil
        }

        /// How an answer that came `elapsed` after the round was sent counts. `timeSinceRestart` (how
        /// long ago the node saw its server restart) is read only for a grant under a quarantine.
        func counted(_ result: NodeResult, elapsed: Duration, timeSinceRestart: () -> Duration?) -> NodeResult
        {
            if kind == .release { return result }
            if case .failed = result { return result }
            if elapsed > timeout {
                // Whatever the command did (it ran), the answer is too late to count.
                return .failed(
                    NodeFailure(.timeout, "answered after \(elapsed), past the node timeout of \(timeout)"))
            }
            if result == .succeeded, let quarantine, let since = timeSinceRestart(), since < quarantine {
                return .failed(
                    NodeFailure(
                        .restarted,
                        "the server restarted \(since) ago (new run_id); its grants count again in \(quarantine - since)"
                    ))
            }
            return result
        }
    }

    let rules: Rules
    let until: Until
    private(set) var tally: QuorumTally
    private(set) var finished = false
    private var allAnsweredSeen = false

    init(nodeCount: Int, rules: Rules, until: Until = .settled) {
        self.rules = rules
        self.until = until
        tally = QuorumTally(nodeCount: nodeCount)
    }

    /// Node `index` answered `result`, `elapsed` after the round was sent (see ``Rules/counted``).
    mutating func answer(
        _ result: NodeResult, at index: Int, elapsed: Duration, timeSinceRestart: () -> Duration? = { nil }
    ) -> Action {
        record(rules.counted(result, elapsed: elapsed, timeSinceRestart: timeSinceRestart), at: index)
    }

    /// Node `index` is the same server as node `first` (the same `run_id`): it has no vote.
    mutating func duplicate(at index: Int, of first: String, serverID: String) -> Action {
        let failure = NodeFailure(.duplicate, "the same server as \(first) (run_id \(serverID)): one vote")
        return record(rules.kind == .release ? .refused : .failed(failure), at: index)
    }

    /// The waiter gave up (its task was cancelled): true when the round must finish now with the
    /// answers so far, false when it has finished already.
    mutating func cancel() -> Bool {
        guard !finished else { return false }
        finished = true
        return true
    }

    /// Records an answer as it counts (see ``Rules/counted``); a second answer for a node is ignored.
    mutating func record(_ result: NodeResult, at index: Int) -> Action {
        tally.record(result, at: index)
        var action = Action()
        if tally.answered == tally.total && !allAnsweredSeen {
            allAnsweredSeen = true
            action.allAnswered = true
        }
        guard !finished else { return action }
        let done =
            switch until {
            case .settled: tally.isSettled
            case .answered(let awaited):
                tally.outcomes.indices.allSatisfy { !awaited[$0] || tally.outcomes[$0] != .pending }
            case .allAnswered: tally.answered == tally.total
            }
        if done {
            finished = true
            action.finish = true
        }
        return action
    }
}
