import Foundation
import Hiredis

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// One real `redis-server` on 127.0.0.1, run as a direct child of this process, for tests, demos and
/// benchmarks that need to inject faults: kill it (`kill9`), freeze it (`pause`/`resume`), bring it
/// back on the same port with the same data directory (`restart`), and stop it for good (`stop`).
///
/// Every operation really happens and is verified before it returns (the child is reaped, its
/// /proc state is checked, it answers PING), every wait is bounded, and all of them may be called in
/// any order from any thread. The server is stopped when this object is deinitialized, by
/// `RedisServerProcess.stopAllRunning()`, and at process exit.
///
/// Files live in `directory`: redis.conf (mode 0600: it may hold passwords), redis.pid, redis.log,
/// redis.stdout.log (the server's stdout/stderr, e.g. config errors), appendonlydir/, redis.sock.
/// The directory is deleted on deinit when it lives under a root this process created in /tmp;
/// set MULTIREDLOCK_TEST_DIR to choose the root (then nothing is deleted), or MULTIREDLOCK_KEEP_DIRS=1.
public final class RedisServerProcess: Sendable, CustomStringConvertible {
    /// The TCP port on 127.0.0.1. It never changes, not even across `restart()`.
    public let port: Int
    /// This server's own directory (its redis `dir`).
    public let directory: String
    /// The unix socket it also listens on, if `configuration.unixSocket`.
    public let unixSocketPath: String?
    public let configuration: RedisServerConfiguration

    public var configFilePath: String { directory + "/redis.conf" }
    public var logFilePath: String { directory + "/redis.log" }
    public var pidFilePath: String { directory + "/redis.pid" }
    /// Where redis-server's standard output and error go (redis logs to `logFilePath`; this catches
    /// what it prints before the log is open, such as config file errors).
    public var outputFilePath: String { directory + "/redis.stdout.log" }

    private let executable: String
    /// The running child, behind the lock every operation holds from start to end.
    private let run: Locked<Run>

    private struct Run: Sendable {
        /// The running child's pid; nil once it has been reaped.
        var pid: pid_t?
        /// How the last run ended.
        var lastExit: ExitStatus?

        /// Reaps the child if it has exited on its own, so `pid` never names a dead process. While
        /// `pid` is set the child is unreaped, so its pid (and process group) cannot have been
        /// reused: signals sent to it can only reach our server.
        mutating func refresh() {
            guard let current = pid else { return }
            if case .reaped(let status) = reapIfExited(current) {
                pid = nil
                lastExit = status
            }
        }
    }

    /// How long `start` and `restart` wait for the server to answer PING.
    public static let readinessTimeout: Duration = .seconds(10)
    /// How long `stop` waits after SIGTERM before it sends SIGKILL.
    public static let gracefulStopTimeout: Duration = .seconds(2)
    /// How long `restart` keeps retrying while the old socket still holds the port.
    public static let portReleaseTimeout: Duration = .seconds(5)
    /// Bound for a SIGKILLed process to disappear, and for SIGSTOP/SIGCONT to take effect.
    static let signalTimeout: Duration = .seconds(5)

    private init(
        port: Int,
        directory: String,
        unixSocketPath: String?,
        configuration: RedisServerConfiguration,
        executable: String,
        pid: pid_t
    ) {
        self.port = port
        self.directory = directory
        self.unixSocketPath = unixSocketPath
        self.configuration = configuration
        self.executable = executable
        self.run = Locked(Run(pid: pid))
    }

    deinit {
        stop()
        ServerRegistry.shared.unregister(ObjectIdentifier(self), port: port)
        if ServerRegistry.shared.removesDirectories {
            try? FileManager.default.removeItem(atPath: directory)
        }
    }

    public var description: String {
        let state = pid.map { "pid \($0)" } ?? "not running"
        return "redis-server on 127.0.0.1:\(port) (\(state), \(directory))"
    }

    // MARK: - Starting

