import Foundation
import Hiredis
import LocalRedis
import Testing

#if canImport(Glibc)
    import Glibc
#endif

// Child processes for tests: the `redlock` tool, the service example, `make -n`, `cc`, shells.

/// A child process started with LocalRedis's `spawnChild` (posix_spawn): standard input /dev/null;
/// standard output and error appended to two files of mode 0600 in this run's scratch directory
/// (the child opens them itself, so the test process holds no descriptor for them, even while a
/// test has closed its descriptor 0); every other descriptor closed in the child; signal mask
/// empty and every signal action default, whatever the test runner set.
///
/// The environment is exactly the one given (`childEnvironment(_:)` by default), never this
/// process's whole environment: a variable holding a secret reaches a child only when a test passes
/// it by name. Secrets never go on the command line: `/proc/PID/cmdline` is readable by every user.
package final class Subprocess: Sendable {
    package let pid: pid_t
    package let stdoutPath: String
    package let stderrPath: String
    private let started = ContinuousClock.now
    /// The wait status, once a thread of its own has reaped the child.
    private let status = Locked<Int32?>(nil)

    /// Starts `executable` with `arguments` and exactly `environment`; with `inheritingDescriptors`
    /// the child keeps every descriptor of this process that is not close-on-exec.
    package init(
        _ executable: String, _ arguments: [String], environment: [String: String] = childEnvironment(),
        inheritingDescriptors: Bool = false
    ) throws {
        let directory = try PrivateFiles.childOutputDirectory()
        let tag = UInt64.random(in: 0...UInt64.max)
        stdoutPath = directory + "/child-\(tag).out"
        stderrPath = directory + "/child-\(tag).err"
        try PrivateFiles.create(stdoutPath)
        try PrivateFiles.create(stderrPath)
        do {
            pid = try spawnChild(
                executable: executable, arguments: arguments,
                environment: environment.map { "\($0.key)=\($0.value)" }.sorted(),
                standardOutput: .appendToFile(stdoutPath), standardError: .appendToFile(stderrPath),
                newProcessGroup: false, inheritingDescriptors: inheritingDescriptors)
        } catch {
            unlink(stdoutPath)
            unlink(stderrPath)
            throw error
        }
        let child = pid
        Thread.detachNewThread { [status] in
            // Wait without reaping, then reap and record under the lock: while `status` is nil the
            // child is not reaped, so its pid cannot belong to another process (see `signal`).
            var info = siginfo_t()
            while waitid(P_PID, id_t(child), &info, WEXITED | WNOWAIT) != 0 && errno == EINTR {}
            status.withLock { status in
                var raw: Int32 = 0
                var result: pid_t = -1
                repeat { result = waitpid(child, &raw, 0) } while result < 0 && errno == EINTR
                // Someone else reaped it (ECHILD): the status is unknown, never a made-up 0.
                status = result == child ? raw : Self.unknownStatus
            }
        }
    }

    deinit {
        unlink(stdoutPath)
        unlink(stderrPath)
    }

    /// Everything the child wrote to standard output so far.
    package var stdout: String { (try? String(contentsOfFile: stdoutPath, encoding: .utf8)) ?? "" }
    /// Everything the child wrote to standard error so far.
    package var stderr: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }

    /// The wait status once the process has exited.
    package var waitStatus: Int32? { status.withLock { $0 } }

    package var hasExited: Bool { waitStatus != nil }

    package var isRunning: Bool { !hasExited }

    /// The exit status as a shell reports it (128 + N for signal N); nil while it runs, or when the
    /// status could not be collected.
    package var exitCode: Int32? {
        guard let status = waitStatus, status != Self.unknownStatus else { return nil }
        return status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }

    /// Whether a signal ended the process.
    package var wasSignaled: Bool {
        guard let status = waitStatus, status != Self.unknownStatus else { return false }
        return status & 0x7f != 0
    }

    private static let unknownStatus = Int32.min

    /// Sends `signal` to the process unless it has exited (then its pid may belong to another one).
    package func signal(_ signal: Int32) {
        status.withLock { if $0 == nil { kill(pid, signal) } }
    }

    /// Waits until the process has exited; kills it (SIGKILL) and records an issue if that takes
    /// longer than `timeout`. Returns `exitCode`.
    @discardableResult
    package func wait(timeout: Duration = .seconds(30)) async -> Int32? {
        if !(await exited(within: timeout)) {
            Issue.record(
                "child \(pid) still ran after \(timeout); killing it. stderr: \(stderr.suffix(2_000))")
            signal(SIGKILL)
            _ = await exited(within: .seconds(10))
        }
        return exitCode
    }

    /// `wait(timeout:)`, then the whole outcome: status, output and time since the start.
    package func outcome(timeout: Duration = .seconds(30)) async -> Outcome {
        let status = await wait(timeout: timeout)
        return Outcome(
            status: status, signaled: wasSignaled, stdout: stdout, stderr: stderr,
            elapsed: ContinuousClock.now - started)
    }

    private func exited(within timeout: Duration) async -> Bool {
        await eventually(timeout: timeout, every: .milliseconds(5)) { hasExited }
    }

    /// Waits up to `timeout` for standard output to contain `text`.
    package func waitForOutput(_ text: String, timeout: Duration = .seconds(20)) async -> Bool {
        await eventually(timeout: timeout, every: .milliseconds(20)) {
            stdout.contains(text) || hasExited
        } && stdout.contains(text)
    }

    /// Runs `executable` to completion (at most `timeout`).
    package static func run(
        _ executable: String, _ arguments: [String], environment: [String: String] = childEnvironment(),
        timeout: Duration = .seconds(30)
    ) async throws -> Outcome {
        try await Subprocess(executable, arguments, environment: environment).outcome(timeout: timeout)
    }

    /// How a child process ended.
    package struct Outcome: Sendable, CustomStringConvertible {
        /// As a shell reports it (128 + N for signal N); nil when it could not be collected.
        package var status: Int32?
        package var signaled: Bool
        package var stdout: String
        package var stderr: String
        package var elapsed: Duration

        package init(status: Int32?, signaled: Bool, stdout: String, stderr: String, elapsed: Duration) {
            self.status = status
            self.signaled = signaled
            self.stdout = stdout
            self.stderr = stderr
            self.elapsed = elapsed
        }

        package var description: String {
            "status \(status.map(String.init) ?? "none") after \(elapsed)\nstdout: \(stdout)\nstderr: \(stderr)"
        }

        /// Standard output's only line, decoded as a JSON object.
        package func json() throws -> [String: Any] {
            let lines = stdout.split(separator: "\n")
            try #require(lines.count == 1, "expected one JSON line on stdout; \(self)")
            let object = try JSONSerialization.jsonObject(with: Data(lines[0].utf8))
            return try #require(object as? [String: Any], "not a JSON object: \(lines[0])")
        }
    }
}

