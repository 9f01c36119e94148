import Dispatch
import Foundation
import LocalRedis
import MultiRedlock
import MultiRedlockTesting
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#endif

// The `redlock` command-line tool as a child process, for scenario 12, the soak, the real-SIGSTOP
// variant of scenario 9 and the FaultCLI part of the bad-input matrix.

enum FaultCLI {
    /// The `redlock` executable: $MULTIREDLOCK_REDLOCK, else next to the test bundle (the same build
    /// folder), else nil.
    static let path: String? = {
        if let path = ProcessInfo.processInfo.environment["MULTIREDLOCK_REDLOCK"], !path.isEmpty {
            return path
        }
        let directory = (CommandLine.arguments[0] as NSString).deletingLastPathComponent
        var candidates = [directory + "/redlock"]
        // Inside an .xctest bundle on some platforms: …/debug/X.xctest/Contents/MacOS/X.
        candidates.append(
            ((((directory as NSString).deletingLastPathComponent as NSString).deletingLastPathComponent
                as NSString).deletingLastPathComponent as NSString).appendingPathComponent("redlock"))
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    }()

    static func require() throws -> String {
        try #require(
            path, "the redlock executable was not found next to the test binary (set MULTIREDLOCK_REDLOCK)")
    }

    /// The environment children run with: this process's, without any REDLOCK_ variable, with
    /// `REDLOCK_PASSWORD` set to the password LocalRedis gives every server by default (never on a
    /// command line), plus `extra` (`"REDLOCK_PASSWORD": ""` for none).
    static func environment(_ extra: [String: String] = [:]) -> [String: String] {
        var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("REDLOCK_") }
        environment["REDLOCK_PASSWORD"] = RedisServerConfiguration.defaultPassword
        for (key, value) in extra { environment[key] = value }
        return environment
    }

    static func servers(_ ports: [Int]) -> String {
        ports.map { "127.0.0.1:\($0)" }.joined(separator: ",")
    }

    /// A tiny program that prints CLOCK_MONOTONIC in nanoseconds (the checker's clock), compiled
    /// once with cc; Python's `time.monotonic_ns()` (the same clock) when there is no compiler.
    static func monotonicCommand(in directory: String) throws -> String {
        let source = directory + "/monotonic-ns.c"
        let binary = directory + "/monotonic-ns"
        let program = """
            #include <stdio.h>
            #include <time.h>
            int main(void) {
                struct timespec t;
                clock_gettime(CLOCK_MONOTONIC, &t);
                printf("%llu\\n", (unsigned long long)t.tv_sec * 1000000000ULL + (unsigned long long)t.tv_nsec);
                return 0;
            }
            """
        try program.write(toFile: source, atomically: true, encoding: .utf8)
        for compiler in ["/usr/bin/cc", "/usr/bin/gcc", "/usr/bin/clang"]
        where FileManager.default.isExecutableFile(atPath: compiler) {
            let result = try FaultChild.run(compiler, ["-O2", "-o", binary, source], timeout: .seconds(60))
            if result.status == 0 { return binary }
        }
        let script = directory + "/monotonic-ns.sh"
        try "#!/bin/sh\nexec python3 -S -c 'import time; print(time.monotonic_ns())'\n".write(
            toFile: script, atomically: true, encoding: .utf8)
        chmod(script, 0o755)
        return script
    }
}

/// One child process (posix_spawn through Foundation's Process), its output in files.
final class FaultChild: Sendable {
    struct Result: Sendable {
        var status: Int32
        var signaled: Bool
        var stdout: String
        var stderr: String
        var elapsed: Duration
    }

    let pid: pid_t
    private let process: Process
    let stdoutPath: String
    let stderrPath: String
    /// Our ends of the output files, closed once the child has exited (Foundation keeps them open as
    /// long as the `Process` lives, and Process.run crashes once a process has a thousand or so open).
    private let handles: Mutex<[FileHandle]>
    private let started = ContinuousClock.now

    init(_ executable: String, _ arguments: [String], environment: [String: String]? = nil) throws {
        // In the run's private scratch directory (removed by make's trap even after a crash), mode 0600.
        let directory = try PrivateFiles.childOutputDirectory()
        let tag = UInt64.random(in: 0...UInt64.max)
        stdoutPath = directory + "/child-\(tag).out"
        stderrPath = directory + "/child-\(tag).err"
        try PrivateFiles.create(stdoutPath)
        try PrivateFiles.create(stderrPath)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if let environment { process.environment = environment }
        guard let outputHandle = Self.writingHandle(stdoutPath),
            let errorHandle = Self.writingHandle(stderrPath)
        else { throw FaultError("cannot open \(stdoutPath) or \(stderrPath)") }
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = outputHandle
        process.standardError = errorHandle
        do {
            try process.run()
        } catch {
            try? outputHandle.close()
            try? errorHandle.close()
            throw error
        }
        self.process = process
        handles = Mutex([outputHandle, errorHandle])
        pid = process.processIdentifier
    }

