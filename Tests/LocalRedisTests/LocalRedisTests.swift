import Dispatch
import Foundation
import Hiredis
import LocalRedis
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

// The suite is serialized: the machine has few cores, and several tests measure timing.
@Suite("LocalRedis", .serialized)
struct LocalRedisTests {
    // MARK: - Starting

    @Test func startsOneServerThatAnswersPing() throws {
        let server = try RedisServerProcess.start()
        defer { server.stop() }

        #expect(try server.cli("PING") == "PONG")
        #expect(server.isRunning)
        #expect(!server.isPaused)
        let pid = try #require(server.pid)
        #expect(server.rawPing() == "+PONG")

        // Its own directory, with the files it was promised.
        // Under $MULTIREDLOCK_TEST_DIR when set (as `make test` does), else under a fresh
        // /tmp/multiredlock-XXXXXX.
        let root = environment("MULTIREDLOCK_TEST_DIR").flatMap { $0.isEmpty ? nil : $0 }
        let parent = (server.directory as NSString).deletingLastPathComponent
        if let root {
            #expect(parent == root, "\(server.directory) is not under $MULTIREDLOCK_TEST_DIR \(root)")
        } else {
            #expect(parent.hasPrefix("/tmp/multiredlock-"), "\(server.directory)")
        }
        #expect((server.directory as NSString).lastPathComponent.hasPrefix("redis-"))
        let config = try #require(readText(server.configFilePath))
        #expect(config.contains("bind 127.0.0.1"))
        #expect(config.contains("port \(server.port)\n"))
        #expect(config.contains("save \"\""))
        #expect(config.contains("appendonly no"))
        #expect(readText(server.pidFilePath)?.trimmingCharacters(in: .whitespacesAndNewlines) == String(pid))
        #expect(try #require(readText(server.logFilePath)).contains("Ready to accept connections"))
        #expect(fileMode(server.configFilePath) == 0o600)

        // A direct child of this process, not daemonized.
        #expect(parentPID(of: pid) == getpid())
        #expect(try server.cli("CONFIG", "GET", "daemonize") == "daemonize\nno")
    }

    @Test func twoServersGetDistinctPortsAndDirectories() throws {
        let first = try RedisServerProcess.start()
        defer { first.stop() }
        let second = try RedisServerProcess.start()
        defer { second.stop() }

        #expect(first.port != second.port)
        #expect(first.directory != second.directory)
        #expect(first.pid != second.pid)
        try first.cli("SET", "who", "first")
        try second.cli("SET", "who", "second")
        #expect(try first.cli("GET", "who") == "first")
        #expect(try second.cli("GET", "who") == "second")
    }

    @Test func extraConfigLinesAreApplied() throws {
        let server = try RedisServerProcess.start(.init(extraConfig: ["maxmemory 12345678"]))
        defer { server.stop() }
        #expect(try server.cli("CONFIG", "GET", "maxmemory") == "maxmemory\n12345678")
    }

