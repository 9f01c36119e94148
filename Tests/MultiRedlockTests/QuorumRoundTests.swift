import Testing

@testable import MultiRedlock

/// One node's answer in a round scenario (a failure is a node failure that came in time).
private enum RoundAnswer: CaseIterable, Sendable {
    case succeeded, refused, failed

    var result: NodeResult {
        switch self {
        case .succeeded: .succeeded
        case .refused: .refused
        case .failed: .failed(NodeFailure(.unreachable, "test"))
        }
    }
}

/// Every permutation of `0..<count` (count! of them).
private func permutations(_ count: Int) -> [[Int]] {
    guard count > 0 else { return [[]] }
    return permutations(count - 1).flatMap { shorter in
        (0...shorter.count).map { position in
            var order = shorter
            order.insert(count - 1, at: position)
            return order
        }
    }
}

/// Every assignment of an answer to each of `count` nodes (3^count).
private func answerSets(_ count: Int) -> [[RoundAnswer]] {
    (0..<count).reduce([[]]) { all, _ in all.flatMap { prefix in RoundAnswer.allCases.map { prefix + [$0] } }
    }
}

/// Every subset of `count` nodes, as a mask.
private func masks(_ count: Int) -> [[Bool]] {
    (0..<(1 << count)).map { bits in (0..<count).map { bits & (1 << $0) != 0 } }
}

@Suite("QuorumRound (pure state machine)")
struct QuorumRoundTests {
    private static let timeout = Duration.milliseconds(100)

    private func round(_ count: Int, _ kind: QuorumRound.Kind = .acquire, until: QuorumRound.Until = .settled)
        -> QuorumRound
    {
        QuorumRound(nodeCount: count, rules: .init(kind: kind, timeout: Self.timeout), until: until)
    }

    /// Until settled: finishes exactly once, at the first answer after which the tally is settled;
    /// all-answered exactly once, with the last answer.
    @Test(
        "until settled: one finish, when settled; one all-answered, at the last (N = 1…5, every set, order)")
    func settledEveryOrder() {
        for count in 1...5 {
            let orders = permutations(count)
            for answers in answerSets(count) {
                for order in orders {
                    var round = round(count)
                    var finishes: [Int] = []
                    var allAnswered: [Int] = []
                    var shadow = QuorumTally(nodeCount: count)
                    var firstSettled: Int?
                    for (step, index) in order.enumerated() {
                        let action = round.answer(answers[index].result, at: index, elapsed: .zero)
                        shadow.record(answers[index].result, at: index)
                        if firstSettled == nil && shadow.isSettled { firstSettled = step }
                        if action.finish { finishes.append(step) }
                        if action.allAnswered { allAnswered.append(step) }
                        #expect(round.tally.outcomes == shadow.outcomes)
                    }
                    // With every answer in, a tally is always settled.
                    #expect(finishes == [firstSettled!], "\(answers) in \(order)")
                    #expect(allAnswered == [count - 1], "\(answers) in \(order)")
                    #expect(round.finished)
                    #expect(round.tally.decision == shadow.decision)
                }
            }
        }
    }

    @Test(
        "until answered: finishes exactly when every awaited node has answered (N = 1…4, every mask, order)")
    func answeredEveryMask() {
        for count in 1...4 {
            let orders = permutations(count)
            for awaited in masks(count) {
                for order in orders {
                    var round = round(count, .release, until: .answered(awaited))
                    var finishes: [Int] = []
                    // The step at which the last awaited node answers (none awaited: the first answer).
                    let lastAwaited = order.indices.last { awaited[order[$0]] } ?? 0
                    for (step, index) in order.enumerated() {
                        let action = round.answer(.refused, at: index, elapsed: .zero)
                        if action.finish { finishes.append(step) }
                    }
                    #expect(finishes == [lastAwaited], "awaited \(awaited), order \(order)")
                }
            }
        }
    }

    @Test("until all answered: the same as until answered with every node awaited (N = 1…4, every order)")
    func allAnsweredIsEveryNodeAwaited() {
        for count in 1...4 {
            for order in permutations(count) {
                for answer in [NodeResult.succeeded, .refused, .failed(NodeFailure(.timeout, "test"))] {
                    var all = round(count, .release, until: .allAnswered)
                    var every = round(count, .release, until: .answered(Array(repeating: true, count: count)))
                    for index in order {
                        let actions = (
                            all.answer(answer, at: index, elapsed: .zero),
                            every.answer(answer, at: index, elapsed: .zero)
                        )
                        #expect(actions.0 == actions.1, "order \(order), \(answer)")
                    }
                    #expect(all.finished && all.tally.answered == count)
                }
            }
        }
    }

