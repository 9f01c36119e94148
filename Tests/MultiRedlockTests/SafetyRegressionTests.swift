import MultiRedlockTesting
import Synchronization
import TestSupport
import Testing

@testable import MultiRedlock

// The safety review's findings (issue 12) on in-memory nodes: each test fails on the defect it
// names. Nodes get clocks of their own where skew between nodes matters.

/// A node that answers the next `failures` calls `unreachable` without running them (a connection
/// that flaps between two commands), then forwards to `inner`. Its connection observer is not
/// forwarded when `observing` is false, so a second client can share `inner` without taking over
/// its observer.
private final class FlakyNode: RedlockNode {
    let inner: MockRedlockNode
    private let failures: Atomic<Int>
    private let observing: Bool
    /// How late the node answers, ignoring the call's timeout (a reply that comes after its deadline).
    private let lateBy: Duration?
    /// Whether every release runs but answers a timeout (its reply is lost).
    private let losingReleaseReplies: Bool

    init(
        _ inner: MockRedlockNode, failing failures: Int = 0, observing: Bool = true, lateBy: Duration? = nil,
        losingReleaseReplies: Bool = false
    ) {
        self.inner = inner
        self.failures = Atomic(failures)
        self.observing = observing
        self.lateBy = lateBy
        self.losingReleaseReplies = losingReleaseReplies
    }

    var name: String { inner.name }
    var isConnected: Bool { inner.isConnected }
    var serverID: String? { inner.serverID }
    var timeSinceRestart: Duration? { inner.timeSinceRestart }

    /// Whether this call fails; counts it down.
    private func flaked(_ completion: @escaping @Sendable (NodeResult) -> Void) -> Bool {
        var current = failures.load(ordering: .relaxed)
        while current > 0 {
            let (exchanged, original) = failures.compareExchange(
                expected: current, desired: current - 1, ordering: .relaxed)
            if exchanged {
                completion(.failed(NodeFailure(.unreachable, "\(name) flapped")))
                return true
            }
            current = original
        }
        return false
    }

    private func answer(_ completion: @escaping @Sendable (NodeResult) -> Void)
        -> @Sendable (NodeResult) -> Void
    {
        guard let lateBy else { return completion }
        return { result in
            Task {
                try? await Task.sleep(for: lateBy)
                completion(result)
            }
        }
    }

    func acquire(
        keys: [String], value: String, ttl: Duration, timeout: Duration,
        completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        if flaked(completion) { return }
        inner.acquire(keys: keys, value: value, ttl: ttl, timeout: timeout, completion: answer(completion))
    }

    func extend(
        keys: [String], value: String, ttl: Duration, timeout: Duration,
        completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        if flaked(completion) { return }
        inner.extend(keys: keys, value: value, ttl: ttl, timeout: timeout, completion: answer(completion))
    }

    func release(
        keys: [String], value: String, timeout: Duration, completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        if flaked(completion) { return }
        guard losingReleaseReplies else {
            return inner.release(keys: keys, value: value, timeout: timeout, completion: completion)
        }
        inner.release(keys: keys, value: value, timeout: timeout) { _ in
            completion(.failed(NodeFailure(.timeout, "the reply was lost")))
        }
    }

    func observeConnection(_ handler: @escaping @Sendable (Bool) -> Void) {
        if observing { inner.observeConnection(handler) } else { handler(true) }
    }

    func close() async {
        if observing { await inner.close() }
    }
}

/// Nodes named `node0`, `node1`, …, each on a manual clock of its own.
private func makeNodes(_ count: Int) -> [MockRedlockNode] {
    (0..<count).map { MockRedlockNode(name: "node\($0)", clock: MockClock()) }
}

private func options(retries: Int = 0, retryWait: Duration = .zero) -> RedlockOptions {
    RedlockOptions(id: "safety", retries: retries, retryWait: retryWait, nodeTimeout: .milliseconds(200))
}

private func kind(of operation: () async throws -> some Any) async -> RedlockError.Kind? {
    do {
        _ = try await operation()
        return nil
    } catch let error as RedlockError {
        return error.kind
    } catch {
        Issue.record("threw \(error), not a RedlockError")
        return nil
    }
}