/// The environment children get: PATH (a default one if this process has none), HOME, LANG,
/// TMPDIR, and ASAN_OPTIONS/TSAN_OPTIONS (so a sanitizer build of a tool runs as the tests do)
/// from this process; then `extra`. Nothing else of this process's environment is passed on.
package func childEnvironment(_ extra: [String: String] = [:]) -> [String: String] {
    var environment: [String: String] = [:]
    for name in ["PATH", "HOME", "LANG", "TMPDIR", "ASAN_OPTIONS", "TSAN_OPTIONS"] {
        if let value = ProcessInfo.processInfo.environment[name] { environment[name] = value }
    }
    environment["PATH"] = environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
    environment.merge(extra) { $1 }
    return environment
}

// MARK: - The `redlock` tool

/// The environment `redlock` runs with: `childEnvironment`, `REDLOCK_PASSWORD` set to the password
/// LocalRedis gives every server by default (never on redlock's command line), then `extra`
/// (`"REDLOCK_PASSWORD": ""` for none: then the variable is not set at all).
package func redlockEnvironment(_ extra: [String: String] = [:]) -> [String: String] {
    var environment = childEnvironment(["REDLOCK_PASSWORD": RedisServerConfiguration.defaultPassword])
    environment.merge(extra) { $1 }
    if environment["REDLOCK_PASSWORD"] == "" { environment["REDLOCK_PASSWORD"] = nil }
    return environment
}

/// Starts `redlock arguments…` in the background, with `redlockEnvironment(environment)`.
package func startRedlock(_ arguments: [String], environment: [String: String] = [:]) throws -> Subprocess {
    try Subprocess(
        BuiltExecutable.require("redlock"), arguments, environment: redlockEnvironment(environment))
}

/// Runs `redlock arguments…` to completion (at most `timeout`).
package func redlock(
    _ arguments: [String], environment: [String: String] = [:], timeout: Duration = .seconds(30)
) async throws -> Subprocess.Outcome {
    try await startRedlock(arguments, environment: environment).outcome(timeout: timeout)
}
