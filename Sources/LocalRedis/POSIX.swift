// Thin, bounded wrappers around the POSIX calls LocalRedis needs: spawning children with
// posix_spawn, reaping them with waitpid, reading /proc, small file I/O and sleeping.
// Everything here is internal except `spawnChild`, which the tests' TestSupport target starts its
// child processes with (package access); the public surface lives in RedisServerProcess and friends.

import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

// MARK: - Time

extension Duration {
    var seconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }

    var milliseconds: Int {
        let value = seconds * 1000
        if value <= 0 { return 0 }
        if value >= Double(Int32.max) { return Int(Int32.max) }
        return Int(value.rounded(.up))
    }

    /// "2 s", "250 ms": for error messages.
    var humanReadable: String {
        let value = seconds
        if value >= 1 && value == value.rounded() { return "\(Int(value)) s" }
        if value >= 1 { return String(format: "%.1f s", value) }
        return "\(milliseconds) ms"
    }
}

/// A point in time after which a bounded wait gives up.
struct Deadline {
    let end: ContinuousClock.Instant

    init(after duration: Duration) {
        end = ContinuousClock.now.advanced(by: duration)
    }

    var hasPassed: Bool { ContinuousClock.now >= end }

    var remaining: Duration {
        let left = ContinuousClock.now.duration(to: end)
        return left > .zero ? left : .zero
    }
}

/// Sleeps the calling thread (not a task) for `duration`, resuming after EINTR. Package-wide: the
/// tests that block threads of the cooperative pool on purpose use it too.
package func sleepThread(_ duration: Duration) {
    guard duration > .zero else { return }
    let parts = duration.components
    var request = timespec(
        tv_sec: Int(parts.seconds),
        tv_nsec: Int(parts.attoseconds / 1_000_000_000)
    )
    var remaining = timespec()
    while nanosleep(&request, &remaining) == -1 && errno == EINTR {
        request = remaining
    }
}

// MARK: - Errors

func errnoDescription(_ code: Int32) -> String {
    "\(String(cString: strerror(code))) (errno \(code))"
}

// MARK: - Files

/// Reads a whole (small) file, or the part after `offset`. Returns nil if it cannot be opened.
func readFileBytes(_ path: String, from offset: Int = 0) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    if offset > 0 && lseek(fd, off_t(offset), SEEK_SET) < 0 { return nil }
    var result: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 16_384)
    while true {
        let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count > 0 {
            result.append(contentsOf: chunk[0..<count])
        } else if count == 0 {
            return result
        } else if errno != EINTR {
            return result
        }
    }
}

func readFileString(_ path: String, from offset: Int = 0) -> String? {
    readFileBytes(path, from: offset).map { String(decoding: $0, as: UTF8.self) }
}

func fileSize(_ path: String) -> Int {
    var info = stat()
    guard stat(path, &info) == 0 else { return 0 }
    return Int(info.st_size)
}

func fileExists(_ path: String) -> Bool {
    var info = stat()
    return stat(path, &info) == 0
}

/// Writes `contents` to `path` (created or truncated) with the given permissions.
func writeFile(_ path: String, _ contents: String, mode: mode_t = 0o600) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
    guard fd >= 0 else {
        throw LocalRedisError(.fileSystem, "cannot create \(path): \(errnoDescription(errno))")
    }
    defer { close(fd) }
    // The file may have existed with looser permissions.
    _ = fchmod(fd, mode)
    var bytes = Array(contents.utf8)
    var written = 0
    while written < bytes.count {
        let count = bytes.withUnsafeMutableBytes {
            write(fd, $0.baseAddress! + written, $0.count - written)
        }
        if count < 0 {
            if errno == EINTR { continue }
            throw LocalRedisError(.fileSystem, "cannot write \(path): \(errnoDescription(errno))")
        }
        written += count
    }
}

/// `mkdir -p` with mode 0700 for the directories it creates.
func makeDirectories(_ path: String) throws {
    var prefix = path.hasPrefix("/") ? "" : "."
    for component in path.split(separator: "/") {
        prefix += "/" + component
        if mkdir(prefix, 0o700) != 0 && errno != EEXIST {
            throw LocalRedisError(
                .fileSystem, "cannot create directory \(prefix): \(errnoDescription(errno))")
        }
    }
    var info = stat()
    guard stat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else {
        throw LocalRedisError(.fileSystem, "\(path) exists but is not a directory")
    }
}