    /// Starts a redis-server on a free port of 127.0.0.1 in a new directory, and returns once it
    /// answers PING. A port taken by someone else in the meantime is replaced by another (5 tries).
    public static func start(_ configuration: RedisServerConfiguration = .init()) throws -> RedisServerProcess
    {
        try configuration.validate()
        guard let executable = findExecutable("redis-server", overrideVariable: "MULTIREDLOCK_REDIS_SERVER")
        else {
            throw LocalRedisError(
                .serverNotFound,
                "redis-server not found (looked at $MULTIREDLOCK_REDIS_SERVER, /usr/bin, /usr/local/bin, "
                    + "/opt/homebrew/bin and $PATH); install redis-server, e.g. apt-get install redis-server"
            )
        }
        let registry = ServerRegistry.shared
        let directory = try makeTemporaryDirectory(template: try registry.rootDirectory() + "/redis-XXXXXX")
        let socketPath = configuration.unixSocket ? directory + "/redis.sock" : nil
        if let socketPath, socketPath.utf8.count > maximumUnixSocketPathLength {
            throw LocalRedisError(
                .invalidConfiguration,
                "unix socket path \(socketPath) is longer than \(maximumUnixSocketPathLength) bytes; "
                    + "point MULTIREDLOCK_TEST_DIR at a shorter directory"
            )
        }

        var collisions: [String] = []
        for _ in 1...5 {
            let port = try registry.reserveFreePort()
            do {
                let contents = configuration.configFileContents(
                    port: port,
                    directory: directory,
                    unixSocketPath: socketPath
                )
                try writeFile(directory + "/redis.conf", contents)
                switch try launch(
                    executable: executable, directory: directory, port: port,
                    password: configuration.password)
                {
                case .ready(let pid):
                    let server = RedisServerProcess(
                        port: port,
                        directory: directory,
                        unixSocketPath: socketPath,
                        configuration: configuration,
                        executable: executable,
                        pid: pid
                    )
                    registry.register(server)
                    return server
                case .addressInUse(let output):
                    collisions.append("port \(port): \(output)")
                    registry.releasePort(port)
                }
            } catch {
                registry.releasePort(port)
                throw error
            }
        }
        throw LocalRedisError(
            .portUnavailable,
            "redis-server could not bind a port in 5 tries (directory \(directory)):\n"
                + collisions.joined(separator: "\n")
        )
    }

    enum LaunchOutcome {
        case ready(pid_t)
        /// The server exited because the port was taken; carries the relevant log lines.
        case addressInUse(String)
    }

    /// Spawns redis-server with `directory`/redis.conf and waits until it is ready: it has written
    /// its pid file (redis does that only after binding its sockets, so the reply cannot come from
    /// some other listener) and a fresh connection gets a reply to PING (`+PONG`, `-NOAUTH …`, anything
    /// but `-LOADING`). The child is killed and reaped on every failure path.
    static func launch(
        executable: String,
        directory: String,
        port: Int,
        password: String?,
        timeout: Duration = readinessTimeout
    ) throws -> LaunchOutcome {
        let pidFile = directory + "/redis.pid"
        let logFile = directory + "/redis.log"
        let outputFile = directory + "/redis.stdout.log"
        // A pid file left by a killed run must not be mistaken for the new one.
        unlink(pidFile)
        let logOffset = fileSize(logFile)
        let outputOffset = fileSize(outputFile)
        func newOutput() -> String {
            (readFileString(outputFile, from: outputOffset) ?? "")
                + (readFileString(logFile, from: logOffset) ?? "")
        }

        let pid = try spawnChild(
            executable: executable,
            arguments: [directory + "/redis.conf"],
            environment: childEnvironment(removing: ["REDISCLI_AUTH"]),
            standardOutput: .appendToFile(outputFile),
            standardError: .appendToFile(outputFile),
            newProcessGroup: true
        )
        let deadline = Deadline(after: timeout)
        while true {
            if case .reaped(let status) = reapIfExited(pid) {
                let output = newOutput()
                if output.contains("Address already in use") {
                    return .addressInUse(tail(of: output, lines: 3))
                }
                throw LocalRedisError(
                    .exitedBeforeReady,
                    "redis-server (pid \(pid), port \(port)) exited with "
                        + (status?.description ?? "unknown status")
                        + " before it was ready; directory \(directory); last lines of its output and log:\n"
                        + tail(of: output, lines: 20)
                )
            }
            let pidFileContents = readFileString(pidFile)?.trimmingCharacters(in: .whitespacesAndNewlines)
            // With a password, AUTH first: redis answers NOAUTH before LOADING, so an unauthenticated
            // PING would pass a server still loading its append-only file for ready.
            if pidFileContents == String(pid), let reply = readinessPing(port: port, password: password),
                !reply.hasPrefix("-LOADING")
            {
                return .ready(pid)
            }
            if deadline.hasPassed {
                kill(-pid, SIGKILL)
                kill(pid, SIGKILL)
                _ = reap(pid, within: signalTimeout)
                throw LocalRedisError(
                    .notReady,
                    "redis-server (pid \(pid), port \(port)) did not become ready within "
                        + timeout.humanReadable
                        + " and was killed; directory \(directory); last lines of its output and log:\n"
                        + tail(of: newOutput(), lines: 20)
                )
            }
            sleepThread(.milliseconds(5))
        }
    }

