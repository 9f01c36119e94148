import Testing

@testable import MultiRedlock

/// One node's answer in a tally scenario.
private enum Answer: CaseIterable, Sendable {
    case succeeded, refused, failed

    var result: NodeResult {
        switch self {
        case .succeeded: .succeeded
        case .refused: .refused
        case .failed: .failed(NodeFailure(.timeout, "test"))
        }
    }
}

/// Every assignment of an answer to each of `count` nodes: 3^count of them.
private func assignments(_ count: Int) -> [[Answer]] {
    var all: [[Answer]] = [[]]
    for _ in 0..<count {
        all = all.flatMap { prefix in Answer.allCases.map { prefix + [$0] } }
    }
    return all
}

/// A few orders in which `count` nodes may answer: in order, reversed, every rotation, and a few
/// shuffles from a fixed seed (so the tests are deterministic).
private func orders(_ count: Int) -> [[Int]] {
    let identity = Array(0..<count)
    var orders = [identity, identity.reversed()]
    for shift in 1..<max(count, 1) {
        orders.append(Array(identity[shift...] + identity[..<shift]))
    }
    var generator = SplitMix64(seed: UInt64(count))
    for _ in 0..<4 {
        orders.append(identity.shuffled(using: &generator))
    }
    var seen = Set<[Int]>()
    return orders.filter { seen.insert($0).inserted }
}

/// A small deterministic generator for the shuffles.
private struct SplitMix64: RandomNumberGenerator {
    var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

@Suite("QuorumTally")
struct QuorumTallyTests {
    @Test(
        "the quorum is N/2+1 of the configured N",
        arguments: [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4)])
    func quorum(nodeCount: Int, quorum: Int) {
        let tally = QuorumTally(nodeCount: nodeCount)
        #expect(tally.quorum == quorum)
        #expect(tally.total == nodeCount)
        #expect(tally.answered == 0)
        #expect(tally.decision == .undecided)
        #expect(!tally.refusedByQuorum)
        #expect(tally.outcomes == Array(repeating: .pending, count: nodeCount))
    }

    @Test(
        "every assignment, in several orders: decided exactly when certain, and never changed",
        arguments: 1...5)
    func everyAssignment(nodeCount: Int) async {
        let quorum = nodeCount / 2 + 1
        let allOrders = orders(nodeCount)
        var cases = 0
        // Checked in plain code and reported once: an #expect per step would be slow.
        var problems: [String] = []
        func check(_ condition: Bool, _ problem: @autoclosure () -> String) {
            if !condition && problems.count < 20 { problems.append(problem()) }
        }
        for assignment in assignments(nodeCount) {
            let succeededTotal = assignment.count { $0 == .succeeded }
            let refusedTotal = assignment.count { $0 == .refused }
            let expectedFinal: QuorumTally.Decision = succeededTotal >= quorum ? .succeeded : .failed
            for order in allOrders {
                cases += 1
                var tally = QuorumTally(nodeCount: nodeCount)
                check(tally.decision == .undecided, "decided before any answer")
                var firstDecision: QuorumTally.Decision?
                var succeeded = 0
                var refused = 0
                var failed = 0
                for (step, index) in order.enumerated() {
                    tally.record(assignment[index].result, at: index)
                    switch assignment[index] {
                    case .succeeded: succeeded += 1
                    case .refused: refused += 1
                    case .failed: failed += 1
                    }
                    let pending = nodeCount - step - 1
                    // Certain once a quorum granted, or once the grants plus the pending answers
                    // cannot reach it any more.
                    let certain: QuorumTally.Decision =
                        succeeded >= quorum ? .succeeded : succeeded + pending < quorum ? .failed : .undecided
                    let decision = tally.decision
                    let context = { "answers \(assignment) in order \(order), after \(step + 1) answers" }
                    check(decision == certain, "decision \(decision), certain \(certain); \(context())")
                    if let firstDecision {
                        check(
                            decision == firstDecision,
                            "changed from \(firstDecision) to \(decision); \(context())")
                    } else if decision != .undecided {
                        firstDecision = decision
                        check(
                            decision == expectedFinal,
                            "decided \(decision), not \(expectedFinal); \(context())")
                    }
                    check(
                        tally.refusedByQuorum == (refused > nodeCount - quorum),
                        "refusedByQuorum \(tally.refusedByQuorum); \(context())")
                    check(
                        (tally.succeeded, tally.refused, tally.failed, tally.answered)
                            == (succeeded, refused, failed, step + 1), "counts; \(context())")
                }
                check(tally.decision == expectedFinal, "final \(tally.decision); \(assignment) in \(order)")
                check(
                    tally.refusedByQuorum == (refusedTotal > nodeCount - quorum),
                    "final refusedByQuorum \(tally.refusedByQuorum); \(assignment) in \(order)")
            }
            await Task.yield()
        }
        #expect(problems.isEmpty, "\(problems.joined(separator: "\n"))")
        #expect(cases == allOrders.count * pow3(nodeCount))
        #expect(allOrders.count >= min(nodeCount, 3))
    }

    @Test("a second answer from one node is ignored")
    func secondAnswerIgnored() {
        var tally = QuorumTally(nodeCount: 3)
        tally.record(.refused, at: 0)
        tally.record(.succeeded, at: 0)
        tally.record(.failed(NodeFailure(.timeout, "late")), at: 0)
        #expect(tally.refused == 1)
        #expect(tally.succeeded == 0)
        #expect(tally.failed == 0)
        #expect(tally.answered == 1)
        #expect(tally.outcomes == [.refused, .pending, .pending])
    }

    @Test("the evidence pairs names with outcomes, pending included")
    func evidence() {
        var tally = QuorumTally(nodeCount: 3)
        let failure = NodeFailure(.errorReply, "OOM")
        tally.record(.succeeded, at: 0)
        tally.record(.failed(failure), at: 2)
        #expect(
            tally.evidence(names: ["a", "b", "c"]) == [
                NodeEvidence(node: "a", outcome: .granted),
                NodeEvidence(node: "b", outcome: .pending),
                NodeEvidence(node: "c", outcome: .failed(failure)),
            ])
    }

    @Test("grantedNames and grantedIndices list the granting nodes in node order (N = 1…5, every answer set)")
    func grantedNamesFollowOutcomes() {
        for count in 1...5 {
            let names = (0..<count).map { "node-\($0)" }
            for answers in assignments(count) {
                var tally = QuorumTally(nodeCount: count)
                for (index, answer) in answers.enumerated().reversed() {
                    tally.record(answer.result, at: index)
                }
                let expected = answers.indices.filter { answers[$0] == .succeeded }
                #expect(tally.grantedIndices == expected, "\(answers)")
                #expect(tally.grantedNames(names) == expected.map { names[$0] }, "\(answers)")
            }
        }
    }
}

private func pow3(_ exponent: Int) -> Int {
    (0..<exponent).reduce(1) { product, _ in product * 3 }
}
