import Dispatch
import Foundation
import LocalRedis
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

// Helpers for the RedlockCLITests suite: the `redlock` binary, run as a child process with its
// output captured, against redis-servers started with LocalRedis. Every wait is bounded.

// MARK: - The binary

enum RedlockBinary {
    /// The `redlock` executable built with these tests: next to the test bundle, else in a
    /// `.build*/debug` folder of the package (the most recently built one).
    static let path: String? = {
        let bundleDirectory = (CommandLine.arguments[0] as NSString).deletingLastPathComponent
        var candidates = [bundleDirectory + "/redlock"]
        // <package>/Tests/RedlockCLITests/CLISupport.swift → <package>
        let package = ((#filePath as NSString).deletingLastPathComponent as NSString)
            .deletingLastPathComponent
        let root = (package as NSString).deletingLastPathComponent
        let scratch = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        let built =
            scratch.filter { $0.hasPrefix(".build") }.map { root + "/" + $0 + "/debug/redlock" }
            .filter { FileManager.default.isExecutableFile(atPath: $0) }
            .sorted { modificationDate($0) > modificationDate($1) }
        candidates += built
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    }()

    private static func modificationDate(_ path: String) -> Date {
        let attributes = try? FileManager.default.attributesOfItem(atPath: path)
        return attributes?[.modificationDate] as? Date ?? .distantPast
    }

    static func require() throws -> String {
        try #require(path, "the redlock binary was not found next to the test bundle nor in .build*/debug")
    }
}

// MARK: - Child processes

/// A child process with standard output and error captured (standard input is /dev/null).
final class Subprocess: Sendable {
    let pid: pid_t
    private let output = Mutex<(stdout: [UInt8], stderr: [UInt8])>(([], []))
    private let status = Mutex<Int32?>(nil)
    private let done = DispatchGroup()

    /// Starts `executable` with `arguments` and exactly `environment`.
    init(_ executable: String, _ arguments: [String], environment: [String: String]) throws {
        var outPipe: [Int32] = [0, 0]
        var errPipe: [Int32] = [0, 0]
        try #require(pipe(&outPipe) == 0 && pipe(&errPipe) == 0, "pipe: errno \(errno)")
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)
        for descriptor in outPipe + errPipe { posix_spawn_file_actions_addclose(&actions, descriptor) }
        // Default signal actions and an empty mask, whatever the test runner set.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var all = sigset_t()
        sigfillset(&all)
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for pointer in argv { free(pointer) }
            for pointer in envp { free(pointer) }
        }
        var pid: pid_t = 0
        let code = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        close(outPipe[1])
        close(errPipe[1])
        guard code == 0 else {
            close(outPipe[0])
            close(errPipe[0])
            throw POSIXFailure(what: "posix_spawn \(executable)", code: code)
        }
        self.pid = pid
        for (descriptor, isError) in [(outPipe[0], false), (errPipe[0], true)] {
            done.enter()
            Thread.detachNewThread { [self] in
                var buffer = [UInt8](repeating: 0, count: 4096)
                while true {
                    let count = read(descriptor, &buffer, buffer.count)
                    if count < 0 && errno == EINTR { continue }
                    if count <= 0 { break }
                    self.output.withLock {
                        if isError { $0.stderr += buffer[..<count] } else { $0.stdout += buffer[..<count] }
                    }
                }
                close(descriptor)
                self.done.leave()
            }
        }
        done.enter()
        let child = pid
        Thread.detachNewThread { [self] in
            var raw: Int32 = 0
            var result: pid_t = -1
            repeat { result = waitpid(child, &raw, 0) } while result < 0 && errno == EINTR
            // Someone else reaped it (ECHILD): the status is unknown, never a made-up 0.
            let known = result == child ? raw : Self.unknownStatus
            self.status.withLock { $0 = known }
            self.done.leave()
        }
    }

    var stdout: String { output.withLock { String(decoding: $0.stdout, as: UTF8.self) } }
    var stderr: String { output.withLock { String(decoding: $0.stderr, as: UTF8.self) } }

    /// The wait status once the process has exited.
    var waitStatus: Int32? { status.withLock { $0 } }

    var hasExited: Bool { waitStatus != nil }

    /// The exit status as a shell reports it (128 + N for signal N); nil while it runs, or when the
    /// status could not be collected.
    var exitCode: Int32? {
        guard let status = waitStatus, status != Self.unknownStatus else { return nil }
        return status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }

    private static let unknownStatus = Int32.min

    func signal(_ signal: Int32) {
        if !hasExited { kill(pid, signal) }
    }

    /// Waits until the process has exited and its output is read; kills it (SIGKILL) and records
    /// an issue if that takes longer than `timeout`.
    @discardableResult
    func wait(timeout: Duration = .seconds(30)) async -> Int32? {
        let group = done
        let finished = await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                continuation.resume(returning: group.wait(timeout: .now() + timeout.timeInterval) == .success)
            }
        }
        if !finished {
            Issue.record("redlock (pid \(pid)) still ran after \(timeout); killing it. stderr: \(stderr)")
            kill(pid, SIGKILL)
            _ = await withCheckedContinuation { continuation in
                DispatchQueue.global().async {
                    continuation.resume(returning: group.wait(timeout: .now() + 10))
                }
            }
        }
        return exitCode
    }

    /// Waits up to `timeout` for standard output to contain `text`.
    func waitForOutput(_ text: String, timeout: Duration = .seconds(20)) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if stdout.contains(text) { return true }
            if hasExited { return stdout.contains(text) }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return false
    }
}

