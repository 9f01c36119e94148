import MultiRedlock
import MultiRedlockTesting
import Testing

@testable import MultiRedlock

/// `RedisNode`'s reply handling over a `ScriptedConnection` (issue 17 item 7): what it sends and what
/// it makes of each answer, without a server. The same paths against real servers are in
/// RedlockIntegrationTests, ScriptOrderTests and FailoverErrorReplyTests.
@Suite struct RedisNodeScriptedTests {
    let connection = ScriptedConnection(server: RedisServer(host: "10.0.0.9", port: 7000))
    let node: RedisNode

    init() {
        let connection = connection
        node = RedisNode { connection.observe($0) }
    }

    /// Runs one node operation and waits for its answer.
    func answer(_ operation: (@escaping @Sendable (NodeResult) -> Void) -> Void) async -> NodeResult {
        await withCheckedContinuation { continuation in
            operation { continuation.resume(returning: $0) }
        }
    }

    func fencedAnswer(
        _ operation: (@escaping @Sendable (NodeResult, Int64) -> Void) -> Void
    ) async -> (NodeResult, Int64) {
        await withCheckedContinuation { continuation in
            operation { continuation.resume(returning: ($0, $1)) }
        }
    }

    func release(timeout: Duration = .seconds(1)) async -> NodeResult {
        await answer { node.release(key: "k", value: "v", timeout: timeout, completion: $0) }
    }

    func acquire(timeout: Duration = .seconds(1)) async -> NodeResult {
        await answer {
            node.acquire(key: "k", value: "v", ttl: .milliseconds(1500), timeout: timeout, completion: $0)
        }
    }

    /// The failure's kind, or nil when the result is not a failure.
    func kind(_ result: NodeResult) -> NodeFailure.Kind? {
        if case .failed(let failure) = result { failure.kind } else { nil }
    }

    func message(_ result: NodeResult) -> String {
        if case .failed(let failure) = result { failure.message } else { "" }
    }

    static let releaseTail = ["1", "k", "v"]

    // MARK: Acquire

    @Test func acquireSendsSetNXAndReadsOK() async {
        connection.script(.reply(.status("OK")))
        #expect(await acquire(timeout: .milliseconds(800)) == .succeeded)
        #expect(connection.sent.map(\.command) == [["SET", "k", "v", "NX", "PX", "1500"]])
        #expect(connection.sent.map(\.timeout) == [.milliseconds(800)])
    }

    @Test func acquireOfAHeldKeyIsRefused() async {
        connection.script(.reply(.null))
        #expect(await acquire() == .refused)
    }

    @Test func acquireErrorReplyIsAnErrorReplyFailure() async {
        connection.script(.reply(.error("OOM command not allowed when used memory > 'maxmemory'.")))
        let result = await acquire()
        #expect(kind(result) == .errorReply)
        #expect(message(result).hasPrefix("OOM"))
    }

    @Test(arguments: [RedisReply.integer(1), .bulkString(Array("OK".utf8)), .status("QUEUED"), .array([])])
    func acquireOfAnotherReplyTypeFails(reply: RedisReply) async {
        connection.script(.reply(reply))
        let result = await acquire()
        #expect(kind(result) == .errorReply)
        #expect(message(result).contains("unexpected reply"))
    }

    @Test func multiKeyAcquireIsOneEVALNeverEVALSHA() async {
        connection.script(
            .reply(.integer(1)), .reply(.integer(0)), .reply(.error("NOSCRIPT No matching script.")))
        let keys = ["a", "b"]
        let acquire = { @Sendable (done: @escaping @Sendable (NodeResult) -> Void) in
            node.acquire(keys: keys, value: "v", ttl: .seconds(2), timeout: .seconds(1), completion: done)
        }
        #expect(await answer(acquire) == .succeeded)
        #expect(await answer(acquire) == .refused)
        // An acquire never falls back: NOSCRIPT is an error like any other (EVAL cannot answer it).
        #expect(kind(await answer(acquire)) == .errorReply)
        let expected = RedisCommand(["EVAL", Scripts.acquireAll.source, "2", "a", "b", "v", "2000"])
        #expect(connection.sent.map(\.command) == [expected, expected, expected])
    }

    // MARK: Compare-and-* scripts, NOSCRIPT

    @Test func releaseSendsEVALSHAAndCountsTheDeletedKey() async {
        connection.script(.reply(.integer(1)), .reply(.integer(0)))
        #expect(await release() == .succeeded)
        #expect(await release() == .refused)
        let expected = RedisCommand(["EVALSHA", Scripts.release.sha1] + Self.releaseTail)
        #expect(connection.sent.map(\.command) == [expected, expected])
    }