    @Test("a second answer for a node is ignored: no second finish, no second all-answered")
    func secondAnswerIgnored() {
        var round = round(3)
        var actions: [QuorumRound.Action] = []
        actions.append(round.answer(.succeeded, at: 0, elapsed: .zero))
        actions.append(round.answer(.succeeded, at: 1, elapsed: .zero))
        actions.append(round.answer(.refused, at: 1, elapsed: .zero))
        actions.append(round.answer(.refused, at: 2, elapsed: .zero))
        actions.append(round.answer(.succeeded, at: 2, elapsed: .zero))
        #expect(actions == [.init(), .init(finish: true), .init(), .init(allAnswered: true), .init()])
        #expect(round.tally.succeeded == 2 && round.tally.refused == 1)
    }

    @Test("cancel finishes an unfinished round once; later answers never finish it again")
    func cancel() {
        var round = round(3)
        _ = round.answer(.succeeded, at: 0, elapsed: .zero)
        let first = round.cancel()
        let second = round.cancel()
        let late = round.answer(.succeeded, at: 1, elapsed: .zero)
        #expect(first && !second, "cancelled once")
        #expect(!late.finish, "the waiter has gone")
        var finished = self.round(1)
        let finish = finished.answer(.succeeded, at: 0, elapsed: .zero)
        let cancelled = finished.cancel()
        #expect(finish.finish && !cancelled, "already finished")
    }

    @Test(
        "the node timeout is strict: an answer later than it is a timeout, whatever it said; on time counts")
    func strictTimeout() {
        for kind in [QuorumRound.Kind.acquire, .extend] {
            let rules = QuorumRound.Rules(kind: kind, timeout: Self.timeout)
            for answer in [NodeResult.succeeded, .refused] {
                #expect(
                    rules.counted(answer, elapsed: Self.timeout) { nil } == answer, "at the timeout: counts")
                let late = rules.counted(answer, elapsed: Self.timeout + .nanoseconds(1)) { nil }
                guard case .failed(let failure) = late else {
                    Issue.record("\(kind) \(answer) late: \(late)")
                    continue
                }
                #expect(failure.kind == .timeout)
            }
            let failed = NodeResult.failed(NodeFailure(.errorReply, "OOM"))
            #expect(rules.counted(failed, elapsed: .seconds(5)) { nil } == failed, "a failure stays itself")
        }
        let release = QuorumRound.Rules(kind: .release, timeout: Self.timeout)
        #expect(
            release.counted(.succeeded, elapsed: .seconds(5)) { nil } == .succeeded, "releases count late")
    }

    @Test(
        "the restart quarantine: a grant within it fails as restarted; past it, refusals, other kinds count")
    func quarantine() {
        let quarantine = Duration.seconds(10)
        let acquire = QuorumRound.Rules(kind: .acquire, timeout: Self.timeout, quarantine: quarantine)
        let within = acquire.counted(.succeeded, elapsed: .zero) { .seconds(3) }
        guard case .failed(let failure) = within else {
            Issue.record("a grant 3 s after a restart counted: \(within)")
            return
        }
        #expect(failure.kind == .restarted && failure.outcomeUnknown)
        #expect(acquire.counted(.succeeded, elapsed: .zero) { quarantine } == .succeeded, "quarantine over")
        #expect(acquire.counted(.succeeded, elapsed: .zero) { nil } == .succeeded, "never restarted")
        #expect(acquire.counted(.refused, elapsed: .zero) { .zero } == .refused, "a refusal is no grant")
        var read = false
        _ = acquire.counted(.refused, elapsed: .zero) {
            read = true
            return nil
        }
        #expect(!read, "the node's restart time is read only for a grant")
        for kind in [QuorumRound.Kind.extend, .release] {
            let rules = QuorumRound.Rules(kind: kind, timeout: Self.timeout, quarantine: quarantine)
            #expect(
                rules.counted(.succeeded, elapsed: .zero) { .zero } == .succeeded, "\(kind): no quarantine")
        }
    }

    @Test("a duplicate node has no vote: failed in acquire and extend rounds, refused in a release round")
    func duplicate() {
        for kind in [QuorumRound.Kind.acquire, .extend, .release] {
            var round = round(3, kind)
            _ = round.duplicate(at: 2, of: "node0", serverID: "abc")
            switch (kind, round.tally.outcomes[2]) {
            case (.release, .refused): break
            case (.acquire, .failed(let failure)), (.extend, .failed(let failure)):
                #expect(failure.kind == .duplicate && failure.message.contains("node0"))
            default: Issue.record("\(kind): \(round.tally.outcomes[2])")
            }
        }
    }
}
