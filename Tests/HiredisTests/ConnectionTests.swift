import Dispatch
import Foundation
import Hiredis
import LocalRedis
import Synchronization
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// `RedisConnection` against real redis-servers that each test starts (and stops) itself.
@Suite("RedisConnection against real servers")
struct ConnectionTests {
    // MARK: - Round trips

    @Test func pingSetGetAndErrorReplies() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stopInBackground() }
        let connection = try RedisConnection(server: server.address(), options: .patient)

        #expect(try await connection.send(["PING"]) == .status("PONG"))
        #expect(connection.isConnected)
        let key = unique("key")
        #expect(try await connection.send(["SET", key, "value"]) == .status("OK"))
        #expect(try await connection.send(["GET", key]) == .bulk("value"))
        #expect(try await connection.send(["GET", unique("missing")]) == .null)
        #expect(try await connection.send(["RPUSH", key + "-list", "a", "b", "c"]) == .integer(3))
        #expect(
            try await connection.send(["LRANGE", key + "-list", "0", "-1"])
                == .array([.bulk("a"), .bulk("b"), .bulk("c")]))

        // An error reply is the server's answer, returned and not thrown; the connection stays up.
        let wrongType = try await connection.send(["INCR", key])
        #expect(wrongType.isError)
        #expect(wrongType.string?.hasPrefix("ERR value is not an integer") == true)
        #expect(try await connection.send(["NO-SUCH-COMMAND", "x"]).isError)
        #expect(try await connection.send(["INCR", key + "-n"]) == .integer(1))
        #expect(try await connection.send(["PING"]) == .status("PONG"))
        #expect(connection.isConnected)
        await connection.close()
    }

    @Test func tenThousandCommandsInFlightKeepTheirOrder() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stopInBackground() }
        // The test is about ordering, not deadlines: a loaded machine must not turn it into a timeout.
        let connection = try RedisConnection(
            server: server.address(),
            options: .init(commandTimeout: .seconds(60))
        )
        #expect(try await connection.send(["PING"]) == .status("PONG"))
        let count = 10_000

        // Issued in a loop with completion handlers: replies must come back in the same order, each
        // one to its own command.
        let echoes = Collector<CommandResult>()
        for index in 0..<count {
            connection.send(["ECHO", "echo-\(index)"]) { echoes.record(index, $0) }
        }
        #expect(await echoes.waitFor(count, within: .seconds(60)))
        #expect(echoes.duplicates == 0)
        #expect(echoes.order == Array(0..<count), "completions ran out of order")
        let values = echoes.values
        let mismatched = (0..<count).filter { values[$0] != .success(.bulk("echo-\($0)")) }
        #expect(
            mismatched.isEmpty,
            "\(mismatched.count) mismatched, e.g. \(mismatched.prefix(3).map { values[$0] })")

        // Issued from many tasks at once (many threads calling into one connection).
        let counter = unique("counter")
        let replies = try await withThrowingTaskGroup(of: RedisReply.self) { group in
            for _ in 0..<count {
                group.addTask { try await connection.send(["INCR", counter]) }
            }
            var replies: [RedisReply] = []
            for try await reply in group { replies.append(reply) }
            return replies
        }
        #expect(replies.count == count)
        #expect(Set(replies.compactMap(\.integer)) == Set((1...count).map(Int64.init)))
        #expect(try await connection.send(["GET", counter]) == .bulk(String(count)))
        await connection.close()
    }

    @Test func binaryArgumentsAndLargeValuesRoundTripByteExact() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stopInBackground() }
        let connection = try RedisConnection(
            server: server.address(),
            options: .init(commandTimeout: .seconds(20))
        )
        let set = Array("SET".utf8)
        let get = Array("GET".utf8)

        // NUL, CR and LF inside a key and a value.
        let key: [UInt8] =
            Array("bin".utf8) + [0] + Array("key\r\n".utf8) + [255, 0] + Array(unique("").utf8)
        let value: [UInt8] = (0...255).map { UInt8($0) } + [0, 0, 13, 10, 13, 10, 36, 45, 49, 13, 10]
        #expect(try await connection.send(RedisCommand(bytes: [set, key, value])) == .status("OK"))
        #expect(try await connection.send(RedisCommand(bytes: [get, key])) == .bulkString(value))
        #expect(
            try await connection.send(RedisCommand(bytes: [Array("STRLEN".utf8), key]))
                == .integer(Int64(value.count)))
        // The key really holds its NUL: the part before it names another key.
        #expect(try await connection.send(["EXISTS", "bin"]) == .integer(0))

        // An empty value is not null.
        let emptyKey = Array(unique("empty").utf8)
        #expect(try await connection.send(RedisCommand(bytes: [set, emptyKey, []])) == .status("OK"))
        #expect(try await connection.send(RedisCommand(bytes: [get, emptyKey])) == .bulkString([]))

        // 1 MiB values: more than one write(2) and one read(2) each, several in flight at once.
        let size = 1 << 20
        let bigValues = (0..<4).map { seed in
            (0..<size).map { UInt8(truncatingIfNeeded: ($0 &* 2_654_435_761 &+ seed &* 40_503) >> 7) }
        }
        let bigKeys = (0..<4).map { Array(unique("big-\($0)").utf8) }
        #expect(
            try await connection.send(RedisCommand(bytes: [set, bigKeys[0], bigValues[0]])) == .status("OK"))
        #expect(
            try await connection.send(RedisCommand(bytes: [get, bigKeys[0]])) == .bulkString(bigValues[0]))
        let stored = Collector<CommandResult>()
        for index in 0..<4 {
            connection.send(RedisCommand(bytes: [set, bigKeys[index], bigValues[index]])) {
                stored.record(index, $0)
            }
        }
        let fetched = Collector<CommandResult>()
        for index in 0..<4 {
            connection.send(RedisCommand(bytes: [get, bigKeys[index]])) { fetched.record(index, $0) }
        }
        #expect(await stored.waitFor(4, within: .seconds(20)))
        #expect(await fetched.waitFor(4, within: .seconds(20)))
        for index in 0..<4 {
            #expect(stored.values[index] == .success(.status("OK")))
            #expect(fetched.values[index] == .success(.bulkString(bigValues[index])), "big value \(index)")
        }
        await connection.close()
    }

    @Test func emptyCommandFailsAsInvalidWithoutReachingTheServer() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stopInBackground() }
        let connection = try RedisConnection(server: server.address(), options: .patient)
        let result = try #require(await connection.result(of: RedisCommand([]), within: .seconds(5)))
        #expect(result.errorKind == .invalidCommand)
        #expect(try await connection.send(["PING"]) == .status("PONG"))
        await connection.close()
    }

    @Test func malformedAddressIsRejectedAtCreation() throws {
        let password = "never-show-\(UUID().uuidString)"
        for address in [
            RedisServer(host: "127.0.0.1", port: 70_000, password: password),
            RedisServer(host: "", port: 6379, password: password),
            RedisServer(host: "127.0.0.1", port: 0, password: password),
        ] {
            let error = try #require(throws: RedisConnectionError.self) {
                _ = try RedisConnection(server: address)
            }
            #expect(error.kind == .invalidAddress)
            #expect(!error.description.contains(password))
        }
    }

    // MARK: - Handshake: AUTH, ACL users, SELECT, unix sockets

    @Test func passwordIsSentAndSentAgainAfterAReconnect() async throws {
        let password = "pass-\(UUID().uuidString)"
        let server = try await RedisServerProcess.start(.init(password: password))
        defer { server.stopInBackground() }
        let log = StateLog()
        let connection = try RedisConnection(
            server: server.address(password: password),
            options: .patient,
            onStateChange: log.observer
        )
        let key = unique("auth")
        #expect(try await connection.send(["SET", key, "authenticated"]) == .status("OK"))
        #expect(try await server.cli("GET", key) == "authenticated")
        #expect(!connection.server.description.contains(password))

        // The server drops the connection; the reconnect must authenticate again.
        _ = try await server.cli("CLIENT", "KILL", "TYPE", "normal")
        #expect(await log.waitUntil { $0.filter { $0 == .connected }.count >= 2 })
        #expect(await connection.becomesUsable())
        #expect(try await connection.send(["GET", key]) == .bulk("authenticated"))
        await connection.close()
    }

    @Test func wrongPasswordFailsAsAuthenticationFailedWithoutShowingIt() async throws {
        let password = "right-\(UUID().uuidString)"
        let wrong = "wrong-\(UUID().uuidString)"
        let server = try await RedisServerProcess.start(.init(password: password))
        defer { server.stopInBackground() }
        let log = StateLog()
        let connection = try RedisConnection(
            server: server.address(password: wrong),
            options: .init(connectTimeout: .seconds(5)),
            onStateChange: log.observer
        )
        let result = try #require(await connection.result(of: ["PING"], within: .seconds(10)))
        let error = try #require(result.failure, "PING with a wrong password succeeded")
        #expect(error.failed(because: .authenticationFailed), "\(error)")
        #expect(!error.outcomeUnknown)
        #expect(!error.description.contains(wrong))
        #expect(!error.description.contains(password))
        #expect(!connection.isConnected)

        #expect(
            await log.waitUntil { states in
                states.contains { state in
                    if case .disconnected(let error) = state {
                        error.kind == .authenticationFailed
                    } else {
                        false
                    }
                }
            })
        for state in log.all {
            #expect(!"\(state)".contains(wrong))
        }
        // It keeps failing (while backing off or retrying), never hangs, never shows the password.
        for _ in 0..<3 {
            let again = try #require(await connection.result(of: ["PING"], within: .seconds(10)))
            #expect(again.failure?.failed(because: .authenticationFailed) == true, "\(again)")
            #expect(again.failure.map { !$0.description.contains(wrong) } ?? false)
        }
        await connection.close()
    }

    @Test func missingPasswordFailsAsAuthenticationFailed() async throws {
        let server = try await RedisServerProcess.start(.init(password: "pass-\(UUID().uuidString)"))
        defer { server.stopInBackground() }
        let connection = try RedisConnection(server: server.address(password: nil), options: .patient)
        let result = try #require(await connection.result(of: ["PING"], within: .seconds(10)))
        #expect(result.failure?.failed(because: .authenticationFailed) == true, "\(result)")
        await connection.close()
    }

    @Test func aclUserAuthenticatesWithNameAndPassword() async throws {
        let user = ACLUser(name: "locker", password: "acl-\(UUID().uuidString)")
        let server = try await RedisServerProcess.start(
            .init(password: "default-\(UUID().uuidString)", aclUsers: [user]))
        defer { server.stopInBackground() }
        let connection = try RedisConnection(
            server: server.address(password: user.password, username: user.name), options: .patient)
        #expect(try await connection.send(["ACL", "WHOAMI"]) == .bulk("locker"))
        #expect(!connection.server.description.contains(user.password))
        await connection.close()

        let wrong = "not-\(user.password)"
        let refused = try RedisConnection(
            server: server.address(password: wrong, username: user.name), options: .patient)
        let result = try #require(await refused.result(of: ["PING"], within: .seconds(10)))
        #expect(result.failure?.failed(because: .authenticationFailed) == true, "\(result)")
        #expect(result.failure.map { !$0.description.contains(wrong) } ?? false)
        await refused.close()
    }

    @Test func configuredDatabaseIsSelectedOnEveryConnect() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stopInBackground() }
        let log = StateLog()
        let connection = try RedisConnection(
            server: server.address(database: 3), options: .patient, onStateChange: log.observer)
        let key = unique("db3")
        #expect(try await connection.send(["SET", key, "in-three"]) == .status("OK"))
        #expect(try await server.cli("-n", "3", "GET", key) == "in-three")
        #expect(try await server.cli("-n", "0", "EXISTS", key) == "0")

        // After a reconnect, SELECT runs again.
        _ = try await server.cli("CLIENT", "KILL", "TYPE", "normal")
        #expect(await log.waitUntil { $0.filter { $0 == .connected }.count >= 2 })
        #expect(await connection.becomesUsable())
        let second = unique("db3-again")
        #expect(try await connection.send(["SET", second, "still-three"]) == .status("OK"))
        #expect(try await server.cli("-n", "3", "GET", second) == "still-three")
        #expect(try await server.cli("-n", "0", "EXISTS", second) == "0")
        await connection.close()
    }

    @Test func missingDatabaseFailsTheHandshake() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stopInBackground() }
        let connection = try RedisConnection(server: server.address(database: 99), options: .patient)
        let result = try #require(await connection.result(of: ["PING"], within: .seconds(10)))
        #expect(result.failure?.failed(because: .handshakeFailed) == true, "\(result)")
        await connection.close()
    }

    @Test func unixSocketServer() async throws {
        let server = try await RedisServerProcess.start(.init(unixSocket: true))
        defer { server.stopInBackground() }
        let connection = try RedisConnection(server: try server.unixAddress(), options: .patient)
        #expect(try await connection.send(["PING"]) == .status("PONG"))
        // CLIENT INFO's flags show U for a unix socket client.
        let info = try #require(try await connection.send(["CLIENT", "INFO"]).string)
        let flags = try #require(info.split(separator: " ").first { $0.hasPrefix("flags=") })
        #expect(flags.contains("U"), "CLIENT INFO: \(info)")
        let key = unique("unix")
        #expect(try await connection.send(["SET", key, "over-unix"]) == .status("OK"))
        #expect(try await server.cli("GET", key) == "over-unix")
        await connection.close()
    }

    @Test func missingUnixSocketFailsPromptly() async throws {
        let connection = try RedisConnection(
            server: RedisServer(unixSocket: "/nonexistent-\(UUID().uuidString).sock"),
            options: .patient
        )
        let (result, elapsed) = await connection.timedResult(of: ["PING"], within: .seconds(10))
        #expect(try #require(result).isRefusal, "\(String(describing: result))")
        // From the failed connect itself, not from a timer: well before the 10 s connect timeout
        // (immediate in fact; a machine busy with sanitizers and other tests took 2 s).
        #expect(elapsed < .seconds(5))
        await connection.close()
    }

    // MARK: - Connecting

    @Test func refusedConnectFailsPromptlyEveryTime() async throws {
        let refusing = try RefusingPort()
        defer { refusing.release() }
        // A lost event shows as a .connectTimeout after 8 s (the command's own deadline is later).
        // A refused connect is answered within a millisecond; the 4 s bound leaves room for a machine
        // busy with sanitizers and other tests (one took 2 s), and still tells it from the timeout.
        let options = RedisConnectionOptions(connectTimeout: .seconds(8), commandTimeout: .seconds(9))
        var slow: [String] = []
        var slowest = Duration.zero
        for attempt in 0..<200 {
            let log = StateLog()
            let connection = try RedisConnection(
                server: RedisServer(host: "127.0.0.1", port: refusing.port),
                options: options,
                onStateChange: log.observer
            )
            let (result, elapsed) = await connection.timedResult(of: ["PING"], within: .seconds(10))
            slowest = max(slowest, elapsed)
            if result?.isRefusal != true || elapsed >= .seconds(4) {
                slow.append("attempt \(attempt): \(result.map { "\($0)" } ?? "no result") after \(elapsed)")
            }
            if attempt == 0 {
                #expect(await log.waitUntil { !$0.isEmpty })
                #expect(log.disconnections.first?.kind == .connectFailed)
            }
            #expect(await connection.closed())
            if slow.count >= 3 { break }
        }
        #expect(slow.isEmpty, "refused connects that did not fail promptly: \(slow)")
        #expect(slowest < .seconds(4))
    }

    @Test func hostNameIsResolved() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stopInBackground() }
        let connection = try RedisConnection(
            server: RedisServer(
                host: "localhost", port: server.port, password: RedisServerConfiguration.defaultPassword),
            options: .patient)
        #expect(try await connection.send(["PING"]) == .status("PONG"))
        let key = unique("localhost")
        #expect(try await connection.send(["SET", key, "resolved"]) == .status("OK"))
        #expect(try await connection.send(["GET", key]) == .bulk("resolved"))
        await connection.close()
    }

    @Test func unresolvableHostFailsAsConnectFailed() async throws {
        let connection = try RedisConnection(
            server: RedisServer(host: "no-such-host.invalid", port: 6379),
            options: .init(connectTimeout: .seconds(5))
        )
        let result = try #require(await connection.result(of: ["PING"], within: .seconds(10)))
        // .connectTimeout only if the resolver itself is slow to say no.
        let kind = try #require(result.errorKind)
        #expect([.connectFailed, .notConnected, .connectTimeout].contains(kind), "\(result)")
        await connection.close()
    }

    // MARK: - Observer and close

    @Test func observerReportsConnectedOnceAndCloseFailsLaterCommands() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stopInBackground() }
        let log = StateLog()
        let connection = try RedisConnection(
            server: server.address(), options: .patient, onStateChange: log.observer)
        #expect(try await connection.send(["PING"]) == .status("PONG"))
        #expect(await log.waitUntil { $0.contains(.connected) })
        #expect(connection.isConnected)
        for _ in 0..<10 { _ = try await connection.send(["PING"]) }
        #expect(log.all == [.connected])

        await connection.close()
        #expect(!connection.isConnected)
        #expect(log.disconnections.map(\.kind) == [.closed])
        let after = try #require(await connection.result(of: ["PING"], within: .seconds(5)))
        #expect(after.errorKind == .closed)
        let thrown = try await #require(throws: RedisConnectionError.self) {
            _ = try await connection.send(["PING"])
        }
        #expect(thrown.kind == .closed)
        // Closing twice is harmless.
        #expect(await connection.closed())
        #expect(log.all.count == 2)
    }

    @Test func closeWithCommandsPendingCompletesEveryOneOnce() async throws {
        let server = try await RedisServerProcess.start(.init(enableDebugCommand: true))
        defer { server.stopInBackground() }
        let address = server.address()

        // Sent before the connection is up.
        do {
            let connection = try RedisConnection(server: address, options: .patient)
            let results = Collector<CommandResult>()
            for index in 0..<100 { connection.send(["PING"]) { results.record(index, $0) } }
            #expect(await connection.closed())
            #expect(await results.waitFor(100, within: .seconds(5)))
            #expect(
                results.values.values.allSatisfy {
                    $0 == .success(.status("PONG")) || $0.errorKind == .closed
                })
            #expect(results.duplicates == 0)
        }
        // Sent on a ready connection, closed at once.
        do {
            let connection = try RedisConnection(server: address, options: .patient)
            #expect(try await connection.send(["PING"]) == .status("PONG"))
            let results = Collector<CommandResult>()
            for index in 0..<100 { connection.send(["PING"]) { results.record(index, $0) } }
            #expect(await connection.closed())
            #expect(await results.waitFor(100, within: .seconds(5)))
            #expect(
                results.values.values.allSatisfy {
                    $0 == .success(.status("PONG")) || $0.errorKind == .closed
                })
            #expect(results.duplicates == 0)
        }
        // Written to a server that is busy (DEBUG SLEEP), so all 100 are really in flight.
        do {
            let connection = try RedisConnection(
                server: address, options: .patient)
            #expect(try await connection.send(["PING"]) == .status("PONG"))
            let results = Collector<CommandResult>()
            // 2 s: a loaded machine under a sanitizer was seen taking over 1 s for the 100 ms sleep below.
            connection.send(["DEBUG", "SLEEP", "2"]) { results.record(0, $0) }
            for index in 1..<100 { connection.send(["PING"]) { results.record(index, $0) } }
            try await Task.sleep(for: .milliseconds(100))
            #expect(results.count == 0, "answered while the server sleeps: \(results.values.prefix(3))")
            #expect(await connection.closed())
            #expect(await results.waitFor(100, within: .seconds(5)))
            #expect(results.values.values.allSatisfy { $0.errorKind == .closed })
            // Nothing more arrives later (hiredis's NULL replies on free must not complete twice).
            try await Task.sleep(for: .milliseconds(2200))
            #expect(results.duplicates == 0)
        }
    }

    @Test func sendersOnManyThreadsRacingCloseAllComplete() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stopInBackground() }
        let connection = try RedisConnection(server: server.address(), options: .patient)
        #expect(try await connection.send(["PING"]) == .status("PONG"))
        let results = Collector<CommandResult>()
        let threads = 8
        let perThread = 500
        DispatchQueue.global().async {
            DispatchQueue.concurrentPerform(iterations: threads) { thread in
                for index in 0..<perThread {
                    let id = thread * perThread + index
                    connection.send(["ECHO", "\(id)"]) { results.record(id, $0) }
                }
            }
        }
        try await Task.sleep(for: .milliseconds(5))
        #expect(await connection.closed())
        #expect(await results.waitFor(threads * perThread, within: .seconds(20)))
        let values = results.values
        for (id, result) in values {
            #expect(
                result == .success(.bulk("\(id)")) || result.errorKind == .closed, "command \(id): \(result)")
        }
        #expect(results.duplicates == 0)
    }

    // MARK: - Resources and callback re-entrancy

    @Test func connectCloseCyclesLeakNoFileDescriptors() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stopInBackground() }
        let address = server.address()
        func cycle() async -> String? {
            let connection: RedisConnection
            do {
                connection = try RedisConnection(server: address, options: .patient)
            } catch {
                return "init failed: \(error)"
            }
            let reply = await connection.result(of: ["PING"], within: .seconds(10))
            guard reply == .success(.status("PONG")) else { return "PING: \(String(describing: reply))" }
            guard await connection.closed() else { return "close did not finish" }
            return nil
        }
        // Warm-up: Dispatch allocates its process-wide descriptors (epoll, eventfd, timerfd) once.
        for _ in 0..<5 { _ = await cycle() }
        let before = openDescriptorCount()
        for index in 0..<1000 {
            if let problem = await cycle() {
                Issue.record("cycle \(index): \(problem)")
                break
            }
        }
        #expect(socketsConnected(toPort: server.port) == 0)
        var after = openDescriptorCount()
        // Other tests open and close descriptors in parallel: give them a moment.
        let flat = await eventually(timeout: .seconds(3)) {
            after = openDescriptorCount()
            return after <= before + 5
        }
        #expect(flat, "open descriptors: \(before) before, \(after) after 1000 cycles")
        // The server saw every connection go: only redis-cli's own is left.
        #expect(await eventually(timeout: .seconds(5)) { (try? await server.connectedClients()) == 1 })
    }

    /// The connection's sockets are close-on-exec: a child process spawned while it is open (here with
    /// no file actions, so it keeps every descriptor that lacks the flag) does not hold the TCP
    /// connection open after `close()`.
    @Test func childProcessesDoNotInheritTheConnection() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stopInBackground() }
        // Patient: this test is about descriptors, not timeouts. With the default 1 s connect timeout,
        // this first PING once failed on CI while a sanitizer run was starting its first servers.
        let connection = try RedisConnection(server: server.address(), options: .patient)
        let ping = await connection.result(of: ["PING"], within: .seconds(15))
        #expect(ping == .success(.status("PONG")), "\(String(describing: ping))")
        // A minute (killed below): alive for the whole test, even on a pool held up for seconds.
        let child = try Subprocess("/bin/sleep", ["60"], inheritingDescriptors: true)
        defer { child.signal(SIGKILL) }
        #expect(await connection.closed())
        let gone = await eventually(timeout: .seconds(3)) { (try? await server.connectedClients()) == 1 }
        // The child was alive the whole time, so it is not its exit that closed the socket.
        #expect(!child.hasExited, "the child is still running")
        #expect(gone, "the server still sees the connection: the child inherited its socket")
    }

    /// Connections opened and closed from several tasks at once: a descriptor that one connection
    /// frees is at once reused by another's socket, and that socket must still get its events.
    @Test func concurrentConnectCloseCyclesNeverLoseEvents() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stopInBackground() }
        let refusing = try RefusingPort()
        defer { refusing.release() }
        // A stalled connection shows up as a .connectTimeout (or a command timeout) after 3 s or more
        // instead of a prompt answer; anything as slow as the connect timeout counts as a stall.
        let options = RedisConnectionOptions(connectTimeout: .seconds(3), commandTimeout: .seconds(4))
        let targets = [server.address(), RedisServer(host: "127.0.0.1", port: refusing.port)]
        let stalls = try await withThrowingTaskGroup(of: String?.self) { group in
            for worker in 0..<8 {
                group.addTask {
                    let accepting = worker % 2 == 0
                    for cycle in 0..<500 {
                        let connection = try RedisConnection(server: targets[worker % 2], options: options)
                        let (result, elapsed) = await connection.timedResult(
                            of: ["PING"], within: .seconds(10))
                        _ = await connection.closed()
                        let expected =
                            accepting ? result == .success(.status("PONG")) : result?.isRefusal == true
                        if !expected || elapsed >= options.connectTimeout {
                            // One stall per worker is enough evidence; stop early.
                            return
                                "worker \(worker) cycle \(cycle): \(String(describing: result)) after \(elapsed)"
                        }
                    }
                    return nil
                }
            }
            var stalls: [String] = []
            for try await stall in group { stall.map { stalls.append($0) } }
            return stalls
        }
        #expect(stalls.isEmpty, "connections that got no event: \(stalls)")
    }

    @Test func closeFromInsideTheObserverDoesNotCrash() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stopInBackground() }
        for round in 0..<100 {
            // Odd rounds close explicitly; even rounds drop the last reference inside the callback.
            let explicit = round % 2 == 1
            let box = Box<RedisConnection>()
            let log = StateLog()
            let record = log.observer
            let observer: @Sendable (RedisConnectionState) -> Void = { state in
                record(state)
                guard state == .connected else { return }
                // The test publishes the connection right after init; wait for it (briefly).
                var spins = 0
                while box.value == nil && spins < 10_000 {
                    usleep(100)
                    spins += 1
                }
                if explicit {
                    box.value?.close {}
                    _ = box.take()
                } else {
                    _ = box.take()  // deinit runs here, inside hiredis's reply callback
                }
            }
            box.value = try RedisConnection(
                server: server.address(), options: .patient, onStateChange: observer)
            let closed = await log.waitUntil(within: .seconds(10)) { states in
                states.contains { if case .disconnected = $0 { true } else { false } }
            }
            #expect(closed, "round \(round): \(log.all)")
            #expect(log.disconnections.first?.kind == .closed)
            if !closed { break }
        }
        #expect(await eventually(timeout: .seconds(5)) { (try? await server.connectedClients()) == 1 })
    }

    @Test func closeFromInsideACompletionHandlerDoesNotCrash() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stopInBackground() }
        for _ in 0..<100 {
            let connection = try RedisConnection(server: server.address(), options: .patient)
            let results = Collector<CommandResult>()
            let closed = Box<Bool>()
            connection.send(["PING"]) { result in
                results.record(0, result)
                connection.close { closed.value = true }
            }
            for index in 1..<10 { connection.send(["PING"]) { results.record(index, $0) } }
            #expect(await results.waitFor(10, within: .seconds(10)))
            #expect(await eventually { closed.value == true })
            #expect(results.values[0] == .success(.status("PONG")))
            #expect(
                results.values.values.allSatisfy {
                    $0 == .success(.status("PONG")) || $0.errorKind == .closed
                })
            #expect(results.duplicates == 0)
        }
        // A completion that runs inside hiredis's connect-failed callback closes the connection.
        let refusing = try RefusingPort()
        defer { refusing.release() }
        for _ in 0..<50 {
            let connection = try RedisConnection(
                server: RedisServer(host: "127.0.0.1", port: refusing.port), options: .patient)
            let closed = await awaitCallback(within: .seconds(10)) { done in
                connection.send(["PING"]) { _ in connection.close { done(true) } }
            }
            #expect(closed == true)
        }
    }

    @Test func idleConnectionsCloseAndDropWithoutCrashing() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stopInBackground() }
        let address = server.address()
        // Connect, PING, then close while idle: writability is no longer watched by then.
        for index in 0..<300 {
            let connection = try RedisConnection(server: address, options: .patient)
            #expect(await connection.result(of: ["PING"], within: .seconds(10)) == .success(.status("PONG")))
            if index % 10 == 0 { try await Task.sleep(for: .milliseconds(2)) }
            #expect(await connection.closed())
        }
        // The same, but the connection is just dropped (deinit closes it).
        for _ in 0..<100 {
            let connection = try RedisConnection(server: address, options: .patient)
            #expect(await connection.result(of: ["PING"], within: .seconds(10)) == .success(.status("PONG")))
        }
        // Closed, or dropped, before it ever connected.
        for _ in 0..<100 {
            let connection = try RedisConnection(server: address, options: .patient)
            #expect(await connection.closed())
        }
        for _ in 0..<100 {
            _ = try RedisConnection(server: address, options: .patient)
        }
        // Everything is gone on the server's side, and a new connection still works.
        #expect(await eventually(timeout: .seconds(5)) { (try? await server.connectedClients()) == 1 })
        let connection = try RedisConnection(server: address, options: .patient)
        #expect(try await connection.send(["PING"]) == .status("PONG"))
        await connection.close()
    }
}
