import MultiRedlock
import MultiRedlockTesting
import Synchronization
import TestSupport
import Testing

extension MockRedlockNode {
    /// `acquire` awaited.
    fileprivate func acquire(
        _ key: String, _ value: String, ttl: Duration = .seconds(10), timeout: Duration = .seconds(2)
    ) async -> NodeResult {
        await withCheckedContinuation { continuation in
            acquire(key: key, value: value, ttl: ttl, timeout: timeout) { continuation.resume(returning: $0) }
        }
    }

    /// `extend` awaited.
    fileprivate func extend(
        _ key: String, _ value: String, ttl: Duration = .seconds(10), timeout: Duration = .seconds(2)
    ) async -> NodeResult {
        await withCheckedContinuation { continuation in
            extend(key: key, value: value, ttl: ttl, timeout: timeout) { continuation.resume(returning: $0) }
        }
    }

    /// `release` awaited.
    fileprivate func release(_ key: String, _ value: String, timeout: Duration = .seconds(2)) async
        -> NodeResult
    {
        await withCheckedContinuation { continuation in
            release(key: key, value: value, timeout: timeout) { continuation.resume(returning: $0) }
        }
    }

    /// Multi-key `acquire` awaited.
    fileprivate func acquire(_ keys: [String], _ value: String, ttl: Duration = .seconds(10)) async
        -> NodeResult
    {
        await withCheckedContinuation { continuation in
            acquire(keys: keys, value: value, ttl: ttl, timeout: .seconds(2)) {
                continuation.resume(returning: $0)
            }
        }
    }

    /// Multi-key `extend` awaited.
    fileprivate func extend(_ keys: [String], _ value: String, ttl: Duration = .seconds(10)) async
        -> NodeResult
    {
        await withCheckedContinuation { continuation in
            extend(keys: keys, value: value, ttl: ttl, timeout: .seconds(2)) {
                continuation.resume(returning: $0)
            }
        }
    }

    /// Multi-key `release` awaited.
    fileprivate func release(_ keys: [String], _ value: String) async -> NodeResult {
        await withCheckedContinuation { continuation in
            release(keys: keys, value: value, timeout: .seconds(2)) { continuation.resume(returning: $0) }
        }
    }

    /// `acquireFenced` awaited, on the counter key `<key>:fence`.
    fileprivate func acquireFenced(_ key: String, _ value: String, ttl: Duration = .seconds(10)) async
        -> (NodeResult, Int64)
    {
        await withCheckedContinuation { continuation in
            acquireFenced(key: key, counterKey: key + ":fence", value: value, ttl: ttl, timeout: .seconds(2))
            {
                continuation.resume(returning: ($0, $1))
            }
        }
    }

    /// `raiseFence` awaited, on the counter key `<key>:fence`.
    fileprivate func raiseFence(_ key: String, _ value: String, token: Int64) async -> NodeResult {
        await withCheckedContinuation { continuation in
            raiseFence(key: key, counterKey: key + ":fence", value: value, token: token, timeout: .seconds(2))
            {
                continuation.resume(returning: $0)
            }
        }
    }
}

/// The answers completions received, with when they came and a note taken at that moment.
private final class Answers: Sendable {
    private let results = Locked<[(result: NodeResult, time: ContinuousClock.Instant, note: String?)]>([])

    var all: [NodeResult] { results.withLock { $0.map(\.result) } }
    var times: [ContinuousClock.Instant] { results.withLock { $0.map(\.time) } }
    var notes: [String?] { results.withLock { $0.map(\.note) } }

    func record(_ result: NodeResult, note: String? = nil) {
        let now = ContinuousClock.now
        results.withLock { $0.append((result, now, note)) }
    }
}

/// The connection reports a node's observer received.
private final class Reports: Sendable {
    private let reports = Locked<[Bool]>([])

    var all: [Bool] { reports.withLock { $0 } }

    func record(_ connected: Bool) {
        reports.withLock { $0.append(connected) }
    }
}

private func failureKind(_ result: NodeResult) -> NodeFailure.Kind? {
    if case .failed(let failure) = result { failure.kind } else { nil }
}

@Suite("MockRedlockNode")
struct MockNodeTests {
    // MARK: Redis semantics

