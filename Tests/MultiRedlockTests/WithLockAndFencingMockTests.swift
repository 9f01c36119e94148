import Dispatch
import MultiRedlock
import MultiRedlockTesting
import Synchronization
import TestSupport
import Testing

// withLock and the fencing write-back over in-memory nodes (no Redis): the algorithm's side of
// behaviours that ScopedLockTests and MultiResourceAndFencingTests check on real servers.

/// Nodes named `node0`, `node1`, … whose keys expire in real time (withLock renews against the
/// real clock).
private func realTimeNodes(_ count: Int) -> [MockRedlockNode] {
    (0..<count).map { MockRedlockNode(name: "node\($0)") }
}

private func options(
    nodeTimeout: Duration = .milliseconds(200), fencing: Bool = false, retries: Int = 0
) -> RedlockOptions {
    var options = RedlockOptions(
        id: "mock", drift: .milliseconds(10), driftFactor: 0.01, retries: retries,
        retryWait: .milliseconds(2), nodeTimeout: nodeTimeout)
    options.fencingTokens = fencing
    return options
}

/// On executors of their own (`.ownExecutor`): these tests check what withLock's background renewal
/// does on time, and on the cooperative pool the renewal waited behind the whole suite's first jobs
/// (7 s under AddressSanitizer in CI, past a 5 s ttl's validity).
@Suite("withLock over mock nodes", .ownExecutor)
struct WithLockMockTests {
    @Test("renews while the body outlives the ttl, then releases on every node")
    func renewsAndReleases() async throws {
        let nodes = realTimeNodes(3)
        let redlock = try Redlock(nodes: nodes, options: options())
        let seen = Locked<[String]>([])
        // A ttl of 6 s: the renewal is due 2 s in, with 4 s to spare for a loaded machine.
        let result = try await redlock.withLock("r", ttl: .seconds(6)) { held in
            // 1.5 ttls long: without renewals the keys would expire under the body.
            for _ in 0..<3 {
                try await Task.sleep(for: .milliseconds(3000))
                let values = nodes.map { $0.value(of: "r") }
                seen.withLock { $0.append(values.allSatisfy { $0 == held.value } ? "held" : "\(values)") }
                #expect(held.isValid)
            }
            return held.value
        }
        #expect(seen.withLock { $0 } == Array(repeating: "held", count: 3))
        for node in nodes {
            #expect(node.calls.count { $0.isExtend && $0.key == "r" } >= 1, "\(node.name): \(node.calls)")
            #expect(node.calls.contains(.release(key: "r", value: result)), "\(node.name)")
            #expect(node.value(of: "r") == nil)
        }
    }

    @Test("a multi-resource withLock holds, renews and releases every key")
    func multiResource() async throws {
        let nodes = realTimeNodes(3)
        let redlock = try Redlock(nodes: nodes, options: options())
        let keys = ["a", "b", "c"]
        let value = try await redlock.withLock(keys, ttl: .seconds(6)) { held in
            #expect(held.lock.resources == keys)
            for _ in 0..<3 {
                try await Task.sleep(for: .milliseconds(3000))
                for node in nodes {
                    #expect(keys.allSatisfy { node.value(of: $0) == held.value }, "\(node.name)")
                }
            }
            return held.value
        }
        for node in nodes {
            #expect(node.calls.contains { $0.isExtend && $0.keys == keys }, "renewed all keys at once")
            #expect(node.calls.contains { $0.isRelease && $0.keys == keys && $0.value == value })
            #expect(keys.allSatisfy { node.value(of: $0) == nil })
        }
    }