    /// PING after AUTH with `password` (when not nil) over a fresh connection: the PING's reply, or nil.
    static func readinessPing(port: Int, password: String?, timeout: Duration = .milliseconds(250))
        -> String?
    {
        guard let password else { return rawPing(port: port, timeout: timeout) }
        guard let connection = try? RawRedisConnection(port: port, timeout: timeout) else { return nil }
        defer { connection.close() }
        guard (try? connection.send(arguments: ["AUTH", password], timeout: timeout)) != nil,
            (try? connection.readLine(timeout: timeout)) != nil,
            (try? connection.sendRaw("PING\r\n", timeout: timeout)) != nil
        else { return nil }
        return (try? connection.readLine(timeout: timeout)) ?? nil
    }

    /// Sends an inline PING over a fresh TCP connection to 127.0.0.1:`port` and returns the first reply
    /// line ("+PONG", "-NOAUTH Authentication required.", …), or nil when the connection is refused or
    /// no reply arrives within `timeout` (e.g. the server is paused).
    public static func rawPing(port: Int, timeout: Duration = .milliseconds(250)) -> String? {
        guard let connection = try? RawRedisConnection(port: port, timeout: timeout) else { return nil }
        defer { connection.close() }
        guard (try? connection.sendRaw("PING\r\n", timeout: timeout)) != nil else { return nil }
        return (try? connection.readLine(timeout: timeout)) ?? nil
    }

    /// PING over a fresh TCP connection, after `AUTH` with `configuration.password` when it has one:
    /// "+PONG", or nil when the connection is refused or no reply arrives within `timeout` (e.g. the
    /// server is paused). The unauthenticated form is `rawPing(port:timeout:)`.
    public func rawPing(timeout: Duration = .milliseconds(250)) -> String? {
        guard let connection = try? rawConnection(timeout: timeout) else { return nil }
        defer { connection.close() }
        guard (try? connection.sendRaw("PING\r\n", timeout: timeout)) != nil else { return nil }
        return (try? connection.readLine(timeout: timeout)) ?? nil
    }

    /// A `RawRedisConnection` to this server's TCP port, authenticated with `configuration.password`
    /// when it has one. Throws `.connectionFailed`, or `.connectionIO` if AUTH gets no `+OK` within
    /// `timeout` (the reply is not shown: it could echo nothing secret, but says nothing useful either).
    public func rawConnection(timeout: Duration = .seconds(2)) throws -> RawRedisConnection {
        let connection = try RawRedisConnection(port: port, timeout: timeout)
        if let password = configuration.password {
            try connection.send(arguments: ["AUTH", password], timeout: timeout)
            let reply = try connection.readLine(timeout: timeout)
            guard reply == "+OK" else {
                connection.close()
                throw LocalRedisError(
                    .connectionIO,
                    "AUTH on 127.0.0.1:\(port) got "
                        + (reply.map { "a reply other than +OK: \($0)" } ?? "no reply")
                )
            }
        }
        return connection
    }

    // MARK: - State

    /// The server's pid while it runs; nil once it has exited (it is then reaped).
    public var pid: pid_t? {
        run.withLock { run in
            run.refresh()
            return run.pid
        }
    }

    /// True while the process exists and has not exited (a stopped, i.e. paused, server is running).
    public var isRunning: Bool {
        run.withLock { run in
            run.refresh()
            return run.pid != nil
        }
    }

    /// True while the process is stopped by SIGSTOP (its /proc/PID/stat state is 'T').
    public var isPaused: Bool {
        run.withLock { run in
            run.refresh()
            guard let pid = run.pid else { return false }
            return isStoppedState(processState(pid))
        }
    }

