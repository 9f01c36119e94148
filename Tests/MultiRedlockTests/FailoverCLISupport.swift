import Foundation
import LocalRedis
import MultiRedlock
import MultiRedlockTesting
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

// The `redlock` command-line tool (TestSupport's `startRedlock` and `redlock`) in scenario 12, the
// soak, the real-SIGSTOP variant of scenario 9 and the CLI part of the bad-input matrix.

enum FaultCLI {
    static func servers(_ ports: [Int]) -> String {
        ports.map { "127.0.0.1:\($0)" }.joined(separator: ",")
    }

    /// A tiny program that prints CLOCK_MONOTONIC in nanoseconds (the checker's clock), compiled
    /// once with cc; Python's `time.monotonic_ns()` (the same clock) when there is no compiler.
    static func monotonicCommand(in directory: String) async throws -> String {
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
            let result = try await Subprocess.run(
                compiler, ["-O2", "-o", binary, source], timeout: .seconds(60))
            if result.status == 0 { return binary }
        }
        let script = directory + "/monotonic-ns.sh"
        try "#!/bin/sh\nexec python3 -S -c 'import time; print(time.monotonic_ns())'\n".write(
            toFile: script, atomically: true, encoding: .utf8)
        chmod(script, 0o755)
        return script
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
        _ = try BuiltExecutable.require("redlock")
        let directory = try makeScratchDirectory(prefix: "contention")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let counter = directory + "/counter"
        let holds = directory + "/holds"
        try "0\n".write(toFile: counter, atomically: true, encoding: .utf8)
        _ = FileManager.default.createFile(atPath: holds, contents: nil)
        let monotonic = try await FaultCLI.monotonicCommand(in: directory)
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
                            let result = try await redlock(
                                arguments, environment: environment, timeout: .seconds(40))
                            if result.status == 0 && !result.signaled {
                                succeeded.increment()
                            } else {
                                failures.append(
                                    "worker \(worker) run \(iteration): exit \(result.status ?? -1)"
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