    /// A handle writing to `path` on a descriptor of 3 or more. While a test has closed standard
    /// input (HardeningTests, descriptor 0), a new file may get descriptor 0; Process then puts
    /// /dev/null on the child's descriptor 0 before it copies the output file there, and the child's
    /// output is lost (an `acquire` exited 0 with nothing on stdout).
    static func writingHandle(_ path: String) -> FileHandle? {
        let descriptor = open(path, O_WRONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return nil }
        if descriptor > 2 { return FileHandle(fileDescriptor: descriptor, closeOnDealloc: true) }
        let high = fcntl(descriptor, F_DUPFD_CLOEXEC, 3)
        close(descriptor)
        return high >= 0 ? FileHandle(fileDescriptor: high, closeOnDealloc: true) : nil
    }

    deinit {
        closeHandles()
        unlink(stdoutPath)
        unlink(stderrPath)
    }

    private func closeHandles() {
        for handle in handles.withLock({ handles in
            defer { handles = [] }
            return handles
        }) {
            try? handle.close()
        }
    }

    var isRunning: Bool { process.isRunning }

    /// Waits (polling, at most `timeout`) for the child to exit; SIGKILLs it past the timeout.
    func wait(timeout: Duration) async throws -> Result {
        let deadline = ContinuousClock.now + timeout
        while process.isRunning && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(5))
        }
        if process.isRunning {
            kill(pid, SIGKILL)
            let killDeadline = ContinuousClock.now + .seconds(5)
            while process.isRunning && ContinuousClock.now < killDeadline {
                try await Task.sleep(for: .milliseconds(5))
            }
            Issue.record(
                "child \(pid) (\(process.arguments?.first ?? "")) ran longer than \(timeout); killed")
        }
        return result()
    }

    private func result() -> Result {
        if !process.isRunning { closeHandles() }
        let stdout = (try? String(contentsOfFile: stdoutPath, encoding: .utf8)) ?? ""
        let stderr = (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? ""
        return Result(
            status: process.terminationStatus, signaled: process.terminationReason == .uncaughtSignal,
            stdout: stdout, stderr: stderr, elapsed: ContinuousClock.now - started)
    }

    /// Runs a program to completion, blocking the calling thread (for set-up steps such as `cc`).
    static func run(_ executable: String, _ arguments: [String], timeout: Duration) throws -> Result {
        let child = try FaultChild(executable, arguments)
        let deadline = ContinuousClock.now + timeout
        while child.process.isRunning && ContinuousClock.now < deadline { usleep(5_000) }
        if child.process.isRunning {
            kill(child.pid, SIGKILL)
            child.process.waitUntilExit()
        }
        return child.result()
    }

    /// Runs `redlock arguments…` to completion (at most `timeout`).
    static func redlock(
        _ arguments: [String], environment: [String: String] = [:], timeout: Duration = .seconds(30)
    ) async throws -> Result {
        let child = try FaultChild(
            try FaultCLI.require(), arguments, environment: FaultCLI.environment(environment))
        return try await child.wait(timeout: timeout)
    }
}

// MARK: - Scenario 12: clients contending on one counter while servers fail

/// K `redlock run` clients, each doing read–sleep–write on one counter file under the lock and
/// appending its hold to one file, while one random server at a time is crashed (kill -9, then
/// restarted; the servers use `appendfsync always`, so a restart loses nothing) or stopped
/// (SIGSTOP, then SIGCONT).
struct CounterContention {
    struct Configuration: Sendable {
        var workers = 4
        /// Runs per worker; nil to run until `duration` is over.
        var iterations: Int? = 15
        var duration: Duration?
        var ttlMilliseconds = 3_000
        var injectFaults = true
        /// Print a progress line this often (nil: never).
        var progressEvery: Duration?
    }

    struct Outcome: Sendable {
        var counter: Int
        var succeeded: Int
        var failures: [String]
        var holds: [MutualExclusionChecker.Hold]
        var violations: [(MutualExclusionChecker.Hold, MutualExclusionChecker.Hold)]
        var faults: [String]
        var elapsed: Duration
    }