    /// How the previous run ended (e.g. "killed by signal 9 (Killed)"), nil if it never ended.
    public var lastExitDescription: String? {
        run.withLock { run in
            run.refresh()
            return run.lastExit?.description
        }
    }

    // MARK: - Faults

    /// SIGKILL (to the server and anything it forked), then reap. Returns true once the server is
    /// verified gone (also when it was not running). Afterwards `isRunning` is false and the port
    /// refuses connections; `restart()` brings it back.
    @discardableResult
    public func kill9() -> Bool {
        run.withLock { kill9(&$0) }
    }

    private func kill9(_ run: inout Run) -> Bool {
        run.refresh()
        guard let pid = run.pid else { return true }
        kill(-pid, SIGKILL)
        kill(pid, SIGKILL)
        guard case .reaped(let status)? = reap(pid, within: Self.signalTimeout) else {
            report("kill9: pid \(pid) did not exit within \(Self.signalTimeout.humanReadable) of SIGKILL")
            return false
        }
        run.pid = nil
        run.lastExit = status
        return true
    }

    /// SIGSTOP, then returns once /proc/PID/stat shows state 'T'. While paused, connections are still
    /// accepted by the kernel but nothing is answered. Returns false if the server is not running
    /// (or, which should not happen, did not stop within the bound; a message goes to stderr).
    @discardableResult
    public func pause() -> Bool {
        run.withLock { run in
            run.refresh()
            guard let pid = run.pid else { return false }
            kill(pid, SIGSTOP)
            let deadline = Deadline(after: Self.signalTimeout)
            while !isStoppedState(processState(pid)) {
                if childState(pid) != .running {
                    run.refresh()
                    return false
                }
                if deadline.hasPassed {
                    report(
                        "pause: pid \(pid) did not reach state T within \(Self.signalTimeout.humanReadable)")
                    return false
                }
                sleepThread(.microseconds(200))
            }
            return true
        }
    }

    /// SIGCONT, then returns once the process is no longer in state 'T'. Returns false if the server
    /// is not running. Harmless on a server that is not paused.
    @discardableResult
    public func resume() -> Bool {
        run.withLock { run in
            run.refresh()
            guard let pid = run.pid else { return false }
            kill(pid, SIGCONT)
            let deadline = Deadline(after: Self.signalTimeout)
            while isStoppedState(processState(pid)) {
                if deadline.hasPassed {
                    report(
                        "resume: pid \(pid) still in state T "
                            + "\(Self.signalTimeout.humanReadable) after SIGCONT"
                    )
                    return false
                }
                sleepThread(.microseconds(200))
            }
            run.refresh()
            return run.pid != nil
        }
    }

    /// Starts the server again on the same port, with the same directory and redis.conf (so with
    /// `appendOnly` its data survives even a `kill9()`), after `delay`, and returns once it answers.
    /// A running server is stopped first (gracefully, as `stop()`). If the old socket still holds the
    /// port, retries for up to `portReleaseTimeout`.
    public func restart(after delay: Duration = .zero) throws {
        let stopped = run.withLock { stop(&$0) }
        guard stopped else {
            throw LocalRedisError(
                .timeout, "restart: the previous redis-server on port \(port) could not be stopped")
        }
        sleepThread(delay)
        try run.withLock { run in
            run.refresh()
            // Another thread restarted it while we slept: it is running as asked.
            if run.pid != nil { return }
            let deadline = Deadline(after: Self.portReleaseTimeout)
            while true {
                switch try Self.launch(
                    executable: executable, directory: directory, port: port,
                    password: configuration.password)
                {
                case .ready(let pid):
                    run.pid = pid
                    return
                case .addressInUse(let output):
                    if deadline.hasPassed {
                        throw LocalRedisError(
                            .portUnavailable,
                            "restart: port \(port) is still in use after "
                                + "\(Self.portReleaseTimeout.humanReadable):\n\(output)"
                        )
                    }
                    sleepThread(.milliseconds(50))
                }
            }
        }
    }

    /// SIGCONT (in case it is paused) and SIGTERM; SIGKILL if it has not exited after
    /// `gracefulStopTimeout`; then reap. Idempotent, and safe on a killed or paused server.
    public func stop() {
        run.withLock { _ = stop(&$0) }
    }

