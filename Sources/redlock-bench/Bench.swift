import Histogram
import JSONText
import MultiRedlock

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Runs the scenarios of one configuration and prints their lines.
struct Bench: Sendable {
    let configuration: BenchConfiguration

    /// A scenario gives up after this many failures in a row (servers gone): the loops stay bounded
    /// in count and time anyway, this only keeps a dead run short and its output readable.
    static let maxConsecutiveFailures = 1000

    func emitMeta() {
        let configuration = configuration
        emit([
            ("scenario", .string("_meta")),
            ("library", .string("multiredlock")),
            ("version", .string(configuration.libraryVersion)),
            ("client", .string("hiredis async contexts on Dispatch")),
            ("servers", .int(configuration.servers.count)),
            ("server_list", .array(configuration.servers.map(\.description).map(JSON.string))),
            ("ttl_ms", .int(configuration.ttlMilliseconds)),
            ("node_timeout_ms", .int(configuration.nodeTimeoutMilliseconds)),
            ("scenarios", .array(configuration.scenarios.map(\.name).map(JSON.string))),
            ("seq_cycles", .int(configuration.sequentialCycles)),
            ("warmup_cycles", .int(configuration.warmupCycles)),
            ("warmup_s", .number(configuration.warmupSeconds, digits: 3)),
            ("duration_s", .number(configuration.durationSeconds, digits: 3)),
            ("contention_workers", .int(configuration.contentionWorkers)),
            ("hold_ms", .number(configuration.holdMilliseconds, digits: 3)),
            ("hold_mode", .string(configuration.holdMode.rawValue)),
            ("key_prefix", .string(configuration.keyPrefix)),
            ("run_id", .string(configuration.runID)),
            ("pid", .int(Int(getpid()))),
        ])
    }

    /// Runs one scenario with a Redlock of its own and prints its line. False when it could not run
    /// or saw errors.
    func run(_ scenario: Scenario) async -> Bool {
        ProcessStats.resetPeakRSS()
        let name = configuration.onExecutor ? scenario.name + "_executor" : scenario.name
        let redlock: Redlock
        do {
            redlock = try await connect(retries: scenario == .contention ? 0 : 3)
        } catch {
            log("\(name): \(error)")
            emit([
                ("scenario", .string(name)), ("servers", .int(configuration.servers.count)),
                ("error", .string("\(error)")),
            ])
            return false
        }
        log("\(name): running against \(configuration.servers.count) servers")
        var measurement: Measurement
        if configuration.onExecutor {
            measurement = await withTaskExecutorPreference(redlock.taskExecutor) {
                await measure(scenario, redlock)
            }
        } else {
            measurement = await measure(scenario, redlock)
        }
        measurement.peakRSSKilobytes = ProcessStats.peakRSSKilobytes
        measurement.rssKilobytes = ProcessStats.rssKilobytes
        await redlock.close()
        emit(measurement.fields(scenario: name, servers: configuration.servers.count))
        log(
            "\(name): \(measurement.tally.cycles) cycles, \(measurement.tally.failed) failed, "
                + "\(measurement.tally.errors) errors in \(measurement.seconds) s")
        return measurement.tally.errors == 0 && measurement.mutexViolations == 0
    }

    private func measure(_ scenario: Scenario, _ redlock: Redlock) async -> Measurement {
        switch scenario {
        case .roundtrip: await roundtrip(redlock)
        case .sequential: await sequential(redlock)
        case .concurrent(let tasks): await concurrent(redlock, tasks: tasks)
        case .contention: await contention(redlock)
        }
    }

    // MARK: Scenarios

    /// PINGs one at a time on a connection of its own to the first server, as many as `sequential`
    /// has cycles: the cost of one command through the hiredis-on-Dispatch wrapper.
    private func roundtrip(_ redlock: Redlock) async -> Measurement {
        let recorder = LatencyRecorder()
        var tally = Tally()
        guard let server = configuration.servers.first, let connection = try? RedisConnection(server: server)
        else {
            return Measurement(tally: tally, latencies: recorder.snapshot, seconds: 0, rate: 0, tasks: 1)
        }
        defer { connection.close {} }
        let count = min(configuration.sequentialCycles, configuration.maxCycles)
        for _ in 0..<configuration.warmupCycles { _ = try? await connection.send(["PING"]) }
        let cpuBefore = ProcessStats.cpuSeconds
        let start = Monotonic.now()
        let deadline = start + Monotonic.nanoseconds(seconds: configuration.sequentialMaxSeconds)
        var index = 0
        while index < count, Monotonic.now() < deadline {
            let before = Monotonic.now()
            do {
                _ = try await connection.send(["PING"])
                let time = Monotonic.now() - before
                recorder.record(cycle: time, lock: time)
                tally.cycles += 1
            } catch {
                tally.fail("connection")
            }
            index += 1
        }
        let elapsed = Double(Monotonic.now() - start) / 1e9
        var measurement = Measurement(
            tally: tally, latencies: recorder.snapshot, seconds: elapsed,
            rate: elapsed > 0 ? Double(tally.cycles) / elapsed : 0, tasks: 1)
        measurement.cpuSeconds = ProcessStats.cpuSeconds - cpuBefore
        return measurement
    }