    static func run(_ group: RedisServerGroup, _ configuration: Configuration) async throws -> Outcome {
        let redlock = try FaultCLI.require()
        let directory = try makeScratchDirectory(prefix: "contention")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let counter = directory + "/counter"
        let holds = directory + "/holds"
        try "0\n".write(toFile: counter, atomically: true, encoding: .utf8)
        _ = FileManager.default.createFile(atPath: holds, contents: nil)
        let monotonic = try await offPool { try FaultCLI.monotonicCommand(in: directory) }
        let ttlNanoseconds = UInt64(configuration.ttlMilliseconds) * 1_000_000
        // Read, sleep, write: two holders at once would lose an increment.
        let script = """
            t0=$("$MONO") || exit 90
            n=$(cat "$COUNTER") || exit 91
            sleep 0.02
            echo $((n + 1)) > "$COUNTER" || exit 92
            t1=$("$MONO") || exit 93
            echo "$WORKER $REDLOCK_VALUE $t0 $((t0 + TTLNS)) $t1" >> "$HOLDS"
            """
        let servers = FaultCLI.servers(group.ports)
        let started = ContinuousClock.now
        let deadline = configuration.duration.map { started + $0 }
        let succeeded = FaultCounter()
        let failures = FaultTally<String>()
        let workersDone = FaultFlag()

        let faults = FaultTally<String>()
        let injector = Task {
            guard configuration.injectFaults else { return }
            var round = 0
            while !workersDone.isSet {
                try await Task.sleep(for: .milliseconds(Int.random(in: 300...700)))
                if workersDone.isSet { break }
                round += 1
                let index = Int.random(in: 0..<group.count)
                let server = group[index]
                if Bool.random() {
                    let killed = await server.kill9()
                    let dead = !server.isRunning
                    try await Task.sleep(for: .milliseconds(200))
                    try await server.restart()
                    faults.append("kill9+restart node \(index) (dead: \(killed && dead))")
                    #expect(killed && dead, "round \(round): node \(index) did not die")
                } else {
                    let paused = await server.pause()
                    let stopped = server.isPaused
                    try await Task.sleep(for: .milliseconds(300))
                    _ = await server.resume()
                    faults.append("pause+resume node \(index) (stopped: \(paused && stopped))")
                    #expect(paused && stopped, "round \(round): node \(index) did not stop")
                }
            }
        }
        let reporter = Task {
            guard let every = configuration.progressEvery else { return }
            while !workersDone.isSet {
                try? await Task.sleep(for: every)
                let value = (try? String(contentsOfFile: counter, encoding: .utf8)) ?? "?"
                print(
                    "soak: \(ContinuousClock.now - started): \(succeeded.count) runs, counter "
                        + "\(value.trimmingCharacters(in: .whitespacesAndNewlines)), \(failures.count) failures, "
                        + "\(faults.count) faults")
            }
        }

        await withTaskGroup(of: Void.self) { workers in
            for worker in 0..<configuration.workers {
                workers.addTask {
                    var iteration = 0
                    while true {
                        if let limit = configuration.iterations, iteration >= limit { break }
                        if let deadline, ContinuousClock.now >= deadline { break }
                        iteration += 1
                        let arguments = [
                            "--servers", servers, "--ttl", String(configuration.ttlMilliseconds), "--wait",
                            "20000",
                            "--node-timeout", "250", "--retry-wait", "50", "--id", "worker-\(worker)", "run",
                            "counter", "--", "/bin/sh", "-c", script,
                        ]
                        let environment = [
                            "MONO": monotonic, "COUNTER": counter, "HOLDS": holds,
                            "WORKER": "worker-\(worker)",
                            "TTLNS": String(ttlNanoseconds),
                        ]
                        do {
                            let child = try FaultChild(
                                redlock, arguments, environment: FaultCLI.environment(environment))
                            let result = try await child.wait(timeout: .seconds(40))
                            if result.status == 0 && !result.signaled {
                                succeeded.increment()
                            } else {
                                failures.append(
                                    "worker \(worker) run \(iteration): exit \(result.status)"
                                        + "\(result.signaled ? " (signal)" : ""): \(result.stderr.suffix(6_000))"
                                )
                            }
                        } catch {
                            failures.append("worker \(worker) run \(iteration): \(error)")
                        }
                    }
                }
            }
        }
        workersDone.set()
        try await injector.value
        reporter.cancel()
        // Every server up again at the end.
        for server in group.servers {
            if server.isPaused { _ = await server.resume() }
            if !server.isRunning { try await server.restart() }
        }

        let text = try String(contentsOfFile: counter, encoding: .utf8)
        let recorded = try MutualExclusionChecker.parse(try String(contentsOfFile: holds, encoding: .utf8))
        return Outcome(
            counter: Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1,
            succeeded: succeeded.count, failures: failures.entries, holds: recorded,
            violations: MutualExclusionChecker.violations(in: recorded), faults: faults.entries,
            elapsed: ContinuousClock.now - started)
    }
}
