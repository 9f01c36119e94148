import ArgumentParser
import Dispatch
import MultiRedlock

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

// redlock-bench: load scenarios against the Redis masters it is given; one JSON object per line on
// stdout, logs on stderr. `.ci/bench` (`make bench`) runs it against local servers.

/// The command line. Every option can also come from an environment variable (named in its help);
/// an option given on the command line wins over the variable, which wins over the default.
@main
struct RedlockBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "redlock-bench",
        abstract: "Benchmarks MultiRedlock against the Redis masters it is given.",
        discussion: """
            Runs the scenarios in order, each with a Redlock of its own, and prints one JSON object \
            per line per scenario on stdout (a "_meta" line first); logs go to stderr.

              sequential      one task: warm-up, then lock + awaited release, each on a new resource
              concurrent_C    C tasks doing the same on resources of their own for the duration, \
            after a warm-up ("concurrent" alone: one scenario per --concurrency value)
              contention      W tasks compete for one resource: one attempt per lock call \
            (retries 0); on success hold, release; on failure try again at once. Every hold is \
            written as "start_ns end_ns" (CLOCK_MONOTONIC) to a file and checked for overlaps.

            Fields: scenario, servers, cycles_per_s (contention: acquisitions per second), p50_us \
            and p99_us (whole cycle; contention: from the first attempt to the release), lock_p50_us \
            and lock_p99_us (the lock call that succeeded), cycles, failed (lock or release calls \
            that threw), errors (of those, all but "taken"), error_kinds, duration_s, cpu_s and \
            cpu_us_per_cycle (process CPU time), peak_rss_kb (VmHWM, reset before each scenario), \
            and for contention acquisitions, failed_attempts, mutex_violations, intervals_file, \
            hold_mean_us.
            """)

    @Option(help: "Comma-separated server addresses (host:port, redis://…). Env: REDLOCK_BENCH_SERVERS.")
    var servers: String?

    @Option(
        help: """
            Comma-separated scenarios: sequential, concurrent, concurrent_C, contention. \
            Env: REDLOCK_BENCH_SCENARIOS.
            """)
    var scenarios: String?

    @Option(name: .customLong("ttl-ms"), help: "Lock ttl in milliseconds. Env: REDLOCK_BENCH_TTL_MS.")
    var ttlMilliseconds: Int?

    @Option(
        name: .customLong("seq-cycles"), help: "Measured sequential cycles. Env: REDLOCK_BENCH_SEQ_CYCLES.")
    var sequentialCycles: Int?

    @Option(
        name: .customLong("seq-max-s"),
        help: "Time limit of the measured sequential cycles. Env: REDLOCK_BENCH_SEQ_MAX_S.")
    var sequentialMaxSeconds: Double?

    @Option(
        name: .customLong("warmup-cycles"),
        help: "Sequential warm-up cycles. Env: REDLOCK_BENCH_WARMUP_CYCLES.")
    var warmupCycles: Int?

    @Option(name: .customLong("warmup-s"), help: "Concurrent warm-up seconds. Env: REDLOCK_BENCH_WARMUP_S.")
    var warmupSeconds: Double?

    @Option(
        name: .customLong("duration-s"),
        help: "Measured seconds of concurrent and contention scenarios. Env: REDLOCK_BENCH_DURATION_S.")
    var durationSeconds: Double?

    @Option(
        help: "Task counts that \"concurrent\" expands to, comma-separated. Env: REDLOCK_BENCH_CONCURRENCY.")
    var concurrency: String?

    @Option(
        name: .customLong("contention-workers"),
        help: "Tasks competing in contention. Env: REDLOCK_BENCH_CONTENTION_WORKERS.")
    var contentionWorkers: Int?

    @Option(
        name: .customLong("hold-ms"), help: "How long contention holds each lock. Env: REDLOCK_BENCH_HOLD_MS."
    )
    var holdMilliseconds: Double?

    @Option(
        name: .customLong("hold-mode"),
        help: "How contention holds: sleep (Task.sleep) or spin (busy wait). Env: REDLOCK_BENCH_HOLD_MODE.")
    var holdMode: String?

    @Option(name: .customLong("key-prefix"), help: "Prefix of every key. Env: REDLOCK_BENCH_KEY_PREFIX.")
    var keyPrefix: String?

    @Option(
        name: .customLong("out-dir"),
        help: """
            Where files are written (default: a new directory only this user can read, \
            $TMPDIR/redlock-bench-XXXXXX). Env: REDLOCK_BENCH_OUT_DIR.
            """)
    var outDirectory: String?

    @Option(
        name: .customLong("node-timeout-ms"),
        help: "Redlock's nodeTimeout in milliseconds. Env: REDLOCK_BENCH_NODE_TIMEOUT_MS.")
    var nodeTimeoutMilliseconds: Int?

    @Option(
        name: .customLong("max-cycles"),
        help:
            "Upper bound on cycles (or attempts) per scenario, whatever the time. Env: REDLOCK_BENCH_MAX_CYCLES."
    )
    var maxCycles: Int?

    @Option(
        name: .customLong("connect-timeout-s"),
        help: "How long to wait for every node to connect. Env: REDLOCK_BENCH_CONNECT_TIMEOUT_S.")
    var connectTimeoutSeconds: Double?

    @Option(
        name: .customLong("library-version"),
        help: "Version named in the _meta line. Env: REDLOCK_BENCH_LIBRARY_VERSION.")
    var libraryVersion: String?

    @Flag(inversion: .prefixedNo, help: "Print the _meta line first.")
    var meta = true

    @Flag(
        name: .customLong("on-executor"),
        help: """
            Run each scenario's tasks on the Redlock's taskExecutor (withTaskExecutorPreference); \
            its lines are named SCENARIO_executor. Env: REDLOCK_BENCH_ON_EXECUTOR=1.
            """)
    var onExecutor = false

    /// Runs the scenarios in a task while the main thread waits on a semaphore. (An async `main`
    /// parks the main thread in `dispatch_main`, whose `sigsuspend` valgrind cannot run: this way
    /// the bench also runs under callgrind.)
    func run() throws {
        let configuration = try resolve()
        let bench = Bench(configuration: configuration)
        if meta { bench.emitMeta() }
        let failures = Locked(0)
        let done = DispatchSemaphore(value: 0)
        Task {
            for scenario in configuration.scenarios {
                let succeeded = await bench.run(scenario)
                if !succeeded { failures.withLock { $0 += 1 } }
            }
            done.signal()
        }
        done.wait()
        if failures.withLock({ $0 }) > 0 { throw ExitCode(1) }
    }

    /// Flag, else environment variable, else default; every value checked.
    private func resolve() throws -> BenchConfiguration {
        let environment = Environment()
        let serverList = try environment.pick(servers, "REDLOCK_BENCH_SERVERS", "127.0.0.1:6379")
        var parsedServers: [RedisServer] = []
        // A comma in a password does not split an address; the error shows the address masked.
        for address in RedisServer.splitList(serverList) where !address.isEmpty {
            do {
                parsedServers.append(try RedisServer(parsing: address))
            } catch {
                throw ValidationError("bad server address: \(error)")
            }
        }
        guard !parsedServers.isEmpty else { throw ValidationError("no server given") }

        let concurrencyList = try environment.pick(concurrency, "REDLOCK_BENCH_CONCURRENCY", "16,64")
        var taskCounts: [Int] = []
        for item in concurrencyList.split(separator: ",") {
            guard let count = Int(item.trimmingSpaces), count > 0 else {
                throw ValidationError("bad concurrency \(String(item).debugDescription)")
            }
            taskCounts.append(count)
        }

        let scenarioList = try environment.pick(
            scenarios, "REDLOCK_BENCH_SCENARIOS", "sequential,concurrent,contention")
        let parsedScenarios = try Scenario.parse(scenarioList, concurrency: taskCounts)

        let mode = try environment.pick(holdMode, "REDLOCK_BENCH_HOLD_MODE", "sleep")
        guard let hold = HoldMode(rawValue: mode) else {
            throw ValidationError("hold mode must be sleep or spin (got \(mode.debugDescription))")
        }

        let configuration = BenchConfiguration(
            servers: parsedServers,
            scenarios: parsedScenarios,
            ttlMilliseconds: try environment.pick(ttlMilliseconds, "REDLOCK_BENCH_TTL_MS", 10_000),
            sequentialCycles: try environment.pick(sequentialCycles, "REDLOCK_BENCH_SEQ_CYCLES", 2000),
            sequentialMaxSeconds: try environment.pick(sequentialMaxSeconds, "REDLOCK_BENCH_SEQ_MAX_S", 30),
            warmupCycles: try environment.pick(warmupCycles, "REDLOCK_BENCH_WARMUP_CYCLES", 200),
            warmupSeconds: try environment.pick(warmupSeconds, "REDLOCK_BENCH_WARMUP_S", 1),
            durationSeconds: try environment.pick(durationSeconds, "REDLOCK_BENCH_DURATION_S", 5),
            contentionWorkers: try environment.pick(contentionWorkers, "REDLOCK_BENCH_CONTENTION_WORKERS", 8),
            holdMilliseconds: try environment.pick(holdMilliseconds, "REDLOCK_BENCH_HOLD_MS", 1),
            holdMode: hold,
            keyPrefix: try environment.pick(keyPrefix, "REDLOCK_BENCH_KEY_PREFIX", "redlock-bench:"),
            outDirectory: try environment.pick(outDirectory, "REDLOCK_BENCH_OUT_DIR", ""),
            nodeTimeoutMilliseconds: try environment.pick(
                nodeTimeoutMilliseconds, "REDLOCK_BENCH_NODE_TIMEOUT_MS", 1000),
            maxCycles: try environment.pick(maxCycles, "REDLOCK_BENCH_MAX_CYCLES", 5_000_000),
            connectTimeoutSeconds: try environment.pick(
                connectTimeoutSeconds, "REDLOCK_BENCH_CONNECT_TIMEOUT_S", 10),
            libraryVersion: try environment.pick(libraryVersion, "REDLOCK_BENCH_LIBRARY_VERSION", "unknown"),
            runID: runIdentifier(),
            onExecutor: onExecutor || environment.value("REDLOCK_BENCH_ON_EXECUTOR") == "1")
        try configuration.validate()
        return configuration
    }
}