/// Creates a fresh, unique directory from a template ending in "XXXXXX".
func makeTemporaryDirectory(template: String) throws -> String {
    var bytes = Array(template.utf8CString)
    let created = bytes.withUnsafeMutableBufferPointer { buffer -> Bool in
        mkdtemp(buffer.baseAddress!) != nil
    }
    guard created else {
        throw LocalRedisError(
            .fileSystem,
            "cannot create a temporary directory from \(template): \(errnoDescription(errno))"
        )
    }
    let path = bytes.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
    return String(decoding: path, as: UTF8.self)
}

/// The last `lines` lines of `text`.
func tail(of text: String, lines: Int) -> String {
    let all = text.split(separator: "\n", omittingEmptySubsequences: false)
    var trimmed = all[...]
    while let last = trimmed.last, last.isEmpty { trimmed = trimmed.dropLast() }
    return trimmed.suffix(lines).joined(separator: "\n")
}

// MARK: - Executables

/// Finds an executable: an explicit override path from the environment, a few usual places, then $PATH.
func findExecutable(_ name: String, overrideVariable: String) -> String? {
    let environment = ProcessInfo.processInfo.environment
    if let override = environment[overrideVariable], !override.isEmpty {
        return access(override, X_OK) == 0 ? override : nil
    }
    var candidates = ["/usr/bin", "/usr/local/bin", "/opt/homebrew/bin", "/bin"]
    if let path = environment["PATH"] {
        candidates += path.split(separator: ":").map(String.init)
    }
    for directory in candidates where !directory.isEmpty {
        let full = directory + "/" + name
        if access(full, X_OK) == 0 { return full }
    }
    return nil
}

// MARK: - Spawning

/// Where a child's standard output or error goes.
package enum ChildOutput {
    case devNull
    /// Appended to a file (created with mode 0600 if missing).
    case appendToFile(String)
    /// Duplicated from an open descriptor of the parent (e.g. a pipe's write end).
    case descriptor(Int32)
}

/// The child's environment: the parent's, minus `removing`, plus `adding`.
func childEnvironment(adding: [String: String] = [:], removing: Set<String> = []) -> [String] {
    var environment = ProcessInfo.processInfo.environment
    for name in removing { environment[name] = nil }
    for (name, value) in adding { environment[name] = value }
    return environment.map { "\($0.key)=\($0.value)" }.sorted()
}

#if os(Linux)
    private typealias AddCloseFrom =
        @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, Int32) -> Int32

    /// glibc ≥ 2.34 has posix_spawn_file_actions_addclosefrom_np, but its header declaration is not
    /// visible to Swift, so it is looked up at run time. Nil on older C libraries.
    private let addCloseFrom: AddCloseFrom? = {
        guard let handle = dlopen(nil, RTLD_NOW),
            let symbol = dlsym(handle, "posix_spawn_file_actions_addclosefrom_np")
        else { return nil }
        return unsafeBitCast(symbol, to: AddCloseFrom.self)
    }()
#endif

/// Starts `executable` as a direct child of this process with posix_spawn and returns its pid.
///
/// Standard input is /dev/null; every inherited descriptor above 2 is closed in the child (where the
/// C library allows it; all of LocalRedis's own descriptors are close-on-exec anyway) unless
/// `inheritingDescriptors` (for a test of what a child inherits: then it keeps every descriptor of
/// this process that is not close-on-exec); the signal
/// mask is emptied and all signal dispositions reset to default, so the child reacts to SIGTERM even
/// if the parent blocks or ignores it. With `newProcessGroup` the child leads its own process group
/// (pgid == pid), so a terminal's Ctrl-C does not reach it and its forked children can be killed with it.
package func spawnChild(
    executable: String,
    arguments: [String],
    environment: [String],
    standardOutput: ChildOutput,
    standardError: ChildOutput,
    newProcessGroup: Bool,
    inheritingDescriptors: Bool = false
) throws -> pid_t {
    #if canImport(Darwin)
        var actions: posix_spawn_file_actions_t? = nil
        var attributes: posix_spawnattr_t? = nil
    #else
        var actions = posix_spawn_file_actions_t()
        var attributes = posix_spawnattr_t()
    #endif
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }

    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    for (target, output) in [(Int32(1), standardOutput), (Int32(2), standardError)] {
        switch output {
        case .devNull:
            posix_spawn_file_actions_addopen(&actions, target, "/dev/null", O_WRONLY, 0)
        case .appendToFile(let path):
            posix_spawn_file_actions_addopen(&actions, target, path, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        case .descriptor(let fd):
            posix_spawn_file_actions_adddup2(&actions, fd, target)
        }
    }
    #if os(Linux)
        if let addCloseFrom, !inheritingDescriptors {
            _ = addCloseFrom(&actions, 3)
        }
    #endif

    var flags = Int32(POSIX_SPAWN_SETSIGMASK) | Int32(POSIX_SPAWN_SETSIGDEF)
    if newProcessGroup {
        flags |= Int32(POSIX_SPAWN_SETPGROUP)
        posix_spawnattr_setpgroup(&attributes, 0)
    }
    #if canImport(Darwin)
        flags |= Int32(POSIX_SPAWN_CLOEXEC_DEFAULT)
    #endif
    posix_spawnattr_setflags(&attributes, Int16(flags))
    var emptyMask = sigset_t()
    sigemptyset(&emptyMask)
    posix_spawnattr_setsigmask(&attributes, &emptyMask)
    var defaultSignals = sigset_t()
    sigfillset(&defaultSignals)
    sigdelset(&defaultSignals, SIGKILL)
    sigdelset(&defaultSignals, SIGSTOP)
    posix_spawnattr_setsigdefault(&attributes, &defaultSignals)

    let argv = ([executable] + arguments).map { strdup($0) }
    let envp = environment.map { strdup($0) }
    defer {
        for pointer in argv { free(pointer) }
        for pointer in envp { free(pointer) }
    }
    var pid: pid_t = 0
    let result = (argv + [nil]).withUnsafeBufferPointer { argvBuffer in
        (envp + [nil]).withUnsafeBufferPointer { envpBuffer in
            posix_spawn(
                &pid, executable, &actions, &attributes, argvBuffer.baseAddress!, envpBuffer.baseAddress!)
        }
    }
    guard result == 0 else {
        throw LocalRedisError(.spawnFailed, "posix_spawn \(executable) failed: \(errnoDescription(result))")
    }
    return pid
}

