import LocalRedis
import MultiRedlock
import Synchronization
import TestSupport
import Testing

@testable import MultiRedlock

/// The NOSCRIPT fallback must not reorder a node's commands, nor stretch an operation's deadline
/// (issue 12, item 3), against a real redis-server whose script cache was flushed.
@Suite(.serialized)
struct ScriptOrderTests {
    /// A node connected to `server`.
    static func connectedNode(_ server: RedisServerProcess) async throws -> RedisNode {
        let node = try RedisNode(
            server: RedisServer(
                host: "127.0.0.1", port: server.port, password: RedisServerConfiguration.defaultPassword))
        try await waitUntil { node.isConnected }
        return node
    }

    /// Empties the script cache, then loads `loaded` only; checks that it took.
    static func flushScripts(_ server: RedisServerProcess, loading loaded: Script, missing: Script)
        async throws
    {
        #expect(try await server.cli("SCRIPT", "FLUSH") == "OK")
        #expect(try await server.cli("SCRIPT", "LOAD", loaded.source) == loaded.sha1)
        #expect(try await server.cli("SCRIPT", "EXISTS", loaded.sha1) == "1")
        #expect(try await server.cli("SCRIPT", "EXISTS", missing.sha1) == "0", "the fault is in place")
    }

    /// Node results in the order they arrived.
    final class Answers: Sendable {
        private let answers = Locked<[(String, NodeResult)]>([])
        func record(_ name: String, _ result: NodeResult) { answers.withLock { $0.append((name, result)) } }
        var all: [(String, NodeResult)] { answers.withLock { $0 } }
    }

    /// Sends `first` and `second` on one node without awaiting in between, and returns both answers.
    static func back2back(
        _ first: (@escaping @Sendable (NodeResult) -> Void) -> Void,
        _ second: (@escaping @Sendable (NodeResult) -> Void) -> Void
    ) async -> [(String, NodeResult)] {
        let answers = Answers()
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let remaining = Locked(2)
            let done: @Sendable (String, NodeResult) -> Void = { name, result in
                answers.record(name, result)
                if remaining.withLock({
                    $0 -= 1
                    return $0
                }) == 0 {
                    continuation.resume()
                }
            }
            first { done("acquire", $0) }
            second { done("release", $0) }
        }
        return answers.all
    }

    /// A multi-resource acquire (the all-or-none script, not cached) followed at once by the release of
    /// the same value (its script cached): the release runs after the acquire, so nothing is left.
    /// Before the fix the acquire's EVALSHA got NOSCRIPT, the release ran first (deleting nothing), and
    /// the acquire's EVAL fallback then set both keys, left until their ttl.
    @Test func releaseSentRightAfterAMultiResourceAcquireRunsAfterIt() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stopInBackground() }
        let node = try await Self.connectedNode(server)
        try await Self.flushScripts(server, loading: Scripts.releaseAll, missing: Scripts.acquireAll)
        let keys = ["order-a", "order-b"]
        let value = "order-value-\(UInt32.random(in: 0...UInt32.max))"
        let answers = await Self.back2back(
            {
                node.acquire(
                    keys: keys, value: value, ttl: .seconds(60), timeout: .seconds(5), completion: $0)
            },
            { node.release(keys: keys, value: value, timeout: .seconds(5), completion: $0) })
        print("script order, multi-resource: answers \(answers)")
        #expect(answers.map(\.0) == ["acquire", "release"])
        #expect(answers.allSatisfy { $0.1 == .succeeded }, "acquired, then released: \(answers)")
        for key in keys {
            #expect(try await server.cli("EXISTS", key) == "0", "\(key) must not be left behind")
        }
        await node.close()
    }

    /// The same with a fenced acquire (a script that sets the key) and a single-key release.
    @Test func releaseSentRightAfterAFencedAcquireRunsAfterIt() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stopInBackground() }
        let node = try await Self.connectedNode(server)
        try await Self.flushScripts(server, loading: Scripts.release, missing: Scripts.acquireFenced)
        let value = "fenced-value-\(UInt32.random(in: 0...UInt32.max))"
        let answers = await Self.back2back(
            { done in
                node.acquireFenced(
                    key: "fenced", counterKey: "fenced-counter", value: value, ttl: .seconds(60),
                    timeout: .seconds(5)
                ) { result, _ in done(result) }
            },
            { node.release(key: "fenced", value: value, timeout: .seconds(5), completion: $0) })
        print("script order, fenced: answers \(answers)")
        #expect(answers.allSatisfy { $0.1 == .succeeded }, "acquired, then released: \(answers)")
        #expect(try await server.cli("EXISTS", "fenced") == "0", "the lock key must not be left behind")
        await node.close()
    }

    /// One deadline per operation: a release whose EVALSHA is answered NOSCRIPT late (the server
    /// sleeps 600 ms first) gets only what is left of its 1 s for the EVAL, which the server answers
    /// no sooner than 1.2 s after the start (it sleeps 600 ms more in between): the release times
    /// out, whatever the machine's load. Before the fix the EVAL got a fresh 1 s and the release
    /// succeeded after 1.2 s (400 ms of margin on each side, as the machine is busy).
    /// The sleeps are DEBUG SLEEPs on the node's own connection, so the order is fixed: sleep and
    /// EVALSHA pipelined; then, from the first sleep's reply (which arrives before the NOSCRIPT and
    /// in the same server turn), the second sleep, which so goes out before the EVAL.
    @Test func theFallbackGetsOnlyTheTimeLeft() async throws {
        let server = try await RedisServerProcess.start(RedisServerConfiguration(enableDebugCommand: true))
        defer { server.stopInBackground() }
        let node = try await Self.connectedNode(server)
        _ = try await server.cli("SET", "slow", "v")
        try await Self.flushScripts(server, loading: Scripts.extend, missing: Scripts.release)
        let sleeps = Locked<[Result<RedisReply, RedisConnectionError>]>([])
        let connection = node.connection
        let start = ContinuousClock.now
        let answer: NodeResult = await withCheckedContinuation { continuation in
            connection.send(["DEBUG", "SLEEP", "0.6"], timeout: .seconds(5)) { result in
                print("sleep 1 answered after \(ContinuousClock.now - start)")
                sleeps.withLock { $0.append(result) }
                connection.send(["DEBUG", "SLEEP", "0.6"], timeout: .seconds(5)) { result in
                    print("sleep 2 answered after \(ContinuousClock.now - start)")
                    sleeps.withLock { $0.append(result) }
                }
            }
            node.release(key: "slow", value: "v", timeout: .seconds(1)) {
                print("release answered after \(ContinuousClock.now - start)")
                continuation.resume(returning: $0)
            }
        }
        print("script order, deadline: release answered \(answer); sleeps \(sleeps.withLock { $0 })")
        // The first sleep was answered (so the EVALSHA's NOSCRIPT came after 600 ms).
        #expect(sleeps.withLock { $0.first } == .success(.status("OK")))
        guard case .failed(let failure) = answer else {
            Issue.record("the release must time out, not \(answer)")
            await node.close()
            return
        }
        #expect(failure.kind == .timeout, "\(failure)")
        await node.close()
    }
}