/// Everything a run needs, resolved and checked.
struct BenchConfiguration: Sendable {
    var servers: [RedisServer]
    var scenarios: [Scenario]
    var ttlMilliseconds: Int
    var sequentialCycles: Int
    var sequentialMaxSeconds: Double
    var warmupCycles: Int
    var warmupSeconds: Double
    var durationSeconds: Double
    var contentionWorkers: Int
    var holdMilliseconds: Double
    var holdMode: HoldMode
    var keyPrefix: String
    /// Where files are written; empty for a private directory made when the first file is.
    var outDirectory: String
    var nodeTimeoutMilliseconds: Int
    var maxCycles: Int
    var connectTimeoutSeconds: Double
    var libraryVersion: String
    var runID: String
    /// Whether the scenarios run on the Redlock's taskExecutor.
    var onExecutor: Bool

    var ttl: Duration { .milliseconds(ttlMilliseconds) }

    func validate() throws {
        func check(_ condition: Bool, _ message: String) throws {
            if !condition { throw ValidationError(message) }
        }
        try check(ttlMilliseconds > 0, "ttl-ms must be positive")
        try check(sequentialCycles >= 0, "seq-cycles must not be negative")
        try check(sequentialMaxSeconds > 0, "seq-max-s must be positive")
        try check(warmupCycles >= 0, "warmup-cycles must not be negative")
        try check(warmupSeconds >= 0, "warmup-s must not be negative")
        try check(durationSeconds > 0 && durationSeconds <= 3600, "duration-s must be in (0, 3600]")
        try check(contentionWorkers > 0, "contention-workers must be positive")
        try check(holdMilliseconds >= 0, "hold-ms must not be negative")
        try check(nodeTimeoutMilliseconds > 0, "node-timeout-ms must be positive")
        try check(maxCycles > 0, "max-cycles must be positive")
        try check(connectTimeoutSeconds > 0, "connect-timeout-s must be positive")
    }
}