// MARK: - Child status

/// How a reaped child ended, decoded from a waitpid status.
struct ExitStatus: CustomStringConvertible, Sendable {
    let raw: Int32

    var signal: Int32? { (raw & 0x7f) != 0 ? raw & 0x7f : nil }
    var code: Int32? { (raw & 0x7f) == 0 ? (raw >> 8) & 0xff : nil }

    var description: String {
        if let signal { return "killed by signal \(signal) (\(String(cString: strsignal(signal))))" }
        return "exit status \(code ?? -1)"
    }
}

enum ReapResult {
    /// The child is alive (running or stopped).
    case running
    /// The child had ended and has now been reaped: its pid is free and must not be used again.
    case reaped(ExitStatus?)
}

/// Reaps `pid` if it has ended, without blocking.
/// A nil status means somebody else reaped it (or SIGCHLD is ignored): it is gone either way.
func reapIfExited(_ pid: pid_t) -> ReapResult {
    while true {
        var status: Int32 = 0
        let result = waitpid(pid, &status, WNOHANG)
        if result == pid { return .reaped(ExitStatus(raw: status)) }
        if result == 0 { return .running }
        if errno == EINTR { continue }
        return .reaped(nil)
    }
}

enum ChildState: Equatable {
    /// Alive (running or stopped).
    case running
    /// Ended but not reaped: a zombie whose pid and process group id stay reserved, so signals to
    /// them cannot reach an unrelated process.
    case exitedUnreaped
    /// Not our child any more (reaped by someone else, or SIGCHLD is ignored): its pid may already
    /// belong to another process and must not be signalled.
    case gone
}

/// The child's state, WITHOUT reaping it.
func childState(_ pid: pid_t) -> ChildState {
    #if os(Linux)
        while true {
            var info = siginfo_t()
            let result = waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT)
            if result == 0 { return info.si_signo != 0 ? .exitedUnreaped : .running }
            if errno == EINTR { continue }
            return .gone
        }
    #else
        if kill(pid, 0) != 0 && errno == ESRCH { return .gone }
        return processState(pid) == "Z" ? .exitedUnreaped : .running
    #endif
}

/// Polls until `reap` would succeed, or the timeout passes (then `.running`). Never reaps.
func awaitExitUnreaped(_ pid: pid_t, within timeout: Duration) -> ChildState {
    let deadline = Deadline(after: timeout)
    while true {
        let state = childState(pid)
        if state != .running || deadline.hasPassed { return state }
        sleepThread(.milliseconds(1))
    }
}

/// Polls until the child ends (then reaps it) or the timeout passes. Nil if still alive at the deadline.
func reap(_ pid: pid_t, within timeout: Duration) -> ReapResult? {
    let deadline = Deadline(after: timeout)
    while true {
        if case .reaped(let status) = reapIfExited(pid) { return .reaped(status) }
        if deadline.hasPassed { return nil }
        sleepThread(.milliseconds(1))
    }
}