    @Test("acquire is SET NX: set only while the key is absent")
    func setNX() async {
        let node = MockRedlockNode(name: "n", clock: MockClock())
        #expect(await node.acquire("k", "v1") == .succeeded)
        #expect(await node.acquire("k", "v2") == .refused)
        #expect(await node.acquire("k", "v1") == .refused)
        #expect(node.value(of: "k") == "v1")
        #expect(await node.acquire("other", "v2") == .succeeded)
        #expect(Set(node.keys) == ["k", "other"])
        #expect(
            node.calls == [
                .acquire(key: "k", value: "v1", ttl: .seconds(10)),
                .acquire(key: "k", value: "v2", ttl: .seconds(10)),
                .acquire(key: "k", value: "v1", ttl: .seconds(10)),
                .acquire(key: "other", value: "v2", ttl: .seconds(10)),
            ])
        #expect(node.calls.map(\.key) == ["k", "k", "k", "other"])
        #expect(node.calls.allSatisfy { $0.isAcquire })
    }

    @Test("PX expiry on the manual clock: expired when now >= set time + ttl")
    func expiryOnManualClock() async {
        let clock = MockClock()
        #expect(clock.now == .zero)
        let node = MockRedlockNode(name: "n", clock: clock)
        clock.advance(by: .seconds(5))
        #expect(await node.acquire("k", "v1", ttl: .seconds(10)) == .succeeded)
        #expect(node.ttl(of: "k") == .seconds(10))
        clock.advance(by: .milliseconds(9_999))
        #expect(node.value(of: "k") == "v1")
        #expect(node.ttl(of: "k") == .milliseconds(1))
        #expect(await node.acquire("k", "v2") == .refused)
        clock.advance(by: .milliseconds(1))
        #expect(clock.now == .milliseconds(15_000))
        #expect(node.value(of: "k") == nil)
        #expect(node.ttl(of: "k") == nil)
        #expect(node.keys.isEmpty)
        #expect(await node.acquire("k", "v2", ttl: .seconds(1)) == .succeeded)
        #expect(node.value(of: "k") == "v2")
    }

    @Test("ttls are whole milliseconds, as sent to Redis; below 1 ms is an error reply")
    func wholeMilliseconds() async {
        let node = MockRedlockNode(name: "n", clock: MockClock())
        #expect(await node.acquire("k", "v", ttl: .microseconds(1_500)) == .succeeded)
        #expect(node.ttl(of: "k") == .milliseconds(1))
        let result = await node.acquire("short", "v", ttl: .microseconds(999))
        #expect(failureKind(result) == .errorReply)
        #expect(node.value(of: "short") == nil)
    }

    @Test("release is compare-and-delete")
    func compareAndDelete() async {
        let clock = MockClock()
        let node = MockRedlockNode(name: "n", clock: clock)
        #expect(await node.release("k", "v") == .refused)
        #expect(await node.acquire("k", "v", ttl: .seconds(10)) == .succeeded)
        #expect(await node.release("k", "wrong") == .refused)
        #expect(node.value(of: "k") == "v")
        #expect(node.ttl(of: "k") == .seconds(10))
        #expect(await node.release("k", "v") == .succeeded)
        #expect(node.value(of: "k") == nil)
        #expect(await node.release("k", "v") == .refused)

        #expect(await node.acquire("k", "v2", ttl: .seconds(1)) == .succeeded)
        clock.advance(by: .seconds(1))
        #expect(await node.release("k", "v2") == .refused, "an expired key is not held")
        #expect(node.calls.last == .release(key: "k", value: "v2"))
        #expect(node.calls.last?.isRelease == true)
    }

    @Test("extend is compare-and-pexpire and never creates a key")
    func compareAndPexpire() async {
        let clock = MockClock()
        let node = MockRedlockNode(name: "n", clock: clock)
        #expect(await node.extend("k", "v", ttl: .seconds(10)) == .refused)
        #expect(node.value(of: "k") == nil, "extend must not create the key")

        #expect(await node.acquire("k", "v", ttl: .seconds(10)) == .succeeded)
        clock.advance(by: .seconds(4))
        #expect(await node.extend("k", "wrong", ttl: .seconds(30)) == .refused)
        #expect(node.value(of: "k") == "v")
        #expect(node.ttl(of: "k") == .seconds(6), "a wrong value leaves the ttl alone")
        #expect(await node.extend("k", "v", ttl: .seconds(30)) == .succeeded)
        #expect(node.ttl(of: "k") == .seconds(30))
        #expect(node.calls.last == .extend(key: "k", value: "v", ttl: .seconds(30)))
        #expect(node.calls.last?.isExtend == true)

        clock.advance(by: .seconds(30))
        #expect(await node.extend("k", "v", ttl: .seconds(30)) == .refused)
        #expect(node.value(of: "k") == nil, "an expired key is not re-created")

        node.set(key: "foreign", value: "theirs")
        #expect(await node.extend("foreign", "v") == .refused)
        #expect(node.value(of: "foreign") == "theirs")
        #expect(node.ttl(of: "foreign") == nil, "another owner's key keeps having no expiry")
    }

    @Test("set plays another holder; removeAll and removeAllCalls reset the node")
    func setAndReset() async {
        let clock = MockClock()
        let node = MockRedlockNode(name: "n", clock: clock)
        node.set(key: "forever", value: "theirs")
        node.set(key: "brief", value: "theirs", ttl: .seconds(1))
        #expect(node.calls.isEmpty, "set is not a logged call")
        #expect(await node.acquire("forever", "mine") == .refused)
        #expect(node.ttl(of: "brief") == .seconds(1))
        clock.advance(by: .seconds(86_400))
        #expect(node.value(of: "forever") == "theirs")
        #expect(node.ttl(of: "forever") == nil)
        #expect(node.value(of: "brief") == nil)
        node.set(key: "forever", value: "replaced", ttl: .seconds(5))
        #expect(node.value(of: "forever") == "replaced")

        node.removeAll()
        #expect(node.keys.isEmpty)
        #expect(node.calls.count == 1)
        node.removeAllCalls()
        #expect(node.calls.isEmpty)
        #expect(await node.acquire("forever", "mine") == .succeeded)
    }

    @Test("the system clock moves in real time, and by advance; default nodes expire keys in real time")
    func systemClock() async throws {
        let clock = MockClock.system
        #expect(clock.followsSystemClock)
        #expect(!MockClock().followsSystemClock)
        let start = clock.now
        try await Task.sleep(for: .milliseconds(20))
        #expect(clock.now - start >= .milliseconds(20))
        clock.advance(by: .seconds(100))
        #expect(clock.now - start >= .seconds(100))
        #expect(MockClock.system.now < .seconds(100), "each system clock is a new one")

        let node = MockRedlockNode(name: "n")
        #expect(node.clock.followsSystemClock)
        #expect(await node.acquire("k", "v", ttl: .milliseconds(30)) == .succeeded)
        #expect(node.value(of: "k") == "v")
        #expect(await eventually { node.value(of: "k") == nil })
    }

    // MARK: Faults

    @Test("isDown answers unreachable at once, applies nothing, and reports the connection down")
    func down() async {
        let node = MockRedlockNode(name: "n", clock: MockClock())
        let reports = Reports()
        node.observeConnection { reports.record($0) }
        #expect(reports.all == [true], "a connected node reports true on registration")
        #expect(node.isConnected)
        #expect(!node.isDown)

        node.isDown = true
        #expect(node.isDown)
        #expect(!node.isConnected)
        #expect(reports.all == [true, false])
        let answers = Answers()
        node.acquire(key: "k", value: "v", ttl: .seconds(10), timeout: .seconds(1)) { answers.record($0) }
        node.extend(key: "k", value: "v", ttl: .seconds(10), timeout: .seconds(1)) { answers.record($0) }
        node.release(key: "k", value: "v", timeout: .seconds(1)) { answers.record($0) }
        #expect(
            answers.all.map(failureKind) == [.unreachable, .unreachable, .unreachable], "answered at once")
        #expect(node.value(of: "k") == nil)
        #expect(node.calls.count == 3, "calls to a down node are logged too")

        node.isDown = false
        #expect(node.isConnected)
        #expect(reports.all == [true, false, true])
        #expect(await node.acquire("k", "v") == .succeeded)
    }

    @Test("setConnected reports changes only, and a disconnected node is unreachable")
    func setConnected() async {
        let node = MockRedlockNode(name: "n", clock: MockClock())
        node.setConnected(false)
        let reports = Reports()
        node.observeConnection { reports.record($0) }
        #expect(reports.all.isEmpty, "nothing to report on registration while disconnected")
        #expect(failureKind(await node.acquire("k", "v")) == .unreachable)
        node.setConnected(false)
        #expect(reports.all.isEmpty)
        node.setConnected(true)
        node.setConnected(true)
        #expect(reports.all == [true])
        #expect(node.isConnected)
        #expect(!node.isDown)
        node.setConnected(false)
        #expect(reports.all == [true, false])
        #expect(node.isDown)

        let replacement = Reports()
        node.setConnected(true)
        node.observeConnection { replacement.record($0) }
        node.setConnected(false)
        #expect(replacement.all == [true, false])
        #expect(reports.all == [true, false, true], "only the last handler registered is told")
    }

    @Test("latency delays the answer, and the effect applies when it answers")
    func latency() async {
        let node = MockRedlockNode(name: "n", clock: MockClock())
        node.latency = .milliseconds(100)
        #expect(node.latency == .milliseconds(100))
        let answers = Answers()
        let start = ContinuousClock.now
        node.acquire(key: "k", value: "v", ttl: .seconds(10), timeout: .seconds(2)) {
            answers.record($0, note: node.value(of: "k"))
        }
        #expect(answers.all.isEmpty)
        #expect(node.value(of: "k") == nil, "not applied before the answer")
        #expect(node.calls == [.acquire(key: "k", value: "v", ttl: .seconds(10))], "logged when called")
        #expect(await eventually { !answers.all.isEmpty })
        #expect(answers.times.first.map { $0 - start } ?? .zero >= .milliseconds(100))
        #expect(answers.all == [.succeeded])
        #expect(answers.notes == ["v"], "applied when it answers")
        #expect(node.ttl(of: "k") == .seconds(10))
    }

    @Test("latency at or above the timeout answers timeout, and the command still runs later")
    func latencyBeyondTimeout() async {
        let node = MockRedlockNode(name: "n", clock: MockClock())
        node.latency = .milliseconds(200)
        let answers = Answers()
        let start = ContinuousClock.now
        node.acquire(key: "k", value: "v", ttl: .seconds(10), timeout: .milliseconds(50)) {
            answers.record($0, note: node.value(of: "k"))
        }
        #expect(await eventually { !answers.all.isEmpty })
        #expect(answers.all.map(failureKind) == [.timeout])
        #expect(answers.times.first.map { $0 - start } ?? .zero >= .milliseconds(50))
        #expect(answers.notes == [nil], "answered before the slow command ran")
        #expect(await eventually { node.value(of: "k") == "v" }, "the slow server applies it anyway")
        #expect(answers.all.count == 1, "answered once")
    }

    @Test("a hung node answers timeout when the call's timeout passes, and applies its writes on resume")
    func hung() async {
        let node = MockRedlockNode(name: "n", clock: MockClock())
        #expect(node.hungWritesApply)
        node.isHung = true
        #expect(node.isHung)
        #expect(node.isConnected, "a hung node still looks connected")
        let start = ContinuousClock.now
        let result = await node.acquire("k", "v", timeout: .milliseconds(50))
        #expect(ContinuousClock.now - start >= .milliseconds(50))
        #expect(failureKind(result) == .timeout)
        #expect(node.value(of: "k") == nil, "nothing runs while hung")
        node.isHung = false
        #expect(node.value(of: "k") == "v", "the write lands on resume, as after SIGCONT")
    }

    @Test("a hung node keeps the order of commands, and dropped writes can be configured")
    func hungOrderAndDrop() async {
        let node = MockRedlockNode(name: "n", clock: MockClock())
        node.isHung = true
        #expect(failureKind(await node.acquire("k", "v", timeout: .milliseconds(10))) == .timeout)
        #expect(failureKind(await node.release("k", "v", timeout: .milliseconds(10))) == .timeout)
        node.isHung = false
        #expect(node.value(of: "k") == nil, "SET then DEL, in order")

        node.hungWritesApply = false
        node.isHung = true
        #expect(failureKind(await node.acquire("k", "v", timeout: .milliseconds(10))) == .timeout)
        node.isHung = false
        #expect(node.value(of: "k") == nil, "a timed-out write is dropped when hungWritesApply is false")
        #expect(node.calls.count == 3)
    }

    // On an executor of its own: the 20 ms sleep, resumed on a cooperative pool held up for 7 s,
    // ended after the 5 s timeout (a test of the tests, run with the pool's threads blocked).
    @Test("a hung node resumed before the timeout answers for real", .ownExecutor)
    func hungResumedInTime() async {
        let node = MockRedlockNode(name: "n", clock: MockClock())
        node.set(key: "taken", value: "theirs")
        node.isHung = true
        let answers = Answers()
        node.acquire(key: "k", value: "v", ttl: .seconds(10), timeout: .seconds(5)) { answers.record($0) }
        node.acquire(key: "taken", value: "v", ttl: .seconds(10), timeout: .seconds(5)) { answers.record($0) }
        try? await Task.sleep(for: .milliseconds(20))
        #expect(answers.all.isEmpty)
        node.isHung = false
        #expect(answers.all == [.succeeded, .refused])
        #expect(node.value(of: "k") == "v")
    }

    @Test("errorReply answers every call with the error and applies nothing")
    func errorReply() async {
        let node = MockRedlockNode(name: "n", clock: MockClock())
        #expect(await node.acquire("held", "v") == .succeeded)
        node.errorReply = "OOM command not allowed when used memory > 'maxmemory'"
        #expect(node.errorReply != nil)
        let expected = NodeResult.failed(
            NodeFailure(.errorReply, "OOM command not allowed when used memory > 'maxmemory'"))
        #expect(await node.acquire("k", "v") == expected)
        #expect(await node.extend("held", "v", ttl: .seconds(60)) == expected)
        #expect(await node.release("held", "v") == expected)
        #expect(node.value(of: "k") == nil)
        #expect(node.value(of: "held") == "v")
        #expect(node.ttl(of: "held") == .seconds(10))
        #expect(node.isConnected)
        node.errorReply = nil
        #expect(await node.release("held", "v") == .succeeded)
    }

    @Test("close answers closed, to later calls and to calls still waiting")
    func close() async {
        let node = MockRedlockNode(name: "n", clock: MockClock())
        let reports = Reports()
        node.observeConnection { reports.record($0) }
        node.isHung = true
        let answers = Answers()
        node.acquire(key: "k", value: "v", ttl: .seconds(10), timeout: .seconds(5)) { answers.record($0) }
        await node.close()
        #expect(node.isClosed)
        #expect(!node.isConnected)
        #expect(reports.all == [true, false])
        #expect(answers.all.map(failureKind) == [.closed])
        node.isHung = false
        #expect(failureKind(await node.acquire("k2", "v")) == .closed)
        #expect(failureKind(await node.release("k2", "v")) == .closed)
        #expect(node.value(of: "k2") == nil)
        await node.close()
        #expect(reports.all == [true, false])
    }

    // MARK: Multi-resource, fencing, restarts

    @Test("multi-key acquire sets all keys or none; extend needs all; release deletes each held one")
    func multiKey() async {
        let clock = MockClock()
        let node = MockRedlockNode(name: "n", clock: clock)
        node.set(key: "b", value: "theirs")
        #expect(await node.acquire(["a", "b", "c"], "v") == .refused)
        #expect(node.value(of: "a") == nil, "none set when one is held")
        #expect(node.value(of: "c") == nil)
        #expect(await node.acquire(["a", "c"], "v", ttl: .seconds(10)) == .succeeded)
        #expect(node.value(of: "a") == "v")
        #expect(node.ttl(of: "c") == .seconds(10))
        #expect(node.calls.last == .acquireAll(keys: ["a", "c"], value: "v", ttl: .seconds(10)))
        #expect(node.calls.last?.isAcquire == true)
        #expect(node.calls.last?.keys == ["a", "c"])

        #expect(await node.extend(["a", "b"], "v", ttl: .seconds(30)) == .refused)
        #expect(node.ttl(of: "a") == .seconds(10), "nothing extended unless all hold the value")
        #expect(await node.extend(["a", "c"], "v", ttl: .seconds(30)) == .succeeded)
        #expect(node.ttl(of: "a") == .seconds(30))
        #expect(node.ttl(of: "c") == .seconds(30))
        #expect(node.calls.last?.isExtend == true)

        #expect(await node.release(["a", "b"], "v") == .succeeded, "a was released")
        #expect(node.value(of: "a") == nil)
        #expect(node.value(of: "b") == "theirs")
        #expect(node.value(of: "c") == "v")
        #expect(await node.release(["a", "b"], "v") == .refused)
        #expect(node.calls.last == .releaseAll(keys: ["a", "b"], value: "v"))
        #expect(node.calls.last?.isRelease == true)

        // One key is a plain SET NX / compare-and-pexpire / compare-and-delete, as on a RedisNode.
        #expect(await node.acquire(["d"], "v") == .succeeded)
        #expect(await node.extend(["d"], "v", ttl: .seconds(5)) == .succeeded)
        #expect(await node.release(["d"], "v") == .succeeded)
        #expect(
            node.calls.suffix(3) == [
                .acquire(key: "d", value: "v", ttl: .seconds(10)),
                .extend(key: "d", value: "v", ttl: .seconds(5)),
                .release(key: "d", value: "v"),
            ])
    }

    @Test("fenced acquire answers the counter; raiseFence raises it only while held, never lowers it")
    func fencing() async {
        let node = MockRedlockNode(name: "n", clock: MockClock())
        let (first, counter) = await node.acquireFenced("r", "v1")
        #expect(first == .succeeded)
        #expect(counter == 0, "no counter yet")
        #expect(await node.raiseFence("r", "v1", token: 5) == .succeeded)
        #expect(node.value(of: "r:fence") == "5")
        #expect(node.ttl(of: "r:fence") == nil, "the counter never expires")
        #expect(await node.raiseFence("r", "v1", token: 3) == .succeeded)
        #expect(node.value(of: "r:fence") == "5", "never lowered")
        #expect(await node.raiseFence("r", "other", token: 9) == .refused)
        #expect(node.value(of: "r:fence") == "5")
        let (refused, _) = await node.acquireFenced("r", "v2")
        #expect(refused == .refused)
        #expect(await node.release("r", "v1") == .succeeded)
        let (second, next) = await node.acquireFenced("r", "v2")
        #expect(second == .succeeded)
        #expect(next == 5)
        #expect(node.calls.contains(.raiseFence(key: "r", counterKey: "r:fence", value: "v1", token: 5)))
    }

    @Test("restart loses the keys, drops waiting calls, and reports how long ago it restarted")
    func restart() async {
        let clock = MockClock()
        let node = MockRedlockNode(name: "n", clock: clock)
        let reports = Reports()
        node.observeConnection { reports.record($0) }
        #expect(await node.acquire("k", "v", ttl: .seconds(10)) == .succeeded)
        #expect(await node.acquire("short", "v", ttl: .seconds(1)) == .succeeded)
        node.isHung = true
        let answers = Answers()
        node.acquire(key: "hung", value: "v", ttl: .seconds(1), timeout: .seconds(5)) { answers.record($0) }

        node.restart()
        #expect(answers.all.map(failureKind) == [.connectionLost])
        #expect(!node.isHung, "a new process is not hung")
        #expect(reports.all == [true, false, true])
        #expect(node.keys.isEmpty, "no persistence: every key is lost")
        // The node reports the restart; a Redlock decides how long its grants do not count.
        #expect(node.timeSinceRestart == .zero)
        #expect(await node.acquire("k", "v2", ttl: .seconds(1)) == .succeeded)
        #expect(node.value(of: "k") == "v2")
        clock.advance(by: .milliseconds(9_999))
        #expect(node.timeSinceRestart == .milliseconds(9_999), "on the node's clock")
        #expect(node.value(of: "hung") == nil, "the hung command died with the process")

        #expect(await node.acquire("kept", "v", ttl: .seconds(5)) == .succeeded)
        node.restart(keepingData: true)
        #expect(node.value(of: "kept") == "v")
        #expect(node.ttl(of: "kept") == .seconds(5))
    }

    @Test("a restart drops the commands still in flight to the old process")
    func restartDropsDelayedCommands() async {
        let node = MockRedlockNode(name: "n", clock: MockClock())
        node.latency = .milliseconds(50)
        let answers = Answers()
        node.acquire(key: "k", value: "v", ttl: .seconds(1), timeout: .seconds(5)) { answers.record($0) }
        node.restart()
        #expect(answers.all.map(failureKind) == [.connectionLost])
        try? await Task.sleep(for: .milliseconds(120))
        #expect(node.value(of: "k") == nil)
        #expect(answers.all.count == 1, "answered once")
    }

    @Test("each call is answered exactly once, and NX holds under concurrency")
    func concurrentAcquire() async {
        let node = MockRedlockNode(name: "n", clock: MockClock())
        let winners = await withTaskGroup(of: Bool.self) { group in
            for index in 0..<500 {
                group.addTask { await node.acquire("k", "v\(index)") == .succeeded }
            }
            return await group.reduce(0) { $0 + ($1 ? 1 : 0) }
        }
        #expect(winners == 1)
        #expect(node.calls.count == 500)
    }
}
