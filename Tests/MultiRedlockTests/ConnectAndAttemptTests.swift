import MultiRedlockTesting
import Synchronization
import Testing

@testable import MultiRedlock

/// Mock nodes, all disconnected at first.
private func disconnectedNodes(_ count: Int) -> [MockRedlockNode] {
    (0..<count).map { index in
        let node = MockRedlockNode(name: "node\(index)")
        node.setConnected(false)
        return node
    }
}

/// Collects what ``RedlockOptions/onAttempt`` reports.
private final class AttemptRecorder: Sendable {
    private let attempts = Locked<[AcquireAttempt]>([])
    var all: [AcquireAttempt] { attempts.withLock { $0 } }
    func record(_ attempt: AcquireAttempt) { attempts.withLock { $0.append(attempt) } }
}

/// Whether `flag` becomes true within 10 s (a bound for a loaded machine, not a measurement): the
/// waits below are given a minute, so a wait that is not woken up stays false here.
private func becomesTrue(_ flag: borrowing Atomic<Bool>) async -> Bool {
    let deadline = ContinuousClock.now + .seconds(10)
    while !flag.load(ordering: .sequentiallyConsistent) && ContinuousClock.now < deadline {
        try? await Task.sleep(for: .milliseconds(5))
    }
    return flag.load(ordering: .sequentiallyConsistent)
}

@Suite("waitUntilConnected and onAttempt")
struct ConnectAndAttemptTests {
    @Test("waitUntilConnected returns once a quorum connects, not before")
    func waitsForAQuorum() async throws {
        let nodes = disconnectedNodes(3)
        let redlock = try Redlock(nodes: nodes, options: RedlockOptions(id: "t"))
        let returned = Atomic<Bool>(false)
        let waiter = Task {
            defer { returned.store(true, ordering: .sequentiallyConsistent) }
            try await redlock.waitUntilConnected(timeout: .seconds(60))
        }
        nodes[0].setConnected(true)
        try await Task.sleep(for: .milliseconds(50))
        let returnedNow = returned.load(ordering: .sequentiallyConsistent)
        #expect(!returnedNow, "one node of three is no quorum")
        nodes[2].setConnected(true)
        #expect(await becomesTrue(returned), "woken by the node that made the quorum")
        try await waiter.value
        #expect(redlock.isConnected)
        // Already connected: returns at once, even with no time to wait.
        try await redlock.waitUntilConnected(timeout: .zero)
        await redlock.close()
    }

    @Test("with all, it waits for every node; at the timeout a quorum is enough")
    func waitsForAll() async throws {
        let nodes = disconnectedNodes(3)
        let redlock = try Redlock(nodes: nodes, options: RedlockOptions(id: "t"))
        nodes[0].setConnected(true)
        nodes[1].setConnected(true)
        let returned = Atomic<Bool>(false)
        let waiter = Task {
            defer { returned.store(true, ordering: .sequentiallyConsistent) }
            try await redlock.waitUntilConnected(timeout: .seconds(60), all: true)
        }
        try await Task.sleep(for: .milliseconds(50))
        let early = returned.load(ordering: .sequentiallyConsistent)
        #expect(!early, "a quorum is not every node")
        nodes[2].setConnected(true)
        #expect(await becomesTrue(returned), "woken by the last node")
        try await waiter.value
        #expect(nodes.allSatisfy { $0.isConnected })
        nodes[2].setConnected(false)
        try await redlock.waitUntilConnected(timeout: .milliseconds(20), all: true)  // a quorum: no error
        await redlock.close()
    }