enum HoldMode: String, Sendable {
    case sleep, spin
}

/// One scenario to run.
enum Scenario: Sendable, Hashable {
    /// One PING at a time on one connection: the wrapper's own round trip, against redis-benchmark -c 1.
    case roundtrip
    case sequential
    case concurrent(Int)
    case contention

    var name: String {
        switch self {
        case .roundtrip: "roundtrip"
        case .sequential: "sequential"
        case .concurrent(let tasks): "concurrent_\(tasks)"
        case .contention: "contention"
        }
    }

    static func parse(_ list: String, concurrency: [Int]) throws -> [Scenario] {
        var result: [Scenario] = []
        for item in list.split(separator: ",").map(\.trimmingSpaces) where !item.isEmpty {
            switch item {
            case "roundtrip": result.append(.roundtrip)
            case "sequential": result.append(.sequential)
            case "contention": result.append(.contention)
            case "concurrent": result += concurrency.map { .concurrent($0) }
            default:
                guard item.hasPrefix("concurrent_"), let tasks = Int(item.dropFirst("concurrent_".count)),
                    tasks > 0
                else {
                    throw ValidationError(
                        "unknown scenario \(item.debugDescription) (roundtrip, sequential, concurrent, concurrent_C, contention)"
                    )
                }
                result.append(.concurrent(tasks))
            }
        }
        guard !result.isEmpty else { throw ValidationError("no scenario given") }
        return result
    }
}

/// Reads REDLOCK_BENCH_* variables.
private struct Environment {
    func value(_ name: String) -> String? {
        guard let raw = getenv(name) else { return nil }
        let text = String(cString: raw)
        return text.isEmpty ? nil : text
    }

    func pick(_ flag: String?, _ name: String, _ fallback: String) throws -> String {
        flag ?? value(name) ?? fallback
    }

    func pick(_ flag: Int?, _ name: String, _ fallback: Int) throws -> Int {
        if let flag { return flag }
        guard let text = value(name) else { return fallback }
        guard let number = Int(text.trimmingSpaces) else {
            throw ValidationError("\(name)=\(text.debugDescription) is not an integer")
        }
        return number
    }

    func pick(_ flag: Double?, _ name: String, _ fallback: Double) throws -> Double {
        if let flag { return flag }
        guard let text = value(name) else { return fallback }
        guard let number = Double(text.trimmingSpaces), number.isFinite else {
            throw ValidationError("\(name)=\(text.debugDescription) is not a number")
        }
        return number
    }
}

extension StringProtocol {
    fileprivate var trimmingSpaces: String {
        String(drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
    }
}