    private func stop(_ run: inout Run) -> Bool {
        run.refresh()
        guard let pid = run.pid else { return true }
        kill(pid, SIGCONT)
        kill(pid, SIGTERM)
        switch awaitExitUnreaped(pid, within: Self.gracefulStopTimeout) {
        case .gone:
            run.pid = nil
            run.lastExit = nil
            return true
        case .running:
            report(
                "stop: pid \(pid) ignored SIGTERM for "
                    + "\(Self.gracefulStopTimeout.humanReadable); sending SIGKILL"
            )
            kill(-pid, SIGKILL)
            kill(pid, SIGKILL)
        case .exitedUnreaped:
            // The leader is not reaped yet, so its process group id still names only our server's
            // processes: this ends any child it forked (e.g. an AOF rewrite) that outlived it.
            kill(-pid, SIGKILL)
        }
        guard case .reaped(let status)? = reap(pid, within: Self.signalTimeout) else {
            report("stop: pid \(pid) did not exit within \(Self.signalTimeout.humanReadable) of SIGKILL")
            return false
        }
        run.pid = nil
        run.lastExit = status
        return true
    }

    /// Stops every server this process started that is still alive (e.g. from a signal-handling path
    /// of a demo, or at the end of a test run). Also runs automatically at process exit.
    public static func stopAllRunning() {
        for server in ServerRegistry.shared.liveServers() {
            server.stop()
        }
    }

    // MARK: - redis-cli

    /// Runs `redis-cli -e -h 127.0.0.1 -p PORT ARGUMENTS…` and returns its trimmed standard output.
    /// The password goes through REDISCLI_AUTH, never argv. Throws `.commandFailed` with redis-cli's
    /// stderr if it exits non-zero, which `-e` makes it do on an error reply too (e.g. "ERR unknown
    /// command"); throws `.timeout` after 10 s (e.g. against a paused server).
    @discardableResult
    public func cli(_ arguments: String...) throws -> String {
        try cli(arguments: arguments)
    }

    /// `cli(_:)` with an explicit bound on how long redis-cli may run.
    @discardableResult
    public func cli(arguments: [String], timeout: Duration = .seconds(10)) throws -> String {
        guard let cliPath = findExecutable("redis-cli", overrideVariable: "MULTIREDLOCK_REDIS_CLI") else {
            throw LocalRedisError(
                .cliNotFound,
                "redis-cli not found (looked at $MULTIREDLOCK_REDIS_CLI, /usr/bin, /usr/local/bin, "
                    + "/opt/homebrew/bin and $PATH); install it, e.g. apt-get install redis-tools"
            )
        }
        var secrets: [String: String] = [:]
        if let password = configuration.password {
            secrets["REDISCLI_AUTH"] = password
        }
        let output = try runCapturingOutput(
            executable: cliPath,
            arguments: ["-e", "-h", "127.0.0.1", "-p", String(port)] + arguments,
            environment: childEnvironment(adding: secrets, removing: ["REDISCLI_AUTH"]),
            timeout: timeout
        )
        // Only the command name: later arguments may be secrets (AUTH user password).
        let command = "redis-cli -p \(port) \(arguments.first ?? "")\(arguments.count > 1 ? " …" : "")"
        let standardError = output.standardError.trimmingCharacters(in: .whitespacesAndNewlines)
        if output.timedOut {
            throw LocalRedisError(
                .timeout,
                "\(command) did not finish within \(timeout.humanReadable) and was killed "
                    + "(is the server paused?)"
            )
        }
        let succeeded = output.status.map { $0.code == 0 } ?? standardError.isEmpty
        guard succeeded else {
            let status = output.status?.description ?? "unknown status"
            let detail = standardError.isEmpty ? output.standardOutput : standardError
            throw LocalRedisError(.commandFailed, "\(command) failed with \(status): \(detail)")
        }
        return output.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    // MARK: - Logs

    /// The last `lines` lines of redis.log (and of redis.stdout.log, if it has anything), for messages.
    public func logTail(lines: Int = 20) -> String {
        let output = readFileString(outputFilePath) ?? ""
        let log = readFileString(logFilePath) ?? ""
        return tail(of: output + log, lines: lines)
    }

    private func report(_ message: String) {
        let line = "LocalRedis: \(message) (port \(port), \(directory))\n"
        _ = line.utf8CString.withUnsafeBufferPointer { write(2, $0.baseAddress, $0.count - 1) }
    }
}