    @Test func badConfigurationFailsWithTheServersMessage() throws {
        let error = try #require(throws: LocalRedisError.self) {
            _ = try RedisServerProcess.start(.init(extraConfig: ["no-such-directive yes"]))
        }
        #expect(error.kind == .exitedBeforeReady)
        #expect(error.description.contains("no-such-directive"))
        #expect(error.description.contains("exited with exit status 1"))
    }

    @Test func invalidConfigurationsAreRejectedBeforeStarting() throws {
        let emptyPassword = try #require(throws: LocalRedisError.self) {
            _ = try RedisServerProcess.start(.init(password: ""))
        }
        #expect(emptyPassword.kind == .invalidConfiguration)
        let spacedName = try #require(throws: LocalRedisError.self) {
            _ = try RedisServerProcess.start(.init(aclUsers: [ACLUser(name: "a b", password: "x")]))
        }
        #expect(spacedName.kind == .invalidConfiguration)
        let multiline = try #require(throws: LocalRedisError.self) {
            _ = try RedisServerProcess.start(.init(extraConfig: ["maxmemory 1mb\nport 1"]))
        }
        #expect(multiline.kind == .invalidConfiguration)
    }

    // MARK: - Authentication

    @Test func passwordGoesThroughTheConfigFileAndTheEnvironmentOnly() throws {
        let password = "pw-\(UInt32.random(in: 0...UInt32.max)) with \"quotes\" and \\ backslash"
        let server = try RedisServerProcess.start(.init(password: password))
        defer { server.stop() }

        // redis-cli authenticates through REDISCLI_AUTH.
        #expect(try server.cli("PING") == "PONG")
        // A connection that does not authenticate is refused service.
        let reply = try #require(RedisServerProcess.rawPing(port: server.port, timeout: .seconds(2)))
        #expect(reply.hasPrefix("-NOAUTH"))
        #expect(server.rawPing(timeout: .seconds(2)) == "+PONG")
        let connection = try RawRedisConnection(port: server.port)
        #expect(try connection.request("AUTH", password) == "+OK")
        #expect(try connection.request("PING") == "+PONG")

        // The secret is on no command line: not the server's …
        let pid = try #require(server.pid)
        let commandLine = try #require(readText("/proc/\(pid)/cmdline"))
        #expect(commandLine.contains("redis-server"))
        #expect(!commandLine.contains(password))
        #expect(!commandLine.contains("pw-"))
        // … nor in the server's environment …
        let serverEnvironment = try #require(readText("/proc/\(pid)/environ"))
        #expect(!serverEnvironment.contains("pw-"))
        // … but in the config file, readable by its owner only.
        #expect(try #require(readText(server.configFilePath)).contains("requirepass"))
        #expect(fileMode(server.configFilePath) == 0o600)
    }

    // Issue 14.6: other users of the machine reach 127.0.0.1 too, so a server started with the
    // default configuration requires a password (random, one per process), which is on no command line.
    @Test func defaultServerRequiresARandomPasswordThatIsOnNoCommandLine() throws {
        let password = RedisServerConfiguration.defaultPassword
        #expect(password.count == 32 && password.allSatisfy(\.isHexDigit), "not 32 hex digits")
        #expect(RedisServerConfiguration().password == password)
        let server = try RedisServerProcess.start()
        defer { server.stop() }

        // Without AUTH: refused, also for DEBUG on a server that allows it.
        let reply = try #require(RedisServerProcess.rawPing(port: server.port, timeout: .seconds(2)))
        #expect(reply.hasPrefix("-NOAUTH"), "unauthenticated PING got \(reply)")
        let debug = try RedisServerProcess.start(.init(enableDebugCommand: true))
        defer { debug.stop() }
        let anonymous = try RawRedisConnection(port: debug.port)
        #expect(try anonymous.request("DEBUG", "SLEEP", "0")?.hasPrefix("-NOAUTH") == true)
        // With it: served (redis-cli, a raw connection, rawPing).
        #expect(try server.cli("PING") == "PONG")
        #expect(try debug.rawConnection().request("DEBUG", "SLEEP", "0") == "+OK")
        #expect(server.rawPing() == "+PONG")
        let wrong = try RawRedisConnection(port: server.port)
        #expect(try wrong.request("AUTH", "not-\(password)")?.hasPrefix("-WRONGPASS") == true)

        // The password is in the 0600 config file only: not on the server's command line nor in
        // its environment, and the configuration prints it as ***.
        let pid = try #require(server.pid)
        let commandLine = try #require(readText("/proc/\(pid)/cmdline"))
        #expect(commandLine.contains("redis-server"))
        #expect(!commandLine.contains(password))
        #expect(!(try #require(readText("/proc/\(pid)/environ"))).contains(password))
        #expect(try #require(readText(server.configFilePath)).contains("requirepass \"\(password)\""))
        #expect(fileMode(server.configFilePath) == 0o600)
        #expect(fileMode(server.directory) == 0o700)
        #expect(!"\(server.configuration)".contains(password))
        #expect("\(server.configuration)".contains("password: ***"))

        // Asked for: a server without a password.
        let open = try RedisServerProcess.start(.init(password: nil))
        defer { open.stop() }
        #expect(RedisServerProcess.rawPing(port: open.port, timeout: .seconds(2)) == "+PONG")
        #expect(try open.cli("PING") == "PONG")
        #expect("\(open.configuration)".contains("password: nil"))
    }

    @Test func aclUserCanAuthenticateOverARawSocket() throws {
        let users = [
            ACLUser(name: "alice", password: "s3cret"),
            ACLUser(name: "bob", password: "with space \"and quotes\""),
        ]
        let server = try RedisServerProcess.start(.init(password: "default-pass", aclUsers: users))
        defer { server.stop() }

        for user in users {
            let connection = try RawRedisConnection(port: server.port)
            #expect(try connection.request("AUTH", user.name, user.password) == "+OK")
            #expect(try connection.request("SET", "key-\(user.name)", "v") == "+OK")
            #expect(try connection.request("ACL", "WHOAMI") == "$\(user.name.utf8.count)")
            #expect(try connection.readLine(timeout: .seconds(2)) == user.name)
        }
        let wrong = try RawRedisConnection(port: server.port)
        #expect(try wrong.request("AUTH", "alice", "nope")?.hasPrefix("-WRONGPASS") == true)
    }

    // MARK: - Faults

    @Test func kill9ThenRestartOnTheSamePort() throws {
        let server = try RedisServerProcess.start()
        defer { server.stop() }
        let port = server.port
        let firstPID = try #require(server.pid)

        #expect(server.kill9())
        #expect(!server.isRunning)
        #expect(server.pid == nil)
        #expect(processIsGone(firstPID))
        #expect(server.lastExitDescription?.contains("signal 9") == true)
        let refused = try #require(throws: LocalRedisError.self) {
            _ = try RawRedisConnection(port: port, timeout: .seconds(1))
        }
        #expect(refused.kind == .connectionFailed)
        #expect(refused.errno == ECONNREFUSED)
        #expect(server.rawPing() == nil)
        // A killed server's port is not handed to new servers.
        let others = try RedisServerGroup.start(count: 3)
        defer { others.stopAll() }
        #expect(!others.ports.contains(port))

        try server.restart()
        #expect(server.port == port)
        #expect(server.isRunning)
        let secondPID = try #require(server.pid)
        #expect(secondPID != firstPID)
        #expect(try server.cli("PING") == "PONG")
        #expect(server.rawPing() == "+PONG")
    }

    @Test func restartOfARunningServerAfterADelay() throws {
        let server = try RedisServerProcess.start()
        defer { server.stop() }
        let firstPID = try #require(server.pid)

        let clock = ContinuousClock()
        let elapsed = try clock.measure { try server.restart(after: .milliseconds(300)) }
        #expect(elapsed >= .milliseconds(300))
        #expect(processIsGone(firstPID))
        #expect(try #require(server.pid) != firstPID)
        #expect(try server.cli("PING") == "PONG")
    }

    @Test func restartWaitsForThePortToBeReleased() throws {
        let server = try RedisServerProcess.start()
        defer { server.stop() }
        server.kill9()

        // Someone else holds the port for a while: restart keeps trying the SAME port.
        let squatter = try #require(listeningSocket(port: server.port))
        let released = DispatchSemaphore(value: 0)
        DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(400)) {
            close(squatter)
            released.signal()
        }
        let clock = ContinuousClock()
        let elapsed = try clock.measure { try server.restart() }
        released.wait()
        #expect(elapsed >= .milliseconds(350))
        #expect(try server.cli("PING") == "PONG")
    }

    @Test func restartGivesUpWhenThePortStaysTaken() throws {
        let server = try RedisServerProcess.start()
        defer { server.stop() }
        let port = server.port
        server.kill9()
        let squatter = try #require(listeningSocket(port: port))
        defer { close(squatter) }

        let clock = ContinuousClock()
        var failure: LocalRedisError?
        let elapsed = clock.measure {
            do {
                try server.restart()
            } catch {
                failure = error as? LocalRedisError
            }
        }
        #expect(failure?.kind == .portUnavailable)
        #expect(failure?.description.contains("Address already in use") == true)
        #expect(elapsed >= RedisServerProcess.portReleaseTimeout)
        #expect(elapsed < RedisServerProcess.portReleaseTimeout + .seconds(5))
        #expect(!server.isRunning)
        #expect(server.port == port)
    }

    @Test func appendOnlyDataSurvivesKill9AndRestart() throws {
        let server = try RedisServerProcess.start(.init(appendOnly: true))
        defer { server.stop() }
        #expect(try server.cli("CONFIG", "GET", "appendfsync") == "appendfsync\nalways")

        #expect(try server.cli("SET", "survivor", "still-here") == "OK")
        #expect(server.kill9())
        #expect(!server.isRunning)
        try server.restart()
        #expect(try server.cli("GET", "survivor") == "still-here")
    }

    @Test func withoutAppendOnlyDataIsLostOnKill9() throws {
        let server = try RedisServerProcess.start()
        defer { server.stop() }
        try server.cli("SET", "ephemeral", "x")
        server.kill9()
        try server.restart()
        #expect(try server.cli("EXISTS", "ephemeral") == "0")
    }

    @Test func pauseFreezesTheServerAndResumeThawsIt() throws {
        let server = try RedisServerProcess.start()
        defer { server.stop() }
        let pid = try #require(server.pid)

        #expect(server.pause())
        #expect(server.isPaused)
        #expect(server.isRunning)
        #expect(try #require(processState(pid)) == "T")

        // The kernel still accepts the connection, but nobody answers.
        let connection = try RawRedisConnection(port: server.port)
        try connection.send("AUTH", RedisServerConfiguration.defaultPassword)
        try connection.sendRaw("PING\r\n")
        let clock = ContinuousClock()
        var reply: String?
        let waited = try clock.measure { reply = try connection.readLine(timeout: .milliseconds(200)) }
        #expect(reply == nil)
        #expect(waited >= .milliseconds(190))
        // redis-cli gives up within its bound instead of hanging.
        let timedOut = try #require(throws: LocalRedisError.self) {
            _ = try server.cli(arguments: ["PING"], timeout: .milliseconds(300))
        }
        #expect(timedOut.kind == .timeout)

        #expect(server.resume())
        #expect(!server.isPaused)
        #expect(try connection.readLine(timeout: .seconds(2)) == "+OK")
        #expect(try connection.readLine(timeout: .seconds(2)) == "+PONG")
        #expect(try server.cli("PING") == "PONG")
    }

    @Test func stopIsIdempotentAndLeavesNoProcess() throws {
        let server = try RedisServerProcess.start()
        defer { server.stop() }
        let pid = try #require(server.pid)

        server.stop()
        server.stop()
        #expect(!server.isRunning)
        #expect(server.pid == nil)
        #expect(processIsGone(pid))
        #expect(server.rawPing() == nil)
        // Everything else is a harmless no-op on a stopped server.
        #expect(!server.pause())
        #expect(!server.resume())
        #expect(!server.isPaused)
        #expect(server.kill9())
        server.stop()
        let failed = try #require(throws: LocalRedisError.self) { _ = try server.cli("PING") }
        #expect(failed.kind == .commandFailed)
        #expect(failed.description.contains("Connection refused"))

        // A stopped server can be brought back on its port.
        try server.restart()
        #expect(try server.cli("PING") == "PONG")
    }

    @Test func stopEndsAPausedServer() throws {
        let server = try RedisServerProcess.start()
        defer { server.stop() }
        let pid = try #require(server.pid)
        #expect(server.pause())
        server.stop()
        #expect(!server.isRunning)
        #expect(processIsGone(pid))
        // It got SIGCONT and exited on SIGTERM rather than being SIGKILLed.
        #expect(server.lastExitDescription == "exit status 0")
    }

    @Test func kill9EndsAPausedServer() throws {
        let server = try RedisServerProcess.start()
        defer { server.stop() }
        let pid = try #require(server.pid)
        #expect(server.pause())
        #expect(server.kill9())
        #expect(!server.isRunning)
        #expect(!server.isPaused)
        #expect(processIsGone(pid))
        try server.restart()
        #expect(!server.isPaused)
        #expect(try server.cli("PING") == "PONG")
    }

    @Test func operationsInAnyOrderFromManyThreads() throws {
        let server = try RedisServerProcess.start()
        defer { server.stop() }
        let seenPIDs = PIDSet()
        if let pid = server.pid { seenPIDs.insert(pid) }

        DispatchQueue.concurrentPerform(iterations: 6) { worker in
            for step in 0..<12 {
                switch (worker + step) % 7 {
                case 0: server.pause()
                case 1: server.resume()
                case 2: server.kill9()
                case 3: try? server.restart()
                case 4: server.stop()
                case 5: _ = server.isPaused
                default: _ = server.isRunning
                }
                if let pid = server.pid { seenPIDs.insert(pid) }
            }
        }

        // Whatever state it ended in, it can be brought back to a working server.
        if server.isRunning {
            #expect(server.resume())
        } else {
            try server.restart()
        }
        #expect(try server.cli("PING") == "PONG")
        if let pid = server.pid { seenPIDs.insert(pid) }
        server.stop()
        #expect(!server.isRunning)
        for pid in seenPIDs.all {
            #expect(processIsGone(pid) || !isRedisServer(pid), "pid \(pid) is still a running redis-server")
        }
    }

    // MARK: - Options

    @Test func unixSocketExistsAndAnswers() throws {
        let server = try RedisServerProcess.start(.init(unixSocket: true))
        defer { server.stop() }

        let path = try #require(server.unixSocketPath)
        #expect(path.hasPrefix(server.directory + "/"))
        var info = stat()
        #expect(stat(path, &info) == 0)
        #expect((info.st_mode & S_IFMT) == S_IFSOCK)
        let connection = try RawRedisConnection(unixSocketPath: path)
        #expect(try connection.request("AUTH", RedisServerConfiguration.defaultPassword) == "+OK")
        #expect(try connection.request("PING") == "+PONG")
        #expect(try connection.request("SET", "via", "unix") == "+OK")
        #expect(try server.cli("GET", "via") == "unix")

        // The socket comes back after a kill -9 (which leaves the old socket file behind).
        connection.close()
        server.kill9()
        try server.restart()
        let again = try RawRedisConnection(unixSocketPath: path)
        #expect(try again.request("AUTH", RedisServerConfiguration.defaultPassword) == "+OK")
        #expect(try again.request("PING") == "+PONG")

        let plain = try RedisServerProcess.start()
        defer { plain.stop() }
        #expect(plain.unixSocketPath == nil)
    }

    @Test func debugCommandOnlyWhenEnabled() throws {
        let debug = try RedisServerProcess.start(.init(enableDebugCommand: true))
        defer { debug.stop() }
        #expect(try debug.cli("DEBUG", "SLEEP", "0") == "OK")

        let plain = try RedisServerProcess.start()
        defer { plain.stop() }
        let refused = try #require(throws: LocalRedisError.self) { _ = try plain.cli("DEBUG", "SLEEP", "0") }
        #expect(refused.kind == .commandFailed)
        #expect(refused.description.contains("DEBUG command not allowed"))
    }

    @Test func cliReportsErrorRepliesAsFailures() throws {
        let server = try RedisServerProcess.start()
        defer { server.stop() }
        let failure = try #require(throws: LocalRedisError.self) { _ = try server.cli("NOSUCHCOMMAND") }
        #expect(failure.kind == .commandFailed)
        #expect(failure.description.contains("unknown command"))
        // A nil reply is an empty string, not an error.
        #expect(try server.cli("GET", "missing") == "")
    }

    // MARK: - Groups and cleanup

    @Test func groupOfThreeStartsAndStopAllStopsAll() throws {
        let group = try RedisServerGroup.start(count: 3)
        defer { group.stopAll() }

        #expect(group.servers.count == 3)
        #expect(Set(group.ports).count == 3)
        var pids: [pid_t] = []
        for server in group.servers {
            #expect(try server.cli("PING") == "PONG")
            pids.append(try #require(server.pid))
        }

        group.stopAll()
        for server in group.servers {
            #expect(!server.isRunning)
        }
        for pid in pids {
            #expect(processIsGone(pid))
        }
        group.stopAll()
    }

    // `stopAllRunning()` is not tested here: it stops every server of the test process, and the other
    // suites run their own servers beside this one. The demo's Ctrl-C path exercises it.

    @Test func deinitStopsTheServer() throws {
        var pid: pid_t = 0
        var directory = ""
        do {
            let server = try RedisServerProcess.start()
            pid = try #require(server.pid)
            directory = server.directory
            #expect(try server.cli("PING") == "PONG")
        }
        #expect(processIsGone(pid))
        // Directories are removed only under a root LocalRedis created itself, and not with
        // MULTIREDLOCK_KEEP_DIRS; under $MULTIREDLOCK_TEST_DIR (`make test`) they are kept for `make`
        // to remove. Either way the outcome is checked.
        let configuredRoot = !(environment("MULTIREDLOCK_TEST_DIR") ?? "").isEmpty
        let keep = environment("MULTIREDLOCK_KEEP_DIRS").map { !$0.isEmpty && $0 != "0" } ?? false
        if configuredRoot || keep {
            #expect(access(directory, F_OK) == 0, "the server's directory is kept under a chosen root")
        } else {
            #expect(access(directory, F_OK) != 0, "the server's temporary directory is removed")
        }
    }
}

