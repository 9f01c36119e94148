import Dispatch
import Foundation
import Hiredis
import LocalRedis
import TestSupport
import Testing

/// `RedisConnection` while its server is paused (SIGSTOP), killed (SIGKILL), restarted, or drops the
/// connection. Each test first checks that the fault really happened. Serialized: the timings are
/// tight enough that a busy machine should not run two of these at once.
@Suite("RedisConnection under injected faults", .serialized)
struct FaultTests {
    /// Short connect timeout and backoff, so recovery shows up within a few seconds.
    private static let fastOptions = RedisConnectionOptions(
        connectTimeout: .milliseconds(300),
        commandTimeout: .seconds(3),
        reconnectInitialDelay: .milliseconds(25),
        reconnectMaxDelay: .milliseconds(250)
    )

    @Test func connectToPausedServerTimesOutThenRecoversAfterResume() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stopInBackground() }
        #expect(await server.pause())
        try #require(server.isPaused)

        let log = StateLog()
        let connection = try RedisConnection(
            server: server.address(),
            options: Self.fastOptions,
            onStateChange: log.observer
        )
        let (answered, elapsed) = await connection.timedResult(of: ["PING"], within: .seconds(10))
        let finished = try #require(answered, "PING to a paused server hung")
        let failure = try #require(finished.failure)
        #expect(failure.kind == .connectTimeout || failure.kind == .notConnected, "\(failure)")
        #expect(elapsed < .seconds(2), "failed after \(elapsed), connect timeout is 300 ms")
        #expect(!connection.isConnected)
        #expect(await log.waitUntil { !$0.isEmpty })
        #expect(log.disconnections.first?.kind == .connectTimeout)

        // Still paused: further commands fail too, without hanging.
        let again = try #require(await connection.result(of: ["PING"], within: .seconds(10)))
        #expect(again.errorKind == .connectTimeout || again.errorKind == .notConnected)
        try #require(server.isPaused)

        #expect(await server.resume())
        try #require(!server.isPaused)
        #expect(await connection.becomesUsable(within: .seconds(5)))
        #expect(await log.waitUntil { $0.contains(.connected) })
        let key = unique("after-resume")
        #expect(try await connection.send(["SET", key, "v"]) == .status("OK"))
        #expect(try await connection.send(["GET", key]) == .bulk("v"))
        await connection.close()
    }

    @Test func deadlinesWhileServerPausedFailEveryCommandThenNoLateReplyIsMisMatched() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stopInBackground() }
        let log = StateLog()
        let connection = try RedisConnection(
            server: server.address(),
            options: Self.fastOptions,
            onStateChange: log.observer
        )
        #expect(try await connection.send(["PING"]) == .status("PONG"))
        #expect(await log.waitUntil { $0 == [.connected] })

        #expect(await server.pause())
        try #require(server.isPaused)
        let lateKey = unique("late")
        let results = Collector<CommandResult>()
        let clock = ContinuousClock()
        let start = clock.now
        for index in 0..<50 {
            connection.send(["SET", lateKey, "late-\(index)"], timeout: .milliseconds(200)) {
                results.record(index, $0)
            }
        }
        #expect(await results.waitFor(50, within: .seconds(5)))
        // Until the last handler ran (not until this task next got a thread).
        let elapsed = (results.lastRecordedAt ?? clock.now) - start
        #expect(elapsed < .seconds(2), "50 commands with a 200 ms deadline took \(elapsed)")
        let failures = results.values.values.compactMap(\.failure)
        #expect(failures.count == 50)
        #expect(failures.allSatisfy { $0.kind == .timeout }, "\(Set(failures.map(\.kind)))")
        #expect(failures.allSatisfy { $0.outcomeUnknown })
        #expect(results.duplicates == 0)
        #expect(log.disconnections.first?.kind == .timeout)
        try #require(server.isPaused)

        #expect(await server.resume())
        try #require(!server.isPaused)
        #expect(await connection.becomesUsable(within: .seconds(5)))

        // The server may still run the 50 SETs it had buffered, and their replies may come late:
        // none of them may reach a later command.
        let key = unique("fresh")
        let value = unique("value")
        #expect(try await connection.send(["SET", key, value]) == .status("OK"))
        #expect(try await connection.send(["GET", key]) == .bulk(value))
        let echoes = Collector<CommandResult>()
        let payloads = (0..<100).map { unique("echo-\($0)") }
        for (index, payload) in payloads.enumerated() {
            connection.send(["ECHO", payload]) { echoes.record(index, $0) }
        }
        #expect(await echoes.waitFor(100, within: .seconds(5)))
        for (index, payload) in payloads.enumerated() {
            #expect(echoes.values[index] == .success(.bulk(payload)))
        }
        #expect(await log.waitUntil { $0.filter { $0 == .connected }.count >= 2 })
        await connection.close()
    }

    @Test func lateReplyAfterADeadlineIsNeverMatchedToALaterCommand() async throws {
        let server = try await RedisServerProcess.start(.init(enableDebugCommand: true))
        defer { server.stopInBackground() }
        let log = StateLog()
        // A connect timeout longer than the sleep: the reconnect waits for the server to wake up.
        let connection = try RedisConnection(
            server: server.address(),
            options: .init(connectTimeout: .seconds(3), commandTimeout: .seconds(3)),
            onStateChange: log.observer
        )
        #expect(try await connection.send(["PING"]) == .status("PONG"))

        // The server answers +OK after 600 ms, long after the 100 ms deadline.
        let slow = try #require(
            await connection.result(
                of: ["DEBUG", "SLEEP", "0.6"], timeout: .milliseconds(100), within: .seconds(5)))
        #expect(slow.errorKind == .timeout)
        #expect(slow.failure?.outcomeUnknown == true)

        // Sent while the server still sleeps: each must get its own reply, not the late +OK.
        let echoes = Collector<CommandResult>()
        let payloads = (0..<20).map { unique("echo-\($0)") }
        for (index, payload) in payloads.enumerated() {
            connection.send(["ECHO", payload]) { echoes.record(index, $0) }
        }
        #expect(await echoes.waitFor(20, within: .seconds(5)))
        for (index, payload) in payloads.enumerated() {
            #expect(echoes.values[index] == .success(.bulk(payload)), "ECHO \(index)")
        }
        let key = unique("after-late")
        #expect(try await connection.send(["SET", key, "mine"]) == .status("OK"))
        #expect(try await connection.send(["GET", key]) == .bulk("mine"))
        #expect(log.disconnections.first?.kind == .timeout)
        await connection.close()
    }

    @Test func kill9MidCommandFailsPendingThenReconnectsAfterRestart() async throws {
        let server = try await RedisServerProcess.start(.init(enableDebugCommand: true))
        defer { server.stopInBackground() }
        let log = StateLog()
        let connection = try RedisConnection(
            server: server.address(),
            options: .init(
                connectTimeout: .milliseconds(500),
                commandTimeout: .seconds(5),
                reconnectInitialDelay: .milliseconds(25),
                reconnectMaxDelay: .milliseconds(250)
            ),
            onStateChange: log.observer
        )
        #expect(try await connection.send(["PING"]) == .status("PONG"))
        #expect(await log.waitUntil { $0 == [.connected] })
        let firstRunID = try #require(connection.serverRunID)
        #expect(try await server.cli("INFO", "server").contains("run_id:\(firstRunID)"))
        #expect(connection.serverRestartDetectedAt == nil)

        // DEBUG SLEEP keeps the server busy, so everything after it is really in flight.
        let pending = Collector<CommandResult>()
        connection.send(["DEBUG", "SLEEP", "3"]) { pending.record(0, $0) }
        for index in 1...20 {
            connection.send(["ECHO", "\(index)"]) { pending.record(index, $0) }
        }
        try await Task.sleep(for: .milliseconds(200))
        #expect(pending.count == 0)
        #expect(await server.kill9())
        try #require(!server.isRunning)

        #expect(await pending.waitFor(21, within: .seconds(4)))
        for (index, result) in pending.values {
            #expect(
                result.errorKind == .connectionLost || result.errorKind == .timeout, "\(index): \(result)")
            #expect(result.failure?.outcomeUnknown == true)
        }
        #expect(pending.duplicates == 0)
        #expect(
            await log.waitUntil { states in
                states.contains { if case .disconnected = $0 { true } else { false } }
            })
        #expect(!connection.isConnected)

        // While the server is down, commands fail quickly.
        let down = try #require(
            await connection.result(of: ["PING"], timeout: .seconds(1), within: .seconds(5)))
        #expect(down.failure != nil)

        try await server.restart()
        try #require(server.isRunning)
        #expect(await log.waitUntil(within: .seconds(5)) { $0.filter { $0 == .connected }.count >= 2 })
        #expect(await connection.becomesUsable())
        let key = unique("after-restart")
        #expect(try await connection.send(["SET", key, "back"]) == .status("OK"))
        #expect(try await connection.send(["GET", key]) == .bulk("back"))
        // A new process: a new run_id, and the restart is noticed.
        #expect(connection.serverRunID != nil && connection.serverRunID != firstRunID)
        #expect(connection.serverRestartDetectedAt != nil)
        await connection.close()
    }

    @Test func clientKillIsNoticedAndTheConnectionComesBack() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stopInBackground() }
        let log = StateLog()
        let connection = try RedisConnection(
            server: server.address(),
            options: Self.fastOptions,
            onStateChange: log.observer
        )
        let key = unique("kill")
        #expect(try await connection.send(["SET", key, "before"]) == .status("OK"))
        #expect(await log.waitUntil { $0 == [.connected] })
        let runID = try #require(connection.serverRunID)

        let killed = try await server.cli("CLIENT", "KILL", "TYPE", "normal")
        #expect((Int(killed) ?? 0) >= 1, "CLIENT KILL killed \(killed) clients")
        // Noticed without sending anything: the read source sees the close.
        #expect(
            await log.waitUntil { states in
                states.contains {
                    if case .disconnected(let error) = $0 { error.kind == .connectionLost } else { false }
                }
            })
        #expect(await log.waitUntil { $0.filter { $0 == .connected }.count >= 2 })
        #expect(try await connection.send(["GET", key]) == .bulk("before"))
        #expect(try await connection.send(["SET", key, "after"]) == .status("OK"))
        #expect(try await server.cli("GET", key) == "after")
        // The same process: not a restart.
        #expect(connection.serverRunID == runID)
        #expect(connection.serverRestartDetectedAt == nil)
        await connection.close()
    }

    @Test func closeFromInsideTheObserverOnDisconnectDoesNotCrash() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stopInBackground() }
        for round in 0..<10 {
            let box = Box<RedisConnection>()
            let closed = Box<Bool>()
            let connection = try RedisConnection(server: server.address(), options: Self.fastOptions) {
                state in
                // Runs inside hiredis's disconnect callback.
                if case .disconnected(let error) = state, error.kind == .connectionLost {
                    box.take()?.close { closed.value = true }
                }
            }
            box.value = connection
            #expect(try await connection.send(["PING"]) == .status("PONG"))
            _ = try await server.cli("CLIENT", "KILL", "TYPE", "normal")
            #expect(await eventually { closed.value == true }, "round \(round)")
            let after = try #require(await connection.result(of: ["PING"], within: .seconds(5)))
            #expect(after.errorKind == .closed)
        }
    }

    /// A command that was written to the server before `close()` may still run there, just as after
    /// a timeout or a lost connection: its error must not claim the outcome is known.
    @Test func closeWithACommandInFlightDoesNotClaimItDidNotRun() async throws {
        let server = try await RedisServerProcess.start(.init(enableDebugCommand: true))
        defer { server.stopInBackground() }
        let connection = try RedisConnection(
            server: server.address(), options: .init(commandTimeout: .seconds(5)))
        #expect(try await connection.send(["PING"]) == .status("PONG"))

        // Another client keeps the server busy; our SET is written and waits in its socket buffer.
        let sleeper = try RedisConnection(
            server: server.address(), options: .init(commandTimeout: .seconds(5)))
        #expect(try await sleeper.send(["PING"]) == .status("PONG"))
        let slept = Collector<CommandResult>()
        sleeper.send(["DEBUG", "SLEEP", "1.5"]) { slept.record(0, $0) }
        try await Task.sleep(for: .milliseconds(50))
        let key = unique("in-flight")
        let result = Collector<CommandResult>()
        connection.send(["SET", key, "ran"]) { result.record(0, $0) }
        try await Task.sleep(for: .milliseconds(100))
        #expect(result.count == 0, "the server answered while it should be asleep")
        #expect(await connection.closed())
        #expect(await result.waitFor(1))
        let failure = try #require(result.values[0]?.failure)
        #expect(failure.kind == .closed)
        #expect(await slept.waitFor(1, within: .seconds(5)))
        #expect(slept.values[0] == .success(.status("OK")))
        await sleeper.close()

        // Whether the SET ran is unknowable to the client (here the server does run it, once it wakes
        // up and reads what was sent before the close), so the error must not claim it did not.
        let ran = try await server.cli("EXISTS", key) == "1"
        #expect(failure.outcomeUnknown, "the SET \(ran ? "ran" : "did not run"), error: \(failure)")
    }
}
