/// Counts the nodes' answers to one fan-out and decides as soon as the outcome is certain:
/// a quorum for, or so many against that a quorum is out of reach. Pure: no I/O, no clock.
struct QuorumTally: Sendable {
    enum Decision: Sendable, Equatable {
        case undecided, succeeded, failed
    }

    /// N/2+1 of the configured N (never of the nodes that happen to be connected).
    let quorum: Int
    private(set) var outcomes: [NodeEvidence.Outcome]
    private(set) var succeeded = 0
    private(set) var refused = 0
    private(set) var failed = 0

    init(nodeCount: Int) {
        quorum = nodeCount / 2 + 1
        outcomes = Array(repeating: .pending, count: nodeCount)
    }

    var total: Int { outcomes.count }
    var answered: Int { succeeded + refused + failed }

    var decision: Decision {
        if succeeded >= quorum { return .succeeded }
        if total - refused - failed < quorum { return .failed }
        return .undecided
    }

    /// Whether the outcome and its kind are both final: succeeded, or failed with the refusals
    /// either ruling a quorum out already or unable to any more (too few answers pending), so that
    /// ``refusedByQuorum`` cannot change. A failure is reported only once settled: otherwise the
    /// error's kind would depend on which nodes happened to answer first.
    var isSettled: Bool {
        switch decision {
        case .undecided: false
        case .succeeded: true
        case .failed: refusedByQuorum || refused + (total - answered) <= total - quorum
        }
    }

    /// Records node `index`'s answer (a second answer for one node is ignored).
    mutating func record(_ result: NodeResult, at index: Int) {
        guard case .pending = outcomes[index] else { return }
        switch result {
        case .succeeded:
            succeeded += 1
            outcomes[index] = .granted
        case .refused:
            refused += 1
            outcomes[index] = .refused
        case .failed(let failure):
            failed += 1
            outcomes[index] = .failed(failure)
        }
    }

    /// Whether the refusals alone rule a quorum out: the resource is held by someone else (or, for
    /// renew and release, not held by us), whatever the failed nodes would have said.
    var refusedByQuorum: Bool { refused > total - quorum }

    /// The nodes that granted, by index.
    var grantedIndices: [Int] {
        var granted: [Int] = []
        granted.reserveCapacity(succeeded)
        for index in outcomes.indices where outcomes[index] == .granted { granted.append(index) }
        return granted
    }

    /// The names of the nodes that granted (`names` by node index), in node order: one allocation.
    func grantedNames(_ names: [String]) -> [String] {
        var granted: [String] = []
        granted.reserveCapacity(succeeded)
        for index in outcomes.indices where outcomes[index] == .granted { granted.append(names[index]) }
        return granted
    }

    func evidence(names: [String]) -> [NodeEvidence] {
        zip(names, outcomes).map { NodeEvidence(node: $0, outcome: $1) }
    }
}
