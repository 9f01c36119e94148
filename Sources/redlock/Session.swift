import Dispatch
import JSONText
import Logging
import MultiRedlock
import Synchronization

/// The exit statuses, as sysexits(3) and timeout(1) use them.
enum ExitStatus {
    static let success: Int32 = 0
    /// `release` or `renew` of a lock that is not held.
    static let notHeld: Int32 = 1
    /// EX_USAGE: bad option or argument, malformed address, ttl not above the drift allowance.
    static let usage: Int32 = 64
    /// EX_UNAVAILABLE: not enough servers answered.
    static let unavailable: Int32 = 69
    /// EX_SOFTWARE: an error the tool did not expect.
    static let software: Int32 = 70
    /// EX_OSERR: the system cannot give the tool what it needs (too few free file descriptors).
    static let osError: Int32 = 71
    /// EX_TEMPFAIL: the resource is held by someone else.
    static let taken: Int32 = 75
    /// As timeout(1): the lock was lost while COMMAND ran.
    static let lockLost: Int32 = 124
    /// COMMAND was found but could not be run.
    static let notExecutable: Int32 = 126
    /// COMMAND was not found.
    static let notFound: Int32 = 127

    /// The status for a failed lock, renew or release.
    static func of(_ error: RedlockError) -> Int32 {
        switch error.kind {
        case .taken: taken
        case .quorumUnavailable, .validityExpired: unavailable
        case .notHeld: notHeld
        case .invalidArgument: usage
        default: software
        }
    }
}

/// Ends a subcommand with an exit status, after printing `message` (if any) on standard error.
struct ToolExit: Error {
    var status: Int32
    var message: String?

    init(_ status: Int32, _ message: String? = nil) {
        self.status = status
        self.message = message
    }

    init(_ error: RedlockError) {
        self.init(ExitStatus.of(error), error.description)
    }
}

/// One `Redlock` over the configured servers, for the length of one subcommand.
struct Session: Sendable {
    let settings: Settings
    let redlock: Redlock

    /// Runs `body` with a connected session and closes the `Redlock` afterwards, whatever happens.
    static func with<T: Sendable>(
        _ settings: Settings, _ body: (Session) async throws -> T
    ) async throws -> T {
        let redlock: Redlock
        do {
            redlock = try Redlock(servers: settings.servers, options: settings.options)
        } catch {
            throw ToolExit(error)
        }
        let session = Session(settings: settings, redlock: redlock)
        if settings.verbose {
            let names = settings.servers.map(\.description).joined(separator: ", ")
            session.note("servers: \(names) (quorum \(redlock.quorum) of \(redlock.nodes.count))")
        }
        do {
            await session.connect()
            let result = try await body(session)
            await redlock.close()
            return result
        } catch {
            await redlock.close()
            throw error
        }
    }

    /// Prints `message` on standard error when --verbose.
    func note(_ message: @autoclosure () -> String) {
        if settings.verbose { Output.stderr(message()) }
    }

    // MARK: Connecting