    private func sequential(_ redlock: Redlock) async -> Measurement {
        let configuration = configuration
        let ttl = configuration.ttl
        let base = "\(configuration.keyPrefix)seq:\(configuration.runID):"
        let limit = Monotonic.nanoseconds(seconds: configuration.sequentialMaxSeconds)
        var warmupFailures = 0
        let warmupEnd = Monotonic.now() + limit
        for index in 0..<configuration.warmupCycles where Monotonic.now() < warmupEnd {
            if case .failed = await cycle(redlock, base + "w\(index)", ttl) { warmupFailures += 1 }
        }
        if warmupFailures > 0 { log("sequential: \(warmupFailures) warm-up cycles failed") }

        let recorder = LatencyRecorder()
        var tally = Tally()
        let cpuBefore = ProcessStats.cpuSeconds
        let start = Monotonic.now()
        let deadline = start + limit
        var consecutiveFailures = 0
        var index = 0
        while index < min(configuration.sequentialCycles, configuration.maxCycles),
            Monotonic.now() < deadline,
            consecutiveFailures < Self.maxConsecutiveFailures
        {
            switch await cycle(redlock, base + String(index), ttl) {
            case .completed(let cycleTime, let lockTime):
                recorder.record(cycle: cycleTime, lock: lockTime)
                tally.cycles += 1
                consecutiveFailures = 0
            case .failed(let kind):
                tally.fail(kind)
                consecutiveFailures += 1
            }
            index += 1
        }
        let elapsed = Double(Monotonic.now() - start) / 1e9
        var measurement = Measurement(
            tally: tally, latencies: recorder.snapshot, seconds: elapsed,
            rate: elapsed > 0 ? Double(tally.cycles) / elapsed : 0, tasks: 1)
        measurement.cpuSeconds = ProcessStats.cpuSeconds - cpuBefore
        return measurement
    }

    private func concurrent(_ redlock: Redlock, tasks: Int) async -> Measurement {
        let configuration = configuration
        let ttl = configuration.ttl
        let recorder = LatencyRecorder()
        let windowStart = Monotonic.now() + Monotonic.nanoseconds(seconds: configuration.warmupSeconds)
        let windowEnd = windowStart + Monotonic.nanoseconds(seconds: configuration.durationSeconds)
        let perTask = max(1, configuration.maxCycles / tasks)
        let cpu = Task { await cpuSeconds(from: windowStart, to: windowEnd) }
        let tally = await withTaskGroup(of: Tally.self) { group in
            for task in 0..<tasks {
                group.addTask {
                    let base = "\(configuration.keyPrefix)c\(tasks):\(configuration.runID):\(task):"
                    var tally = Tally()
                    var consecutiveFailures = 0
                    var index = 0
                    while index < perTask, consecutiveFailures < Self.maxConsecutiveFailures,
                        Monotonic.now() < windowEnd
                    {
                        let outcome = await cycle(redlock, base + String(index), ttl)
                        index += 1
                        let finished = Monotonic.now()
                        let measured = finished >= windowStart && finished <= windowEnd
                        switch outcome {
                        case .completed(let cycleTime, let lockTime):
                            consecutiveFailures = 0
                            if measured {
                                recorder.record(cycle: cycleTime, lock: lockTime)
                                tally.cycles += 1
                            }
                        case .failed(let kind):
                            consecutiveFailures += 1
                            if measured { tally.fail(kind) }
                        }
                    }
                    return tally
                }
            }
            var total = Tally()
            for await partial in group { total.merge(partial) }
            return total
        }
        let seconds = configuration.durationSeconds
        var measurement = Measurement(
            tally: tally, latencies: recorder.snapshot, seconds: seconds,
            rate: Double(tally.cycles) / seconds,
            tasks: tasks)
        measurement.cpuSeconds = await cpu.value
        return measurement
    }