    @Test("the body's error is rethrown and the lock released")
    func bodyThrows() async throws {
        struct BodyFailed: Error {}
        let nodes = realTimeNodes(3)
        let redlock = try Redlock(nodes: nodes, options: options())
        await #expect(throws: BodyFailed.self) {
            try await redlock.withLock("r", ttl: .seconds(10)) { _ in throw BodyFailed() }
        }
        #expect(nodes.allSatisfy { $0.value(of: "r") == nil })
    }

    @Test("cancelling the calling task cancels the body, throws CancellationError and releases at once")
    func callerCancelled() async throws {
        let nodes = realTimeNodes(3)
        let redlock = try Redlock(nodes: nodes, options: options())
        let bodyRunning = Atomic<Bool>(false)
        let bodyCancelled = Atomic<Bool>(false)
        let task = Task(executorPreference: OwnExecutorTrait.executor) {
            try await redlock.withLock("r", ttl: .seconds(30)) { _ in
                bodyRunning.store(true, ordering: .sequentiallyConsistent)
                do {
                    try await Task.sleep(for: .seconds(60))
                } catch {
                    bodyCancelled.store(true, ordering: .sequentiallyConsistent)
                    throw error
                }
            }
        }
        #expect(
            await eventually(timeout: .seconds(5)) { bodyRunning.load(ordering: .sequentiallyConsistent) })
        let value = try #require(nodes[0].value(of: "r"))
        let cancelled = ContinuousClock.now
        task.cancel()
        let result = await task.result
        #expect(ContinuousClock.now - cancelled < .seconds(5))
        #expect(throws: CancellationError.self) { try result.get() }
        let wasCancelled = bodyCancelled.load(ordering: .sequentiallyConsistent)
        #expect(wasCancelled)
        // Released (not left to expire in 30 s) on every node. The release is a task of the
        // Redlock's, on the cooperative pool: the bound leaves room for the pool's backlog.
        #expect(
            await eventually(timeout: .seconds(10)) { nodes.allSatisfy { $0.value(of: "r") == nil } },
            "\(nodes.map(\.calls))")
        for node in nodes { #expect(node.calls.contains(.release(key: "r", value: value)), "\(node.name)") }
    }

    @Test("a lock lost while the body runs: the body is cancelled and withLock throws .lost")
    func lostLock() async throws {
        let nodes = realTimeNodes(3)
        let redlock = try Redlock(nodes: nodes, options: options(nodeTimeout: .milliseconds(50)))
        let bodyCancelled = Atomic<Bool>(false)
        let start = ContinuousClock.now
        let error = try await #require(throws: RedlockError.self) {
            try await redlock.withLock("r", ttl: .seconds(1)) { held in
                // A majority goes away: no renewal can succeed.
                nodes[1].isDown = true
                nodes[2].isDown = true
                do {
                    try await Task.sleep(for: .seconds(10))
                } catch {
                    bodyCancelled.store(true, ordering: .sequentiallyConsistent)
                    #expect(!held.isValid)
                    throw error
                }
            }
        }
        #expect(error.kind == .lost, "\(error)")
        let wasCancelled = bodyCancelled.load(ordering: .sequentiallyConsistent)
        #expect(wasCancelled)
        // Cancelled once the validity (1 s − drift) ran out, not after the body's 10 s.
        #expect(ContinuousClock.now - start < .seconds(5))
    }

    @Test("a body that throws its own error after the lock was lost: withLock throws .lost")
    func bodyThrowsAfterTheLockWasLost() async throws {
        struct BodyFailed: Error {}
        let nodes = realTimeNodes(3)
        let redlock = try Redlock(nodes: nodes, options: options(nodeTimeout: .milliseconds(50)))
        let value = Locked<String?>(nil)
        let error = try await #require(throws: RedlockError.self) {
            try await redlock.withLock("r", ttl: .seconds(5)) { held in
                value.withLock { $0 = held.value }
                // Someone deletes the keys on a majority: the next renewal is refused (.notHeld).
                nodes[0].removeAll()
                nodes[1].removeAll()
                // The body ignores cancellation; it notices the loss itself, then fails its own way.
                let deadline = ContinuousClock.now + .seconds(10)
                while held.isValid && ContinuousClock.now < deadline {
                    await withCheckedContinuation { continuation in
                        DispatchQueueSleep.after(.milliseconds(10)) { continuation.resume() }
                    }
                }
                #expect(held.lostError?.kind == .lost)
                throw BodyFailed()
            }
        }
        // The loss is what the caller must hear about, not the body's own error.
        #expect(error.kind == .lost, "\(error)")
        #expect(error.nodes.contains { $0.outcome == .refused }, "\(error)")
        // And the node that still had it was asked to release it, not left to let it expire. The
        // release is a task on the cooperative pool: the bound leaves room for the pool's backlog,
        // and the call is checked, not the key, which expires by itself 5 s in.
        let released = try #require(value.withLock { $0 })
        #expect(
            await eventually(timeout: .seconds(10)) {
                nodes[2].calls.contains(.release(key: "r", value: released))
            }, "\(nodes[2].calls)")
    }
}