/// The one-letter state of a process ("R", "S", "D", "T", "t", "Z", …), or nil if it does not exist.
func processState(_ pid: pid_t) -> Character? {
    #if os(Linux)
        // /proc/PID/stat is "PID (COMM) STATE …"; COMM may contain spaces and parentheses.
        guard let bytes = readFileBytes("/proc/\(pid)/stat"),
            let close = bytes.lastIndex(of: UInt8(ascii: ")"))
        else { return nil }
        var index = close + 1
        while index < bytes.count && bytes[index] == UInt8(ascii: " ") { index += 1 }
        guard index < bytes.count else { return nil }
        return Character(Unicode.Scalar(bytes[index]))
    #else
        guard kill(pid, 0) == 0 || errno == EPERM else { return nil }
        let output = try? runCapturingOutput(
            executable: "/bin/ps",
            arguments: ["-o", "state=", "-p", String(pid)],
            environment: childEnvironment(),
            timeout: .seconds(5)
        )
        return output?.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines).first
    #endif
}

/// Whether a process state letter means stopped by a signal (SIGSTOP) or by a tracer.
func isStoppedState(_ state: Character?) -> Bool {
    state == "T" || state == "t"
}

// MARK: - Running a short-lived command

struct CapturedOutput {
    var standardOutput: String
    var standardError: String
    /// Nil when the command had to be killed because it overran its timeout.
    var status: ExitStatus?
    var timedOut: Bool
}

/// A pipe whose ends are close-on-exec and whose read end is non-blocking.
private func makePipe() throws -> (read: Int32, write: Int32) {
    var fds: [Int32] = [-1, -1]
    guard pipe(&fds) == 0 else {
        throw LocalRedisError(.system, "pipe failed: \(errnoDescription(errno))")
    }
    // Not atomic (pipe2 is not visible to Swift), so a child spawned by some other code right now
    // could inherit the write end: runCapturingOutput therefore ends on the child's exit, not on EOF.
    _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
    _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
    _ = fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK)
    return (fds[0], fds[1])
}

/// Runs a command to completion, collecting stdout and stderr, and kills it if it overruns `timeout`.
func runCapturingOutput(
    executable: String,
    arguments: [String],
    environment: [String],
    timeout: Duration
) throws -> CapturedOutput {
    let outPipe = try makePipe()
    let errPipe: (read: Int32, write: Int32)
    do {
        errPipe = try makePipe()
    } catch {
        close(outPipe.read)
        close(outPipe.write)
        throw error
    }
    var openReaders: [Int32] = [outPipe.read, errPipe.read]
    defer { for fd in openReaders { close(fd) } }

    let pid: pid_t
    do {
        pid = try spawnChild(
            executable: executable,
            arguments: arguments,
            environment: environment,
            standardOutput: .descriptor(outPipe.write),
            standardError: .descriptor(errPipe.write),
            newProcessGroup: false
        )
    } catch {
        close(outPipe.write)
        close(errPipe.write)
        throw error
    }
    close(outPipe.write)
    close(errPipe.write)

    var collected: [Int32: [UInt8]] = [outPipe.read: [], errPipe.read: []]
    var buffer = [UInt8](repeating: 0, count: 16_384)
    /// Reads what is available now; closes a reader at end of file.
    func drain(_ fd: Int32) {
        while true {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count > 0 {
                collected[fd, default: []].append(contentsOf: buffer[0..<count])
                continue
            }
            if count < 0 && errno == EINTR { continue }
            if count == 0 || (errno != EAGAIN && errno != EWOULDBLOCK) {
                close(fd)
                openReaders.removeAll { $0 == fd }
            }
            return
        }
    }

    let deadline = Deadline(after: timeout)
    var status: ExitStatus?
    var timedOut = false
    while true {
        if case .reaped(let exit) = reapIfExited(pid) {
            status = exit
            for fd in openReaders { drain(fd) }
            break
        }
        if deadline.hasPassed {
            timedOut = true
            kill(pid, SIGKILL)
            _ = reap(pid, within: .seconds(5))
            break
        }
        if openReaders.isEmpty {
            sleepThread(.milliseconds(1))
            continue
        }
        var pollSet = openReaders.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        let ready = poll(&pollSet, nfds_t(pollSet.count), Int32(min(deadline.remaining.milliseconds, 10)))
        if ready > 0 {
            for entry in pollSet where entry.revents != 0 { drain(entry.fd) }
        }
    }
    return CapturedOutput(
        standardOutput: String(decoding: collected[outPipe.read] ?? [], as: UTF8.self),
        standardError: String(decoding: collected[errPipe.read] ?? [], as: UTF8.self),
        status: status,
        timedOut: timedOut
    )
}