// MARK: - Helpers

private func environment(_ name: String) -> String? {
    ProcessInfo.processInfo.environment[name]
}

/// Reads a whole file with read(2) (works for /proc files, whose size reads as 0).
private func readText(_ path: String) -> String? {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count <= 0 { break }
        bytes += chunk[0..<count]
    }
    // /proc/PID/cmdline separates arguments with NUL.
    return String(decoding: bytes.map { $0 == 0 ? UInt8(ascii: " ") : $0 }, as: UTF8.self)
}

private func fileMode(_ path: String) -> mode_t? {
    var info = stat()
    guard stat(path, &info) == 0 else { return nil }
    return info.st_mode & 0o777
}

/// kill(pid, 0) fails with ESRCH: no such process (not even a zombie).
private func processIsGone(_ pid: pid_t) -> Bool {
    kill(pid, 0) == -1 && errno == ESRCH
}

/// Field 3 of /proc/PID/stat.
private func processState(_ pid: pid_t) -> Character? {
    guard let stat = readText("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return nil }
    return stat[stat.index(after: close)...].first { $0 != " " }
}

/// Field 4 of /proc/PID/stat.
private func parentPID(of pid: pid_t) -> pid_t? {
    guard let stat = readText("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return nil }
    let fields = stat[stat.index(after: close)...].split(separator: " ")
    return fields.count > 1 ? pid_t(fields[1]) : nil
}

/// A socket listening on 127.0.0.1:`port`, or nil if the port cannot be bound.
private func listeningSocket(port: Int) -> Int32? {
    #if os(Linux)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    #else
        let fd = socket(AF_INET, SOCK_STREAM, 0)
    #endif
    guard fd >= 0 else { return nil }
    var one: Int32 = 1
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port)).bigEndian
    address.sin_addr.s_addr = in_addr_t(0x7f00_0001).bigEndian
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
    }
    guard bound == 0, listen(fd, 8) == 0 else {
        close(fd)
        return nil
    }
    return fd
}

private func isRedisServer(_ pid: pid_t) -> Bool {
    readText("/proc/\(pid)/cmdline")?.contains("redis-server") == true
}

/// Pids seen from several threads.
private final class PIDSet: Sendable {
    private let pids = Locked<Set<pid_t>>([])

    func insert(_ pid: pid_t) {
        pids.withLock { _ = $0.insert(pid) }
    }

    var all: Set<pid_t> { pids.withLock { $0 } }
}
