import Hiredis
import Histogram
import JSONText

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

// MARK: - Clock

/// One monotonic clock (CLOCK_MONOTONIC) for every timestamp the bench takes, in nanoseconds.
enum Monotonic {
    static func now() -> UInt64 {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return UInt64(spec.tv_sec) * 1_000_000_000 + UInt64(spec.tv_nsec)
    }

    static func nanoseconds(seconds: Double) -> UInt64 {
        seconds <= 0 ? 0 : UInt64(seconds * 1e9)
    }
}

// MARK: - Latencies

/// The latencies of one scenario, shared by its tasks: whole cycle and lock call, in nanoseconds.
final class LatencyRecorder: Sendable {
    /// Anything above this (a minute) is recorded as this: a node timeout is far shorter.
    static let ceiling: UInt64 = 60_000_000_000

    struct Snapshot: Sendable {
        var cycle: Histogram<UInt64>
        var lock: Histogram<UInt64>
    }

    private let state: Locked<Snapshot>

    init() {
        let empty = Histogram<UInt64>(
            lowestDiscernibleValue: 1, highestTrackableValue: Self.ceiling,
            numberOfSignificantValueDigits: .three)
        state = Locked(Snapshot(cycle: empty, lock: empty))
    }

    func record(cycle: UInt64, lock: UInt64) {
        state.withLock { state in
            state.cycle.record(Swift.min(Swift.max(cycle, 1), Self.ceiling))
            state.lock.record(Swift.min(Swift.max(lock, 1), Self.ceiling))
        }
    }

    var snapshot: Snapshot { state.withLock { $0 } }
}

extension Histogram {
    /// The value at `percentile`, in microseconds; 0 when nothing was recorded.
    func microseconds(at percentile: Double) -> Double {
        totalCount == 0 ? 0 : Double(valueAtPercentile(percentile)) / 1000
    }
}

// MARK: - Process figures

/// What /proc/self/status and getrusage say about this process.
enum ProcessStats {
    /// Resets VmHWM to the current RSS (`echo 5 > /proc/self/clear_refs`, Linux ≥ 4.0), so that the
    /// next reading is the peak of what follows. Returns false where that is not possible.
    @discardableResult
    static func resetPeakRSS() -> Bool {
        let fd = open("/proc/self/clear_refs", O_WRONLY)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let written = "5".withCString { write(fd, $0, 1) }
        return written == 1
    }

    /// VmHWM (peak resident set) in KiB, or -1 when unknown.
    static var peakRSSKilobytes: Int { statusField("VmHWM:") ?? -1 }

    /// VmRSS (current resident set) in KiB, or -1 when unknown.
    static var rssKilobytes: Int { statusField("VmRSS:") ?? -1 }

    private static func statusField(_ name: String) -> Int? {
        guard let file = fopen("/proc/self/status", "r") else { return nil }
        defer { fclose(file) }
        var line: UnsafeMutablePointer<CChar>?
        var capacity = 0
        defer { free(line) }
        while getline(&line, &capacity, file) > 0 {
            guard let line else { break }
            let text = String(cString: line)
            guard text.hasPrefix(name) else { continue }
            return Int(text.dropFirst(name.count).filter(\.isNumber))
        }
        return nil
    }

    /// User plus system CPU time of the whole process (all threads), in seconds.
    static var cpuSeconds: Double {
        var usage = rusage()
        #if canImport(Glibc)
            let who = __rusage_who_t(RUSAGE_SELF.rawValue)
        #else
            let who = RUSAGE_SELF
        #endif
        guard getrusage(who, &usage) == 0 else { return 0 }
        func seconds(_ value: timeval) -> Double { Double(value.tv_sec) + Double(value.tv_usec) / 1e6 }
        return seconds(usage.ru_utime) + seconds(usage.ru_stime)
    }
}

// MARK: - Output

/// Prints one JSON object as one line on stdout, unbuffered.
func emit(_ fields: [(String, JSON)]) {
    writeAll(JSON.object(fields).text + "\n", to: STDOUT_FILENO)
}

/// Logs one line on stderr.
func log(_ message: String) {
    writeAll("redlock-bench: \(message)\n", to: STDERR_FILENO)
}

/// Writes all of `text` to `fd` with write(2): no stdio buffer, so lines leave in order and at once.
private func writeAll(_ text: String, to fd: Int32) {
    var bytes = Array(text.utf8)[...]
    while !bytes.isEmpty {
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        if written < 0 && errno == EINTR { continue }
        guard written > 0 else { return }
        bytes = bytes.dropFirst(written)
    }
}

/// Writes `lines` to a new file at `path`, readable by this user only; returns an error text when it
/// cannot. The file must not exist yet, and a symbolic link at `path` is not followed (O_EXCL,
/// O_NOFOLLOW): in a shared directory nobody can make this write to a file of their choosing.
func writeLines(_ lines: [String], to path: String) -> String? {
    let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
    guard descriptor >= 0, let file = fdopen(descriptor, "w") else {
        let reason = String(cString: strerror(errno))
        return "cannot create \(path): \(reason)"
    }
    var ok = true
    for line in lines where fputs(line + "\n", file) < 0 { ok = false }
    if fclose(file) != 0 { ok = false }
    return ok ? nil : "cannot write \(path): \(String(cString: strerror(errno)))"
}

/// A directory made for this run's files, readable by this user only ($TMPDIR/redlock-bench-XXXXXX,
/// mode 0700), made once when first asked for; nil when it cannot be made.
let privateOutputDirectory: String? = {
    let base = getenv("TMPDIR").map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
    var template = Array((base + "/redlock-bench-XXXXXX").utf8CString)
    return template.withUnsafeMutableBufferPointer { buffer in
        mkdtemp(buffer.baseAddress!).map { String(cString: $0) }
    }
}()

extension Bench {
    /// `--out-dir`, else the run's private directory.
    func outputDirectory() -> String? {
        configuration.outDirectory.isEmpty ? privateOutputDirectory : configuration.outDirectory
    }
}

/// Eight random hex characters, to keep keys and files of one run apart from any other's.
func runIdentifier() -> String {
    let value = UInt32.random(in: .min ... .max)
    let digits = String(value, radix: 16)
    return String(repeating: "0", count: 8 - digits.count) + digits
}
