import JSONText
import MultiRedlock

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
    /// timeout on a handshake: until a quorum is connected (or every server that is not has failed to
    /// connect, or the connect timeout has passed), then up to one more node timeout for the others.
    func connect() async {
        let start = ContinuousClock.now
        let options = settings.options
        if (try? await redlock.waitUntilConnected(timeout: options.connection.connectTimeout)) != nil {
            try? await redlock.waitUntilConnected(timeout: options.nodeTimeout, all: true)
        }
        guard settings.verbose else { return }
        let nodes = redlock.nodes
        var message =
            "\(nodes.count { $0.isConnected }) of \(nodes.count) servers connected in "
            + start.duration(to: .now).millisecondsText
        for node in nodes where !node.isConnected {
            message += "; \(node.name): \(node.connectionDetail ?? "not connected yet")"
        }
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

/// Prints one line per acquire attempt for `--verbose` (from ``RedlockOptions/onAttempt``):
/// `acquire "r" attempt 2: taken: …; next attempt in 37 ms` or
/// `acquire "r" attempt 1: granted by 3 in 2 ms, validity 9798 ms`.
enum AttemptLog {
    static func print(_ attempt: AcquireAttempt) {
        let head = "acquire \(JSON.quoted(attempt.resource)) attempt \(attempt.number): \(attempt.outcome)"
        switch attempt.result {
        case .success(let lock):
            Output.stderr(
                head + " by \(lock.nodes.count) in \(attempt.elapsed.roundedMilliseconds) ms, validity "
                    + "\(lock.validity.roundedMilliseconds) ms")
        case .failure(let error):
            let retry = attempt.retryIn.map { "; next attempt in \($0.roundedMilliseconds) ms" } ?? ""
            Output.stderr(head + ": \(error)" + retry)
        }
    }
}