    private func contention(_ redlock: Redlock) async -> Measurement {
        let configuration = configuration
        let ttl = configuration.ttl
        let key = "\(configuration.keyPrefix)contention:\(configuration.runID)"
        let hold = UInt64(configuration.holdMilliseconds * 1e6)
        let mode = configuration.holdMode
        let workers = configuration.contentionWorkers
        let recorder = LatencyRecorder()
        let start = Monotonic.now()
        let end = start + Monotonic.nanoseconds(seconds: configuration.durationSeconds)
        let perWorker = max(1, configuration.maxCycles / workers)
        let cpu = Task { await cpuSeconds(from: start, to: end) }
        let tally = await withTaskGroup(of: Tally.self) { group in
            for _ in 0..<workers {
                group.addTask {
                    var tally = Tally()
                    var waitingSince: UInt64?
                    var consecutiveErrors = 0
                    while tally.attempts < perWorker, consecutiveErrors < Self.maxConsecutiveFailures {
                        let attemptStart = Monotonic.now()
                        guard attemptStart < end else { break }
                        let waitStart = waitingSince ?? attemptStart
                        waitingSince = waitStart
                        tally.attempts += 1
                        let lock: Lock
                        do {
                            lock = try await redlock.lock(key, ttl: ttl)
                        } catch {
                            let kind = errorKind(error)
                            tally.fail(kind)
                            if kind == RedlockError.Kind.taken.rawValue {
                                tally.failedAttempts += 1
                                consecutiveErrors = 0
                            } else {
                                consecutiveErrors += 1
                            }
                            continue
                        }
                        let holdStart = Monotonic.now()
                        await Self.hold(hold, mode: mode, from: holdStart)
                        let holdEnd = Monotonic.now()
                        tally.holds.append(Interval(start: holdStart, end: holdEnd))
                        do {
                            try await redlock.release(lock)
                        } catch {
                            tally.fail("release." + errorKind(error))
                        }
                        let released = Monotonic.now()
                        if holdStart < end {
                            tally.cycles += 1
                            recorder.record(cycle: released - waitStart, lock: holdStart - attemptStart)
                        }
                        waitingSince = nil
                    }
                    return tally
                }
            }
            var total = Tally()
            for await partial in group { total.merge(partial) }
            return total
        }
        let seconds = configuration.durationSeconds
        var measurement = Measurement(
            tally: tally, latencies: recorder.snapshot, seconds: seconds,
            rate: Double(tally.cycles) / seconds,
            tasks: workers)
        measurement.isContention = true
        measurement.cpuSeconds = await cpu.value
        measurement.mutexViolations = Interval.overlaps(tally.holds)
        let holdTotal = tally.holds.reduce(0.0) { $0 + Double($1.end - $1.start) }
        measurement.holdMeanMicroseconds =
            tally.holds.isEmpty ? 0 : holdTotal / Double(tally.holds.count) / 1000
        let lines = tally.holds.sorted { $0.start < $1.start }.map { "\($0.start) \($0.end)" }
        let name = "contention-\(configuration.runID)-n\(configuration.servers.count).txt"
        let path = outputDirectory().map { $0 + "/" + name }
        if let problem = path.map({ writeLines(lines, to: $0) }) ?? "cannot make a private output directory" {
            log("contention: \(problem)")
            measurement.intervalsFile = ""
        } else {
            measurement.intervalsFile = path ?? ""
        }
        return measurement
    }

    private static func hold(_ nanoseconds: UInt64, mode: HoldMode, from start: UInt64) async {
        guard nanoseconds > 0 else { return }
        switch mode {
        case .sleep:
            try? await Task.sleep(for: .nanoseconds(Int64(nanoseconds)), tolerance: .zero)
        case .spin:
            while Monotonic.now() - start < nanoseconds {}
        }
    }

    // MARK: Plumbing

    /// A Redlock on the configured servers, once every node is connected (or, after the connect
    /// timeout, at least a quorum).
    private func connect(retries: Int) async throws -> Redlock {
        let configuration = configuration
        let options = RedlockOptions(
            id: "redlock-bench", retries: retries,
            nodeTimeout: .milliseconds(configuration.nodeTimeoutMilliseconds))
        let redlock = try Redlock(servers: configuration.servers, options: options)
        do {
            // Every node, or at least a quorum once the connect timeout has passed.
            try await redlock.waitUntilConnected(
                timeout: .seconds(configuration.connectTimeoutSeconds), all: true)
        } catch {
            await redlock.close()
            throw BenchError(message: "no quorum connected: \(error.message)")
        }
        let down = redlock.nodes.filter { !$0.isConnected }.map(\.name)
        if !down.isEmpty {
            log("warning: not connected to \(down.joined(separator: ", ")); going on with a quorum")
        }
        return redlock
    }
}

/// The process's CPU time between two instants of the monotonic clock (read when they come).
private func cpuSeconds(from start: UInt64, to end: UInt64) async -> Double {
    func sleep(until instant: UInt64) async {
        let now = Monotonic.now()
        if instant > now { try? await Task.sleep(for: .nanoseconds(Int64(instant - now)), tolerance: .zero) }
    }
    await sleep(until: start)
    let before = ProcessStats.cpuSeconds
    await sleep(until: end)
    return ProcessStats.cpuSeconds - before
}