@Suite struct SafetyRegressionTests {
    /// Issue 12, item 1: attempt 1 is granted by node0 only (the others flap: unreachable), so it
    /// fails and its release fails on the flapping nodes, which schedules background retries.
    /// Attempt 2 is granted by every node. The retries of attempt 1 must not delete attempt 2's
    /// keys: a second client stays refused while the lock is valid, and a quorum keeps its value.
    @Test("a failed attempt's release retries never delete a later attempt's keys", arguments: [3, 5])
    func releaseRetriesOfAFailedAttemptSpareTheNextAttempt(nodeCount: Int) async throws {
        let nodes = makeNodes(nodeCount)
        let flapping = nodeCount / 2 + 1  // enough to fail attempt 1
        // Each flapping node fails attempt 1's SET and its release (two calls), then works.
        let first = nodes.enumerated().map { index, node in
            FlakyNode(node, failing: index >= nodeCount - flapping ? 2 : 0)
        }
        var fast = options(retries: 1)
        fast.tuning.releaseRetryDelay = (.milliseconds(20), .milliseconds(40))
        let client = try Redlock(nodes: first, options: fast)
        let lock = try await client.lock("invoice-42", ttl: .seconds(10))
        #expect(lock.attempts == 2, "attempt 1 failed (the flapping nodes were unreachable)")

        // Let the background retries of attempt 1 run (first after 20 ms, then every 40 ms).
        try await Task.sleep(for: .milliseconds(300))
        let holding = nodes.count { $0.value(of: "invoice-42") == lock.value }
        #expect(holding >= nodeCount / 2 + 1, "a quorum still holds the lock: \(holding) of \(nodeCount)")

        let other = try Redlock(nodes: nodes.map { FlakyNode($0, observing: false) }, options: options())
        #expect(await kind { try await other.lock("invoice-42", ttl: .seconds(10)) } == .taken)
        #expect(lock.isValid)
        await client.close()
    }

    /// Issue 12, item 7: `close()` while `lock()` is in flight. Either `lock` fails with `closed`
    /// and no node holds its value, or it returns a lock that `close()` released.
    @Test("close() while a lock is in flight leaves nothing locked")
    func closeDuringLock() async throws {
        let nodes = makeNodes(3)
        for node in nodes { node.latency = .milliseconds(100) }
        // A long node timeout gives close() a long grace (3 × it), so a loaded machine's late timers
        // still land inside it.
        var patient = options()
        patient.nodeTimeout = .seconds(3)
        let redlock = try Redlock(nodes: nodes, options: patient)
        let locking = Task { try await redlock.lock("r", ttl: .seconds(30)) }
        try await Task.sleep(for: .milliseconds(30))
        await redlock.close()
        let result = await locking.result
        // The release was sent before the nodes closed; its commands land after their latency.
        try await waitUntil { nodes.allSatisfy { $0.keys.isEmpty } }
        guard case .failure(let error) = result else {
            Issue.record("a lock granted while closing was returned: \(result)")
            return
        }
        #expect((error as? RedlockError)?.kind == .closed)
    }