/// A sleep that ignores task cancellation (Task.sleep would end at once in a cancelled task).
private enum DispatchQueueSleep {
    static func after(_ delay: Duration, _ work: @escaping @Sendable () -> Void) {
        let (seconds, attoseconds) = delay.components
        let nanoseconds = Int(seconds) * 1_000_000_000 + Int(attoseconds / 1_000_000_000)
        DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(nanoseconds), execute: work)
    }
}

/// A mock node whose fencing write-back (`raiseFence`) can be made to fail with an error reply,
/// while everything else (the fenced SET included) works: "the write-back failed on this node".
private final class WriteBackFailingNode: ForwardingNode, FencingRedlockNode {
    let inner: MockRedlockNode
    private let failing = Atomic<Bool>(false)

    init(_ inner: MockRedlockNode) { self.inner = inner }

    var failsWriteBack: Bool {
        get { failing.load(ordering: .sequentiallyConsistent) }
        set { failing.store(newValue, ordering: .sequentiallyConsistent) }
    }

    func raiseFence(
        key: String, counterKey: String, value: String, token: Int64, timeout: Duration,
        completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        if failsWriteBack {
            completion(
                .failed(NodeFailure(.errorReply, "OOM command not allowed when used memory > 'maxmemory'")))
        } else {
            inner.raiseFence(
                key: key, counterKey: counterKey, value: value, token: token, timeout: timeout,
                completion: completion)
        }
    }
}

@Suite("fencing write-back over mock nodes")
struct FencingWriteBackMockTests {
    /// A token is only handed out once a majority stored it: when the write-back fails on a majority,
    /// the lock is refused (`.quorumUnavailable`, naming the write-back's failures), its keys are
    /// released everywhere, and the next grant's token still exceeds every token handed out before.
    @Test("the write-back failing on a majority: no lock, nothing left, tokens still increase")
    func writeBackFailsOnAMajority() async throws {
        let nodes = realTimeNodes(3).map(WriteBackFailingNode.init)
        let redlock = try Redlock(nodes: nodes, options: options(fencing: true))
        let counterKey = Lock.fencingKey(for: "r")
        let first = try await redlock.lock("r", ttl: .seconds(10))
        #expect(first.fencingToken == 1)
        try await redlock.release(first)

        nodes[0].failsWriteBack = true
        nodes[1].failsWriteBack = true
        let error = try await #require(throws: RedlockError.self) {
            try await redlock.lock("r", ttl: .seconds(10))
        }
        #expect(error.kind == .quorumUnavailable, "\(error)")
        #expect(
            error.nodes.contains {
                if case .failed(let failure) = $0.outcome { failure.message.contains("OOM") } else { false }
            }, "\(error)")
        // The fenced SETs went through on every node; the failed attempt's keys are released everywhere.
        #expect(nodes.allSatisfy { $0.inner.calls.contains { $0.isAcquire && $0.key == "r" } })
        #expect(
            await eventually(timeout: .seconds(2)) { nodes.allSatisfy { $0.inner.value(of: "r") == nil } })
        // The one node that stored the refused token keeps it; the others still say 1.
        #expect(nodes.map { $0.inner.value(of: counterKey) } == ["1", "1", "2"])

        // One failing node of three is still a majority written: granted, with a larger token than
        // any handed out before.
        nodes[0].failsWriteBack = false
        let later = try await redlock.lock("r", ttl: .seconds(10))
        #expect((later.fencingToken ?? 0) > 1, "\(later)")
        #expect(
            nodes.filter { $0.inner.value(of: counterKey) == later.fencingToken.map(String.init) }.count >= 2)
        try await redlock.release(later)
    }
}