/// One lock + awaited release on a resource of its own.
private func cycle(_ redlock: Redlock, _ resource: String, _ ttl: Duration) async -> CycleOutcome {
    let start = Monotonic.now()
    let lock: Lock
    do {
        lock = try await redlock.lock(resource, ttl: ttl)
    } catch {
        return .failed(errorKind(error))
    }
    let locked = Monotonic.now()
    do {
        try await redlock.release(lock)
    } catch {
        return .failed("release." + errorKind(error))
    }
    let released = Monotonic.now()
    return .completed(cycle: released - start, lock: locked - start)
}

private enum CycleOutcome {
    case completed(cycle: UInt64, lock: UInt64)
    case failed(String)
}

private func errorKind(_ error: any Error) -> String {
    if let error = error as? RedlockError { return error.kind.rawValue }
    if error is CancellationError { return "cancelled" }
    return "other"
}

struct BenchError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

/// One lock held, on the monotonic clock.
struct Interval: Sendable {
    var start: UInt64
    var end: UInt64

    /// How many intervals start before an earlier-starting one has ended.
    static func overlaps(_ intervals: [Interval]) -> Int {
        var latestEnd: UInt64 = 0
        var count = 0
        for interval in intervals.sorted(by: { $0.start < $1.start }) {
            if interval.start < latestEnd { count += 1 }
            latestEnd = max(latestEnd, interval.end)
        }
        return count
    }
}

/// Counts of one task, merged at the end of a scenario.
struct Tally: Sendable {
    var cycles = 0
    var failed = 0
    var errors = 0
    var attempts = 0
    var failedAttempts = 0
    var kinds: [String: Int] = [:]
    var holds: [Interval] = []

    /// A lock or release call that threw; anything but "taken" is an error.
    mutating func fail(_ kind: String) {
        failed += 1
        if kind != RedlockError.Kind.taken.rawValue { errors += 1 }
        kinds[kind, default: 0] += 1
    }

    mutating func merge(_ other: Tally) {
        cycles += other.cycles
        failed += other.failed
        errors += other.errors
        attempts += other.attempts
        failedAttempts += other.failedAttempts
        kinds.merge(other.kinds, uniquingKeysWith: +)
        holds += other.holds
    }
}

/// What one scenario measured, and its JSON line.
struct Measurement {
    var tally: Tally
    var latencies: LatencyRecorder.Snapshot
    var seconds: Double
    var rate: Double
    var tasks: Int
    var cpuSeconds = 0.0
    var peakRSSKilobytes = -1
    var rssKilobytes = -1
    var isContention = false
    var mutexViolations = 0
    var intervalsFile = ""
    var holdMeanMicroseconds = 0.0

    func fields(scenario: String, servers: Int) -> [(String, JSON)] {
        var fields: [(String, JSON)] = [
            ("scenario", .string(scenario)),
            ("servers", .int(servers)),
            ("tasks", .int(tasks)),
            ("cycles_per_s", .number(rate, digits: 1)),
            ("p50_us", .number(latencies.cycle.microseconds(at: 50), digits: 1)),
            ("p99_us", .number(latencies.cycle.microseconds(at: 99), digits: 1)),
            ("lock_p50_us", .number(latencies.lock.microseconds(at: 50), digits: 1)),
            ("lock_p99_us", .number(latencies.lock.microseconds(at: 99), digits: 1)),
            ("cycles", .int(tally.cycles)),
            ("failed", .int(tally.failed)),
            ("errors", .int(tally.errors)),
            ("duration_s", .number(seconds, digits: 3)),
        ]
        if isContention {
            fields += [
                ("acquisitions", .int(tally.cycles)),
                ("failed_attempts", .int(tally.failedAttempts)),
                ("attempts", .int(tally.attempts)),
                ("mutex_violations", .int(mutexViolations)),
                ("intervals_file", .string(intervalsFile)),
                ("hold_mean_us", .number(holdMeanMicroseconds, digits: 1)),
            ]
        }
        let kinds = tally.kinds.sorted { $0.key < $1.key }.map { ($0.key, JSON.int($0.value)) }
        let work = isContention ? tally.attempts : tally.cycles + tally.failed
        fields += [
            ("error_kinds", .object(kinds)),
            ("cpu_s", .number(cpuSeconds, digits: 3)),
            ("cpu_us_per_cycle", .number(work > 0 ? cpuSeconds * 1e6 / Double(work) : 0, digits: 1)),
            ("peak_rss_kb", .int(peakRSSKilobytes)),
            ("rss_kb", .int(rssKilobytes)),
        ]
        return fields
    }
}