    /// Issue 12, item 7: with the keys gone on two of three nodes (their clocks ran ahead), renew
    /// says `notHeld` and must not leave the third node's key extended to the new ttl.
    @Test("renew with the keys expired on a majority leaves nothing extended")
    func renewWithPartialExpiry() async throws {
        let nodes = makeNodes(3)
        let redlock = try Redlock(nodes: nodes, options: options())
        let lock = try await redlock.lock("r", ttl: .milliseconds(600))
        nodes[0].clock.advance(by: .seconds(11))
        nodes[1].clock.advance(by: .seconds(11))
        #expect(await kind { try await redlock.renew(lock, ttl: .seconds(60)) } == .notHeld)
        // Not before the renewed lock's validity is over: its holder may rely on it until then, and
        // its key is what keeps others from a quorum (`make sim` seed 125 found a second holder when
        // the release came at once).
        if lock.isValid { #expect(nodes[2].value(of: "r") == lock.value, "released while still valid") }
        try await waitUntil { nodes[2].value(of: "r") == nil }
        #expect(!lock.isValid)
        let other = try Redlock(nodes: nodes.map { FlakyNode($0, observing: false) }, options: options())
        _ = try await other.lock("r", ttl: .seconds(1))
    }

    /// Issue 12, item 7: release with the keys expired on some nodes reports the ones it released.
    @Test("release with the keys expired on some nodes")
    func releaseWithPartialExpiry() async throws {
        let nodes = makeNodes(3)
        let redlock = try Redlock(nodes: nodes, options: options())
        let lock = try await redlock.lock("r", ttl: .seconds(10))
        nodes[0].clock.advance(by: .seconds(11))
        nodes[1].clock.advance(by: .seconds(11))
        #expect(try await redlock.release(lock) == 1)
        #expect(nodes.allSatisfy { $0.value(of: "r") == nil })
        nodes[2].clock.advance(by: .seconds(11))
        let again = try await redlock.lock("r", ttl: .seconds(10))
        for node in nodes { node.clock.advance(by: .seconds(11)) }
        #expect(await kind { try await redlock.release(again) } == .notHeld)
    }

    /// Issue 12, item 7: failed releases are retried once per node and value, and dropped when a
    /// later grant of the same keys on that node shows the value is gone, or when the client closes.
    @Test("background release retries are bounded: superseded and closed ones stop")
    func releaseRetriesAreBounded() async throws {
        let nodes = makeNodes(3)
        var opts = options()
        opts.tuning.releaseRetryDelay = (.milliseconds(20), .milliseconds(40))
        // node1 and node2 flap for the first SET, and never deliver a release's reply.
        let redlock = try Redlock(
            nodes: [FlakyNode(nodes[0])]
                + nodes.dropFirst().map { FlakyNode($0, failing: 1, losingReleaseReplies: true) },
            options: opts)
        #expect(await kind { try await redlock.lock("r", ttl: .seconds(30)) } == .quorumUnavailable)
        let failedValue = try #require(nodes[0].calls.first?.value)
        let releasesOfFailed: @Sendable () -> Int = {
            nodes[2].calls.count { $0 == .release(key: "r", value: failedValue) }
        }
        try await waitUntil { releasesOfFailed() >= 3 }

        // node2 grants the same key to a new lock: the old value's retries stop there.
        let lock = try await redlock.lock("r", ttl: .seconds(30))
        #expect(nodes[2].value(of: "r") == lock.value)
        try await Task.sleep(for: .milliseconds(50))  // a retry already under way may still land
        let afterGrant = releasesOfFailed()
        try await Task.sleep(for: .milliseconds(250))
        #expect(releasesOfFailed() == afterGrant, "superseded retries stopped")

        // Retries of a release stop when the client closes.
        try await redlock.release(lock)
        let releasesOfLock: @Sendable () -> Int = {
            nodes[2].calls.count { $0 == .release(key: "r", value: lock.value) }
        }
        try await waitUntil { releasesOfLock() >= 3 }
        await redlock.close()
        let atClose = releasesOfLock()
        try await Task.sleep(for: .milliseconds(250))
        #expect(releasesOfLock() == atClose, "no retry after close")
    }

    /// A failed attempt is released only where its keys may be: a node that answered the SET NX
    /// with a refusal holds another value (each attempt's value is its own), so it gets no release.
    @Test("a failed attempt is not released on the nodes that refused it")
    func noReleaseWhereRefused() async throws {
        let nodes = makeNodes(3)
        nodes[0].set(key: "r", value: "foreign")
        nodes[1].isDown = true
        let redlock = try Redlock(nodes: nodes, options: options())
        #expect(await kind { try await redlock.lock("r", ttl: .seconds(10)) } == .quorumUnavailable)
        let value = try #require(nodes[2].calls.first?.value)
        try await waitUntil { nodes[2].calls.contains(.release(key: "r", value: value)) }
        #expect(nodes[1].calls.contains(.release(key: "r", value: value)), "the down node may hold it")
        #expect(!nodes[0].calls.contains { $0.isRelease }, "node0 refused: \(nodes[0].calls)")
        #expect(nodes[0].value(of: "r") == "foreign")
        await redlock.close()
    }

    /// Issue 12, item 6: a reply that comes after the node timeout does not count, even when the
    /// node's own timer did not fire.
    @Test("the node timeout is strict: late grants do not count")
    func lateGrantsDoNotCount() async throws {
        let nodes = makeNodes(3)
        let client = try Redlock(
            nodes: [
                FlakyNode(nodes[0]), FlakyNode(nodes[1], lateBy: .milliseconds(400)),
                FlakyNode(nodes[2], lateBy: .milliseconds(400)),
            ],
            options: options())
        let error = try await #require(throws: RedlockError.self) {
            try await client.lock("r", ttl: .seconds(10))
        }
        #expect(error.kind == .quorumUnavailable)
        #expect(
            error.nodes.filter {
                if case .failed(let failure) = $0.outcome { failure.kind == .timeout } else { false }
            }.count == 2, "\(error)")
        // And the late SETs were released.
        try await waitUntil { nodes.allSatisfy { $0.value(of: "r") == nil } }
    }

    /// Issue 12, item 6: `unlock(_ lock:)` frees every resource of a multi-resource lock, and
    /// ``Lock/resources`` lists them (``Lock/resource`` is only a name for messages).
    @Test("unlock(lock) frees a multi-resource lock")
    func unlockMultiResource() async throws {
        let nodes = makeNodes(3)
        let redlock = try Redlock(nodes: nodes, options: options())
        let lock = try await redlock.lock(["a", "b"], ttl: .seconds(10))
        #expect(lock.resources == ["a", "b"])
        redlock.unlock(lock)
        try await waitUntil { nodes.allSatisfy(\.keys.isEmpty) }
        // A resource literally named "a,b" is another resource.
        let single = try await redlock.lock("a,b", ttl: .seconds(10))
        _ = try await redlock.lock(["a", "b"], ttl: .seconds(10))
        try await redlock.release(single)
    }

    /// Issue 12, item 6: `unlock` retries a failed release until the lock's keys expire (its ttl
    /// from now), not for a fixed 60 s; a value this client does not know is retried for the longest
    /// ttl it used.
    @Test("unlock retries until the keys expire, not for a fixed 60 s")
    func unlockRetriesUntilExpiry() async throws {
        let nodes = makeNodes(3)
        let redlock = try Redlock(nodes: nodes, options: options())
        let lock = try await redlock.lock("r", ttl: .seconds(600))
        nodes[2].isDown = true
        let start = ContinuousClock.now
        redlock.unlock(lock.resource, value: lock.value)
        try await waitUntil { !redlock.pendingReleaseExpiries(on: 2).isEmpty }
        let expiry = try #require(redlock.pendingReleaseExpiries(on: 2).first)
        #expect(expiry - start > .seconds(590), "retried until \(expiry - start) from now")

        redlock.unlock("other", value: "someone_else_123")
        try await waitUntil { redlock.pendingReleaseExpiries(on: 2).count == 2 }
        #expect(redlock.pendingReleaseExpiries(on: 2).allSatisfy { $0 - start > .seconds(590) })

        // The reconnect runs the retries at once.
        nodes[2].isDown = false
        try await waitUntil {
            nodes[2].value(of: "r") == nil && redlock.pendingReleaseExpiries(on: 2).isEmpty
        }
        await redlock.close()
    }
}