    @Test func extendSendsTheTTLInMilliseconds() async {
        connection.script(.reply(.integer(1)))
        let result = await answer {
            node.extend(key: "k", value: "v", ttl: .milliseconds(2500), timeout: .seconds(1), completion: $0)
        }
        #expect(result == .succeeded)
        #expect(connection.sent.map(\.command) == [["EVALSHA", Scripts.extend.sha1, "1", "k", "v", "2500"]])
    }

    @Test func noscriptFallsBackToEVALWithinTheSameDeadline() async {
        connection.script(
            .reply(.error("NOSCRIPT No matching script."), after: .milliseconds(300)), .reply(.integer(1)))
        #expect(await release(timeout: .seconds(5)) == .succeeded)
        let sent = connection.sent
        #expect(
            sent.map(\.command) == [
                RedisCommand(["EVALSHA", Scripts.release.sha1] + Self.releaseTail),
                RedisCommand(["EVAL", Scripts.release.source] + Self.releaseTail),
            ])
        // The EVAL gets what is left of the one deadline, not a fresh one.
        #expect(
            sent.count == 2 && sent[1].timeout <= .milliseconds(4700) && sent[1].timeout > .zero, "\(sent)")
    }

    @Test func theFallbackTimesOutAtTheFirstDeadline() async {
        connection.script(.reply(.error("NOSCRIPT No matching script."), after: .milliseconds(300)), .hang)
        let result = await release(timeout: .milliseconds(400))
        #expect(kind(result) == .timeout)
        // What the EVAL was given, not the wall clock (a busy machine stretches the latter): at most
        // the 100 ms left of the one deadline. A deadline that ran out before the fallback leaves it
        // unsent, which is a timeout too.
        let sent = connection.sent
        #expect(sent.count <= 2)
        if sent.count == 2 {
            #expect(sent[1].timeout <= .milliseconds(100), "the fallback got a deadline of its own: \(sent)")
        }
    }

    /// A server whose script cache is empty: each compare-and-* operation in flight falls back once.
    @Test func operationsInFlightEachFallBackOnce() async {
        connection.respond { command in
            ScriptedConnection.name(of: command) == "EVALSHA"
                ? .reply(.error("NOSCRIPT No matching script."), after: .milliseconds(20))
                : .reply(.integer(1))
        }
        async let released = release()
        async let extended = answer {
            node.extend(key: "k", value: "v", ttl: .seconds(2), timeout: .seconds(1), completion: $0)
        }
        #expect(await (released, extended) == (.succeeded, .succeeded))
        let names = connection.sent.map { ScriptedConnection.name(of: $0.command) }
        #expect(
            names.filter { $0 == "EVALSHA" }.count == 2 && names.filter { $0 == "EVAL" }.count == 2,
            "\(names)")
    }

    @Test func anErrorFromTheFallbackIsTheAnswer() async {
        connection.script(
            .reply(.error("NOSCRIPT No matching script.")), .reply(.error("BUSY Redis is busy")))
        let result = await release()
        #expect(kind(result) == .errorReply)
        #expect(message(result).hasPrefix("BUSY"))
        #expect(connection.sent.count == 2)
    }

    @Test func anotherErrorReplyIsNotRetried() async {
        connection.script(.reply(.error("READONLY You can't write against a read only replica.")))
        let result = await release()
        #expect(kind(result) == .errorReply)
        #expect(message(result).hasPrefix("READONLY"))
        #expect(connection.sent.count == 1)
    }

    @Test(arguments: [RedisReply.null, .status("OK"), .bulkString(Array("1".utf8)), .array([.integer(1)])])
    func aScriptAnswerOfAnotherTypeFails(reply: RedisReply) async {
        connection.script(.reply(reply))
        let result = await release()
        #expect(kind(result) == .errorReply)
        #expect(message(result).contains("unexpected reply"), "\(result)")
    }

    @Test func multiKeyReleaseAndExtendUseTheirScripts() async {
        connection.script(
            .reply(.integer(1)), .reply(.error("NOSCRIPT No matching script.")), .reply(.integer(0)))
        let extended = await answer {
            node.extend(keys: ["a", "b"], value: "v", ttl: .seconds(3), timeout: .seconds(1), completion: $0)
        }
        let released = await answer {
            node.release(keys: ["a", "b"], value: "v", timeout: .seconds(1), completion: $0)
        }
        #expect(extended == .succeeded)
        #expect(released == .refused)
        #expect(
            connection.sent.map(\.command) == [
                ["EVALSHA", Scripts.extendAll.sha1, "2", "a", "b", "v", "3000"],
                ["EVALSHA", Scripts.releaseAll.sha1, "2", "a", "b", "v"],
                ["EVAL", Scripts.releaseAll.source, "2", "a", "b", "v"],
            ])
    }

    // MARK: Fencing

    @Test func fencedAcquireAnswersTheCounter() async {
        connection.script(
            .reply(.integer(42)), .reply(.integer(-1)), .reply(.null), .reply(.error("OOM no memory")))
        let acquire = { @Sendable (done: @escaping @Sendable (NodeResult, Int64) -> Void) in
            node.acquireFenced(
                key: "k", counterKey: "k:fence", value: "v", ttl: .seconds(1), timeout: .seconds(1),
                completion: done)
        }
        let granted = await fencedAnswer(acquire)
        #expect(granted.0 == .succeeded && granted.1 == 42)
        let held = await fencedAnswer(acquire)
        #expect(held.0 == .refused && held.1 == 0)
        let null = await fencedAnswer(acquire)
        #expect(kind(null.0) == .errorReply && null.1 == 0)
        let oom = await fencedAnswer(acquire)
        #expect(kind(oom.0) == .errorReply && message(oom.0).hasPrefix("OOM"))
        let expected = RedisCommand(["EVAL", Scripts.acquireFenced.source, "2", "k", "k:fence", "v", "1000"])
        #expect(connection.sent.map(\.command) == Array(repeating: expected, count: 4))
    }

    @Test func raiseFenceWritesTheTokenBack() async {
        connection.script(
            .reply(.error("NOSCRIPT No matching script.")), .reply(.integer(1)), .reply(.integer(0)))
        let raise = { @Sendable (done: @escaping @Sendable (NodeResult) -> Void) in
            node.raiseFence(
                key: "k", counterKey: "k:fence", value: "v", token: 7, timeout: .seconds(1), completion: done)
        }
        #expect(await answer(raise) == .succeeded)
        #expect(await answer(raise) == .refused)
        let tail = ["2", "k", "k:fence", "v", "7"]
        #expect(
            connection.sent.map(\.command) == [
                RedisCommand(["EVALSHA", Scripts.raiseFence.sha1] + tail),
                RedisCommand(["EVAL", Scripts.raiseFence.source] + tail),
                RedisCommand(["EVALSHA", Scripts.raiseFence.sha1] + tail),
            ])
    }

    // MARK: Connection failures

    @Test func aHungServerIsATimeout() async {
        connection.script(.hang)
        let start = ContinuousClock.now
        let result = await acquire(timeout: .milliseconds(150))
        #expect(kind(result) == .timeout)
        #expect(ContinuousClock.now - start >= .milliseconds(150))
        #expect(result.failureMayHaveRun)
    }

    @Test func aDropMidCommandIsAConnectionLostAndTheNodeIsDown() async {
        let states = Locked<[Bool]>([])
        node.observeConnection { up in states.withLock { $0.append(up) } }
        connection.script(.drop(after: .milliseconds(50)))
        let result = await release()
        #expect(kind(result) == .connectionLost)
        #expect(result.failureMayHaveRun)
        #expect(!node.isConnected)
        try? await Task.sleep(for: .milliseconds(50))
        #expect(states.withLock { $0.last } == false)
        #expect(
            node.connectionDetail?.hasPrefix("connectionLost") == true, "\(node.connectionDetail ?? "nil")")
        // Down: the next command is not sent.
        let next = await release()
        #expect(kind(next) == .unreachable)
        #expect(connection.sent.count == 1)
    }

    @Test(arguments: [
        (RedisConnectionError.Kind.replyTooLarge, NodeFailure.Kind.connectionLost),
        (.notConnected, .unreachable), (.connectFailed, .unreachable), (.closed, .closed),
        (.timeout, .timeout),
    ])
    func connectionErrorsMapToNodeFailures(error: RedisConnectionError.Kind, expected: NodeFailure.Kind) async
    {
        connection.script(.fail(error))
        let result = await release()
        #expect(kind(result) == expected)
        #expect(message(result).hasPrefix(error.rawValue))
    }

    @Test func aClosedNodeFailsAsClosed() async {
        await node.close()
        #expect(kind(await acquire()) == .closed)
        #expect(connection.sent.isEmpty)
    }

    // MARK: Connection state and restarts

    @Test func theNodeReportsTheConnectionAndRestarts() async throws {
        let states = Locked<[Bool]>([])
        node.observeConnection { up in states.withLock { $0.append(up) } }
        #expect(node.isConnected && node.serverID == "scripted-run-1" && node.timeSinceRestart == nil)
        #expect(node.name == "10.0.0.9:7000")
        connection.disconnect()
        connection.connect(runID: "scripted-run-2")
        try await Task.sleep(for: .milliseconds(50))
        #expect(node.serverID == "scripted-run-2")
        #expect(node.timeSinceRestart != nil)
        #expect(states.withLock { $0 }.suffix(2) == [false, true])
    }
}

extension NodeResult {
    /// Whether this is a failure after which the command may have run (a timeout, a lost connection).
    fileprivate var failureMayHaveRun: Bool {
        if case .failed(let failure) = self { failure.outcomeUnknown } else { false }
    }
}
