import MultiRedlockTesting
import Synchronization
import Testing

@testable import MultiRedlock

/// A node that can lock but not issue fencing tokens (no ``FencingRedlockNode``).
private final class PlainNode: ForwardingNode {
    let inner: MockRedlockNode
    init(_ inner: MockRedlockNode) { self.inner = inner }
}

@Suite("node capabilities and close")
struct ArchitectureTests {
    @Test(
        "with fencing on, nodes without the fencing capability fail with a typed error, nothing left locked")
    func fencingNeedsTheCapability() async throws {
        let mocks = (0..<3).map { MockRedlockNode(name: "node\($0)") }
        let redlock = try Redlock(
            nodes: mocks.map { PlainNode($0) },
            options: RedlockOptions(id: "t", retries: 0, fencingTokens: true))
        await #expect {
            try await redlock.lock("r", ttl: .seconds(10))
        } throws: { error in
            guard let error = error as? RedlockError, error.kind == .quorumUnavailable else { return false }
            let refusals = error.nodes.filter {
                if case .failed(let failure) = $0.outcome {
                    return failure.kind == .errorReply
                        && failure.message.contains("does not support fencing tokens")
                }
                return false
            }
            return refusals.count >= 2 && !error.nodes.contains { $0.outcome == .granted }
        }
        #expect(mocks.allSatisfy { $0.calls.allSatisfy { !$0.isAcquire } }, "nothing was sent to set a key")
        // Without fencing the same nodes lock.
        let plain = try Redlock(
            nodes: mocks.map { PlainNode($0) }, options: RedlockOptions(id: "t", retries: 0))
        let lock = try await plain.lock("r", ttl: .seconds(10))
        #expect(lock.nodes.count >= 2)
        await plain.close()
        await redlock.close()
    }

    @Test("close() waits for the operations under way: resumed by the last one to end, not by its grace")
    func drainedWhenTheLastEnds() async throws {
        let operations = InFlightOperations()
        await operations.drained(within: .seconds(60))  // nothing under way: returns at once
        operations.enter()
        operations.enter()
        let done = Atomic<Bool>(false)
        let waiter = Task {
            await operations.drained(within: .seconds(3600))
            done.store(true, ordering: .sequentiallyConsistent)
        }
        operations.leave()
        try await Task.sleep(for: .milliseconds(50))
        let doneNow = done.load(ordering: .sequentiallyConsistent)
        #expect(!doneNow, "one operation is still under way")
        operations.leave()
        // Bounded for a loaded machine; without the wake-up it would wait the hour.
        let deadline = ContinuousClock.now + .seconds(10)
        while !done.load(ordering: .sequentiallyConsistent) && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(5))
        }
        let doneNow1 = done.load(ordering: .sequentiallyConsistent)
        #expect(doneNow1, "woken when the last operation ended")
        waiter.cancel()
    }

    @Test("close() gives up waiting after its grace when an operation never ends")
    func drainedGivesUpAfterTheGrace() async {
        let operations = InFlightOperations()
        operations.enter()
        await operations.drained(within: .milliseconds(20))
        #expect(operations.current == 1)
    }
}