/// Issue 12, items 4 to 6 on in-memory nodes: one server counted once, the restart quarantine's three
/// settings, and the fencing counters.
@Suite struct SafetyOptionTests {
    /// Item 4: two nodes that report one server identity (one Redis reached under two addresses)
    /// vote once; the evidence names both, and `isConnected` counts distinct servers.
    @Test("the same server under two names votes once")
    func duplicateServerVotesOnce() async throws {
        let nodes = makeNodes(3)
        nodes[0].serverID = "run-a"
        nodes[1].serverID = "run-a"
        nodes[2].serverID = "run-c"
        nodes[2].isDown = true
        let redlock = try Redlock(nodes: nodes, options: options())
        #expect(!redlock.isConnected, "one distinct server connected of three")
        let error = try await #require(throws: RedlockError.self) {
            try await redlock.lock("r", ttl: .seconds(10))
        }
        #expect(error.kind == .quorumUnavailable)
        let duplicate = error.nodes.first { $0.node == "node1" }
        guard case .failed(let failure) = duplicate?.outcome else {
            Issue.record("node1 did not fail: \(error)")
            return
        }
        #expect(failure.kind == .duplicate)
        #expect(failure.message.contains("node0"), "names the other address: \(failure)")
        #expect(nodes[1].calls.isEmpty, "nothing is sent to a duplicate")
        // With the third server up, the two distinct servers make a quorum of three.
        try await waitUntil { nodes[0].value(of: "r") == nil }  // the failed attempt's release
        nodes[2].isDown = false
        #expect(redlock.isConnected)
        let lock = try await redlock.lock("r", ttl: .seconds(10))
        #expect(lock.nodes == ["node0", "node2"])
        await redlock.close()
    }

    /// Item 5: the default quarantine lasts the longest ttl this client used; a fixed one lasts its
    /// duration whatever the ttls; `off` counts a restarted node at once.
    @Test(
        "restart quarantine: longest ttl, fixed, off",
        arguments: [
            (RestartQuarantine.longestTTL, Duration.seconds(10)), (.fixed(.seconds(60)), .seconds(60)),
            (.off, .zero),
        ])
    func restartQuarantine(setting: RestartQuarantine, lasts: Duration) async throws {
        let clock = MockClock()
        let nodes = (0..<3).map { MockRedlockNode(name: "node\($0)", clock: clock) }
        var opts = options()
        opts.restartQuarantine = setting
        let redlock = try Redlock(nodes: nodes, options: opts)
        try await redlock.release(try await redlock.lock("warm", ttl: .seconds(10)))
        nodes[0].restart()
        nodes[1].isDown = true
        if lasts > .zero {
            #expect(await kind { try await redlock.lock("a", ttl: .seconds(1)) } == .quorumUnavailable)
            clock.advance(by: lasts - .milliseconds(1))
            let error = try await #require(throws: RedlockError.self) {
                try await redlock.lock("b", ttl: .seconds(1))
            }
            #expect(
                error.nodes.contains {
                    if case .failed(let failure) = $0.outcome { failure.kind == .restarted } else { false }
                }, "\(error)")
            clock.advance(by: .milliseconds(1))
        }
        let lock = try await redlock.lock("c", ttl: .seconds(1))
        #expect(lock.nodes == ["node0", "node2"])
        await redlock.close()
    }

    /// Item 6: a resource named like a fencing counter's key is refused, and a resource named
    /// `<r>:fencing-token` no longer meets `r`'s counter.
    @Test("fencing counters live in a namespace no lock key can take")
    func fencingNamespace() async throws {
        let nodes = makeNodes(3)
        var opts = options()
        opts.fencingTokens = true
        let redlock = try Redlock(nodes: nodes, options: opts)
        let lock = try await redlock.lock("r", ttl: .seconds(10))
        #expect(lock.fencingToken == 1)
        #expect(nodes[0].value(of: Lock.fencingKey(for: "r")) == "1")
        let error = try await #require(throws: RedlockError.self) {
            try await redlock.lock(Lock.fencingKey(for: "r"), ttl: .seconds(10))
        }
        #expect(error.kind == .invalidArgument)
        let other = try await redlock.lock("r:fencing-token", ttl: .seconds(10))
        #expect(other.fencingToken == 1)
        await redlock.close()
    }

    /// Item 6: when the keys expire before the write-back, the write-back is refused: that is
    /// `validityExpired`, not `taken`.
    @Test("a write-back refused because the keys expired is validityExpired")
    func fencingWriteBackAfterExpiry() async throws {
        let nodes = makeNodes(3)
        let expiring = nodes.map { ExpiringBeforeWriteBack($0, all: nodes) }
        var opts = options()
        opts.fencingTokens = true
        let redlock = try Redlock(nodes: expiring, options: opts)
        let error = try await #require(throws: RedlockError.self) {
            try await redlock.lock("r", ttl: .seconds(10))
        }
        #expect(error.kind == .validityExpired, "\(error)")
        await redlock.close()
    }

    /// Item 6: the fencing order's real condition. The write-back may reach exactly a quorum; a node
    /// of that quorum that then loses its counter (a restart without data) lets the next grant's
    /// quorum miss the highest token, which repeats. Without the loss, tokens increase.
    @Test("fencing tokens repeat when a write-back quorum node loses its counter", arguments: [false, true])
    func fencingBoundary(losesCounter: Bool) async throws {
        let nodes = makeNodes(3)
        var opts = options()
        opts.fencingTokens = true
        opts.restartQuarantine = .off
        let redlock = try Redlock(nodes: nodes, options: opts)
        // The first grant's write-back reaches node0 and node1 only (node2 is down).
        nodes[2].isDown = true
        let first = try await redlock.lock("r", ttl: .seconds(10))
        try await redlock.release(first)
        #expect(nodes.map { $0.value(of: Lock.fencingKey(for: "r")) } == ["1", "1", nil])
        if losesCounter { nodes[1].restart() }
        // The next grant's quorum is node1 and node2 (node0 is down).
        nodes[2].isDown = false
        nodes[0].isDown = true
        let second = try await redlock.lock("r", ttl: .seconds(10))
        let (firstToken, secondToken) = (try #require(first.fencingToken), try #require(second.fencingToken))
        if losesCounter {
            #expect(secondToken == firstToken, "the boundary: a lost counter on the write-back quorum")
        } else {
            #expect(secondToken > firstToken)
        }
        await redlock.close()
    }
}

/// A fencing node whose keys expire (on every node's clock) just before the first write-back.
private final class ExpiringBeforeWriteBack: ForwardingNode, FencingRedlockNode {
    let inner: MockRedlockNode
    let all: [MockRedlockNode]

    init(_ inner: MockRedlockNode, all: [MockRedlockNode]) {
        self.inner = inner
        self.all = all
    }

    func raiseFence(
        key: String, counterKey: String, value: String, token: Int64, timeout: Duration,
        completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        if inner.value(of: key) == value { inner.clock.advance(by: .seconds(11)) }
        inner.raiseFence(
            key: key, counterKey: counterKey, value: value, token: token, timeout: timeout,
            completion: completion)
    }
}