    @Test("no quorum in time: quorumUnavailable naming the nodes down; closed: closed; negative: invalid")
    func failures() async throws {
        let nodes = disconnectedNodes(3)
        let redlock = try Redlock(nodes: nodes, options: RedlockOptions(id: "t"))
        nodes[1].setConnected(true)
        await #expect {
            try await redlock.waitUntilConnected(timeout: .milliseconds(30))
        } throws: { error in
            guard let error = error as? RedlockError else { return false }
            return error.kind == .quorumUnavailable && error.message.contains("1 of 3 nodes connected")
                && error.message.contains("node0") && error.message.contains("node2")
                && !error.message.contains("node1:")
        }
        await #expect {
            try await redlock.waitUntilConnected(timeout: .seconds(-1))
        } throws: { ($0 as? RedlockError)?.kind == .invalidArgument }
        // A waiter is released by close().
        let waiter = Task { try await redlock.waitUntilConnected(timeout: .seconds(60)) }
        try await Task.sleep(for: .milliseconds(20))
        await redlock.close()
        await #expect { try await waiter.value } throws: { ($0 as? RedlockError)?.kind == .closed }
    }

    @Test("gives up early, before its timeout, once every node not connected has failed to connect since")
    func givesUpWhenEveryNodeFailed() async throws {
        let nodes = disconnectedNodes(3)
        let redlock = try Redlock(nodes: nodes, options: RedlockOptions(id: "t"))
        let returned = Atomic<Bool>(false)
        let waiter = Task {
            defer { returned.store(true, ordering: .sequentiallyConsistent) }
            try await redlock.waitUntilConnected(timeout: .seconds(60))
        }
        try await Task.sleep(for: .milliseconds(20))
        for node in nodes.prefix(2) {
            node.setConnected(true)  // a connection that came up and broke: a failure since the call
            node.setConnected(false)
        }
        try await Task.sleep(for: .milliseconds(50))
        let returnedNow = returned.load(ordering: .sequentiallyConsistent)
        #expect(!returnedNow, "node2 has not failed since the call")
        nodes[2].setConnected(true)
        nodes[2].setConnected(false)
        #expect(await becomesTrue(returned), "given up once every node failed, long before the minute")
        await #expect { try await waiter.value } throws: { error in
            guard let error = error as? RedlockError else { return false }
            return error.kind == .quorumUnavailable && error.message.contains("0 of 3 nodes connected")
        }
        await redlock.close()
    }

    @Test("a cancelled wait ends at once with quorumUnavailable")
    func cancelled() async throws {
        let redlock = try Redlock(nodes: disconnectedNodes(3), options: RedlockOptions(id: "t"))
        let returned = Atomic<Bool>(false)
        let waiter = Task {
            defer { returned.store(true, ordering: .sequentiallyConsistent) }
            try await redlock.waitUntilConnected(timeout: .seconds(60))
        }
        try await Task.sleep(for: .milliseconds(20))
        waiter.cancel()
        #expect(await becomesTrue(returned), "ended by the cancellation")
        await #expect { try await waiter.value } throws: { error in
            guard let error = error as? RedlockError else { return false }
            return error.kind == .quorumUnavailable && error.message.contains("cancelled")
        }
        await redlock.close()
    }

    @Test("onAttempt reports every attempt: number, resource, outcome, the wait before the next")
    func attemptsAreReported() async throws {
        let nodes = (0..<3).map { MockRedlockNode(name: "node\($0)") }
        for node in nodes { node.set(key: "r", value: "someone-else", ttl: .seconds(60)) }
        let recorder = AttemptRecorder()
        var options = RedlockOptions(id: "t", retries: 2, retryWait: .milliseconds(5))
        options.onAttempt = { recorder.record($0) }
        let redlock = try Redlock(nodes: nodes, options: options)
        await #expect { try await redlock.lock("r", ttl: .seconds(10)) } throws: {
            ($0 as? RedlockError)?.kind == .taken
        }
        let failed = recorder.all
        #expect(failed.map(\.number) == [1, 2, 3])
        #expect(failed.allSatisfy { $0.resource == "r" && $0.resources == ["r"] && $0.outcome == "taken" })
        #expect(failed.map { $0.retryIn == nil } == [false, false, true], "no wait after the last")
        #expect(failed.allSatisfy { $0.elapsed >= .zero && ($0.retryIn ?? .zero) <= .milliseconds(5) })
        for node in nodes { node.removeAll() }
        let lock = try await redlock.lock(["a", "b"], ttl: .seconds(10))
        let granted = try #require(recorder.all.last)
        #expect(granted.number == 1 && granted.outcome == "granted" && granted.resource == "a,b")
        #expect(try granted.result.get() == lock)
        await redlock.close()
    }
}