    /// Waits until the connections are up, so that the first attempt does not spend its node
    /// timeout on a handshake: until every server has answered a PING (or failed to), or a quorum
    /// has and the others had one more node timeout, or the connect timeout has passed.
    func connect() async {
        let connections = redlock.nodes.compactMap { ($0 as? RedisNode)?.connection }
        guard !connections.isEmpty else { return }
        let start = ContinuousClock.now
        let timeout = settings.options.connection.connectTimeout
        let quorum = redlock.quorum
        let grace = settings.options.nodeTimeout
        let answers = ConnectGate(count: connections.count)
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                answers.onDone { continuation.resume() }
                for (index, connection) in connections.enumerated() {
                    connection.send(["PING"], timeout: timeout) { result in
                        let failure: String? =
                            switch result {
                            case .success(.error(let message)): message
                            case .success: nil
                            case .failure(let error): "\(error.kind.rawValue): \(error.message)"
                            }
                        let answered = answers.record(index, failure: failure)
                        if answered == quorum {
                            DispatchQueue.global().asyncAfter(deadline: .now() + grace.dispatchInterval) {
                                answers.finish()
                            }
                        }
                    }
                }
                DispatchQueue.global().asyncAfter(deadline: .now() + timeout.dispatchInterval) {
                    answers.finish()
                }
            }
        } onCancel: {
            answers.finish()
        }
        guard settings.verbose else { return }
        let (ok, failures) = answers.results
        var message =
            "\(ok) of \(connections.count) servers answered PING in \(start.duration(to: .now).millisecondsText)"
        for (index, failure) in failures.sorted(by: { $0.key < $1.key }) {
            message += "; \(redlock.nodes[index].name): \(failure)"
        }
        let silent = connections.count - ok - failures.count
        if silent > 0 { message += "; \(silent) did not answer yet" }
        note(message)
    }

    // MARK: Acquiring

    /// Acquires the lock with the library's retry loop: up to 1 + retries attempts, or with `wait`
    /// until that much time has passed, with a random wait in 0...retryWait between attempts, each
    /// failed attempt released before the next. A cancelled task (a signal) stops it, and whatever
    /// was acquired is released. With `--verbose`, `AttemptLog` prints a line per attempt.
    /// - Throws: `ToolExit` with the status of the last failure, or `CancellationError`.
    func acquire(_ resource: String) async throws -> Lock {
        do {
            if let wait = settings.wait {
                return try await redlock.lock(resource, ttl: settings.ttl, waitingUpTo: wait)
            }
            return try await redlock.lock(resource, ttl: settings.ttl)
        } catch var error as RedlockError {
            if error.kind == .taken, let wait = settings.wait {
                error.message += "; still held after --wait \(wait.millisecondsText)"
            }
            throw ToolExit(error)
        }
    }

    // MARK: Releasing

    /// Compare-and-delete on every server; returns how many released it.
    @discardableResult
    func release(_ lock: Lock) async -> Result<Int, RedlockError> {
        do {
            let released = try await redlock.release(lock)
            note("release \(JSON.quoted(lock.resource)): released on \(released) of \(redlock.nodes.count)")
            return .success(released)
        } catch {
            note("release \(JSON.quoted(lock.resource)): \(error.kind.rawValue): \(error)")
            return .failure(error)
        }
    }
}

/// Collects the answers to the connection PINGs and resumes the waiter once.
private final class ConnectGate: Sendable {
    private struct State {
        var ok = 0
        var failures: [Int: String] = [:]
        var done: (@Sendable () -> Void)?
        var finished = false
    }
    private let state = Mutex(State())
    private let count: Int

    init(count: Int) {
        self.count = count
    }

    func onDone(_ done: @escaping @Sendable () -> Void) {
        let finished = state.withLock { state in
            state.done = done
            return state.finished
        }
        if finished { finish() }
    }

    /// Records one answer; returns how many succeeded so far.
    func record(_ index: Int, failure: String?) -> Int {
        let (ok, all) = state.withLock { state in
            if let failure { state.failures[index] = failure } else { state.ok += 1 }
            return (state.ok, state.ok + state.failures.count == count)
        }
        if all { finish() }
        return ok
    }

    func finish() {
        let done: (@Sendable () -> Void)? = state.withLock { state in
            state.finished = true
            defer { state.done = nil }
            return state.done
        }
        done?()
    }

    var results: (ok: Int, failures: [Int: String]) {
        state.withLock { ($0.ok, $0.failures) }
    }
}

extension Duration {
    var dispatchInterval: DispatchTimeInterval {
        .milliseconds(Int(clamping: wholeMillisecondsValue))
    }
}

/// Prints the library's per-attempt log line (`acquire attempt`) for `--verbose`:
/// `acquire "r" attempt 2: taken: …; next attempt in 37 ms` or `acquire "r" attempt 1: granted by 3 in 2 ms, validity 9798 ms`.
struct AttemptLog: LogHandler {
    var logLevel: Logger.Level = .debug
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        guard event.message.description == "acquire attempt", let fields = event.metadata else { return }
        func field(_ key: String) -> String { fields[key].map { "\($0)" } ?? "?" }
        func milliseconds(_ key: String) -> String {
            Double(field(key)).map { "\(Int64($0.rounded()))" } ?? "?"
        }
        let head =
            "acquire \(JSON.quoted(field("resource"))) attempt \(field("attempt")): \(field("outcome"))"
        if field("outcome") == "granted" {
            Output.stderr(
                head
                    + " by \(field("granted")) in \(milliseconds("elapsed_ms")) ms, validity \(milliseconds("validity_ms")) ms"
            )
        } else {
            let retry =
                fields["retry_in_ms"] == nil ? "" : "; next attempt in \(milliseconds("retry_in_ms")) ms"
            Output.stderr(head + ": \(field("error"))" + retry)
        }
    }
}