struct POSIXFailure: Error, CustomStringConvertible {
    var what: String
    var code: Int32
    var description: String { "\(what): \(String(cString: strerror(code)))" }
}

/// The outcome of one `redlock` run.
struct Outcome: CustomStringConvertible {
    var status: Int32?
    var stdout: String
    var stderr: String
    var elapsed: Duration

    var description: String {
        "status \(status.map(String.init) ?? "none") after \(elapsed)\nstdout: \(stdout)\nstderr: \(stderr)"
    }

    /// Standard output's only line, decoded as a JSON object.
    func json() throws -> [String: Any] {
        let lines = stdout.split(separator: "\n")
        try #require(lines.count == 1, "expected one JSON line on stdout; \(self)")
        let object = try JSONSerialization.jsonObject(with: Data(lines[0].utf8))
        return try #require(object as? [String: Any], "not a JSON object: \(lines[0])")
    }
}

/// The environment `redlock` runs with: PATH and HOME from this process, `REDLOCK_PASSWORD` set to
/// the password LocalRedis gives every server by default (never on redlock's command line), then
/// `extra` (`"REDLOCK_PASSWORD": ""` for none: then the variable is not set at all).
func redlockEnvironment(_ extra: [String: String] = [:]) -> [String: String] {
    var environment: [String: String] = [:]
    // ASAN_OPTIONS and TSAN_OPTIONS too, so a sanitizer build of `redlock` runs as the tests do.
    for name in ["PATH", "HOME", "LANG", "TMPDIR", "ASAN_OPTIONS", "TSAN_OPTIONS"] {
        if let value = ProcessInfo.processInfo.environment[name] { environment[name] = value }
    }
    environment["PATH"] = environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
    environment["REDLOCK_PASSWORD"] = RedisServerConfiguration.defaultPassword
    environment.merge(extra) { $1 }
    if environment["REDLOCK_PASSWORD"] == "" { environment["REDLOCK_PASSWORD"] = nil }
    return environment
}

/// Starts `redlock arguments…` in the background.
func startRedlock(_ arguments: [String], environment: [String: String] = [:]) throws -> Subprocess {
    try Subprocess(RedlockBinary.require(), arguments, environment: redlockEnvironment(environment))
}

/// Runs `redlock arguments…` to completion (at most `timeout`).
func redlock(
    _ arguments: [String], environment: [String: String] = [:], timeout: Duration = .seconds(30)
) async throws -> Outcome {
    let start = ContinuousClock.now
    let process = try startRedlock(arguments, environment: environment)
    let status = await process.wait(timeout: timeout)
    return Outcome(
        status: status, stdout: process.stdout, stderr: process.stderr, elapsed: start.duration(to: .now))
}

// MARK: - Servers

/// Three (or `count`) local redis-servers for one test.
struct Servers: Sendable {
    let group: RedisServerGroup

    static func start(count: Int = 3, _ configuration: RedisServerConfiguration = .init()) async throws
        -> Servers
    {
        Servers(group: try await RedisServerGroup.start(count: count, configuration))
    }

    /// `127.0.0.1:p1,127.0.0.1:p2,…` (the password comes from $REDLOCK_PASSWORD: `redlockEnvironment`)
    var list: String { group.ports.map { "127.0.0.1:\($0)" }.joined(separator: ",") }

    /// `redis://:PASSWORD@127.0.0.1:p1,…` with LocalRedis's default password, for an environment
    /// variable of a tool that has no password variable of its own (`REDLOCK_BENCH_SERVERS`).
    var listWithPassword: String {
        group.ports.map { "redis://:\(RedisServerConfiguration.defaultPassword)@127.0.0.1:\($0)" }
            .joined(separator: ",")
    }

    subscript(index: Int) -> RedisServerProcess { group[index] }

    /// `GET key` on every running server (nil where the key is missing).
    func values(of key: String) async throws -> [String?] {
        var values: [String?] = []
        for server in group.servers where server.isRunning {
            let value = try await server.cli("GET", key)
            values.append(value.isEmpty ? nil : value)
        }
        return values
    }

    /// `PTTL key` on every running server.
    func pttls(of key: String) async throws -> [Int] {
        var values: [Int] = []
        for server in group.servers where server.isRunning {
            values.append(Int(try await server.cli("PTTL", key)) ?? -3)
        }
        return values
    }

    /// Stops every server (SIGTERM, then SIGKILL after LocalRedis's grace period) on a thread of its
    /// own, for a `defer`.
    func stopInBackground() {
        group.stopInBackground()
    }
}

extension Duration {
    var timeInterval: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}

/// The process's command line from /proc/PID/cmdline (arguments joined with spaces).
func commandLine(of pid: pid_t) -> String? {
    guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return nil }
    return String(decoding: data.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
}

/// The direct children of `pid`: the processes whose /proc/PID/stat names it as parent.
func children(of pid: pid_t) -> [pid_t] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap { pid_t($0) }.filter { candidate in
        guard let data = FileManager.default.contents(atPath: "/proc/\(candidate)/stat") else { return false }
        let text = String(decoding: data, as: UTF8.self)
        // "pid (comm) state ppid …": comm may hold spaces and parentheses, so split after the last ')'.
        guard let close = text.lastIndex(of: ")") else { return false }
        let fields = text[text.index(after: close)...].split(separator: " ")
        return fields.count > 1 && pid_t(fields[1]) == pid
    }
}

/// Polls `condition` every 20 ms for up to `timeout`.
func eventually(
    timeout: Duration = .seconds(10), _ condition: @Sendable () async throws -> Bool
) async rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return try await condition()
}
