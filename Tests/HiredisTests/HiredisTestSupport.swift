import Dispatch
import Foundation
import Hiredis
import LocalRedis
import Synchronization
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

// Helpers shared by the HiredisTests suites. Every wait here is bounded, so that a connection that
// hangs makes a test fail instead of stalling the whole run.

// MARK: - Servers

extension RedisServerProcess {
    /// This server's TCP address, for a `RedisConnection`, with the password LocalRedis gives every
    /// server by default (pass another one, or nil for none).
    func address(
        password: String? = RedisServerConfiguration.defaultPassword, username: String? = nil,
        database: Int? = nil
    ) -> RedisServer {
        RedisServer(host: "127.0.0.1", port: port, password: password, username: username, database: database)
    }

    /// This server's unix socket address; the server must have been started with `unixSocket: true`.
    func unixAddress(password: String? = RedisServerConfiguration.defaultPassword) throws -> RedisServer {
        RedisServer(
            unixSocket: try #require(unixSocketPath, "the server has no unix socket"), password: password)
    }

    /// `connected_clients` from INFO: how many connections the server has, redis-cli's included.
    func connectedClients() async throws -> Int? {
        let info = try await cli("INFO", "clients")
        let line = info.split(whereSeparator: \.isNewline).first { $0.hasPrefix("connected_clients:") }
        return line.flatMap { Int($0.dropFirst("connected_clients:".count)) }
    }
}

/// A TCP port on 127.0.0.1 that is bound but not listening, so connecting to it is refused, and no
/// server can take it while the test runs. `release()` frees it.
final class RefusingPort: Sendable {
    let port: Int
    private let descriptor: Int32

    init() throws {
        (descriptor, port) = try bindLoopbackSocket()
    }

    func release() {
        close(descriptor)
    }
}

// MARK: - Waiting

/// Hands one value to one waiter, whichever comes first: the value or the waiter's deadline.
private final class OneShot<Value: Sendable>: Sendable {
    private let continuation = Locked<CheckedContinuation<Value?, Never>?>(nil)

    func install(_ waiter: CheckedContinuation<Value?, Never>) {
        continuation.withLock { $0 = waiter }
    }

    func finish(_ value: Value?) {
        let waiter = continuation.withLock { current in
            defer { current = nil }
            return current
        }
        waiter?.resume(returning: value)
    }
}

/// Starts something that reports once through a callback, and waits at most `limit` for the report.
/// Returns nil when it did not come in time: the code under test hung.
func awaitCallback<Value: Sendable>(
    within limit: Duration,
    _ start: (@escaping @Sendable (Value) -> Void) -> Void
) async -> Value? {
    let shot = OneShot<Value>()
    return await withCheckedContinuation { continuation in
        shot.install(continuation)
        DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(Int(limit.totalNanoseconds))) {
            shot.finish(nil)
        }
        start { shot.finish($0) }
    }
}

extension Duration {
    /// The duration in nanoseconds.
    var totalNanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }

    /// The duration in seconds, for messages.
    var seconds: Double { Double(totalNanoseconds) / 1e9 }
}

// MARK: - Connections

typealias CommandResult = Result<RedisReply, RedisConnectionError>

extension RedisConnectionOptions {
    /// Long timeouts for tests that are not about timeouts: a machine busy with other tests (two
    /// cores, tests in parallel) must not turn a slow reply into a failure.
    static let patient = RedisConnectionOptions(connectTimeout: .seconds(10), commandTimeout: .seconds(10))
}

extension RedisConnection {
    /// Sends `command` with the completion form and returns its result, or nil if none came within
    /// `limit` (the connection hung).
    func result(
        of command: RedisCommand,
        timeout: Duration? = nil,
        within limit: Duration = .seconds(15)
    ) async -> CommandResult? {
        await timedResult(of: command, timeout: timeout, within: limit).result
    }

    /// `result(of:)` and how long after the call its completion ran (`limit` when none came): the
    /// connection's own promptness, without the time this task then waits for a thread of the
    /// cooperative pool.
    func timedResult(
        of command: RedisCommand,
        timeout: Duration? = nil,
        within limit: Duration = .seconds(15)
    ) async -> (result: CommandResult?, elapsed: Duration) {
        let start = ContinuousClock.now
        let answered = await awaitCallback(within: limit) { done in
            send(command, timeout: timeout) { done(($0, ContinuousClock.now - start)) }
        }
        return (answered?.0, answered?.1 ?? limit)
    }

    /// Closes the connection and returns whether `close` finished within `limit`.
    func closed(within limit: Duration = .seconds(10)) async -> Bool {
        await awaitCallback(within: limit) { done in close { done(true) } } ?? false
    }

    /// Sends PING every `interval` until one gets PONG, for up to `limit`; returns whether one did.
    func becomesUsable(within limit: Duration = .seconds(5), every interval: Duration = .milliseconds(50))
        async
        -> Bool
    {
        await eventually(timeout: limit, every: interval) {
            await result(of: ["PING"], timeout: .milliseconds(500), within: .seconds(3))
                == .success(.status("PONG"))
        }
    }
}

extension Result where Failure == RedisConnectionError {
    /// The error's kind, nil on success.
    var errorKind: RedisConnectionError.Kind? {
        if case .failure(let error) = self { error.kind } else { nil }
    }

    /// Whether this is how a command answers when the connect is refused: the connect failed, or
    /// the connection was down, waiting to retry it.
    var isRefusal: Bool {
        errorKind == .connectFailed || errorKind == .notConnected
    }

    /// The error, nil on success.
    var failure: RedisConnectionError? {
        if case .failure(let error) = self { error } else { nil }
    }
}

extension RedisConnectionError {
    /// Whether this error is, or reports as its reason, a failure of `kind`. A command sent while the
    /// connection waits to reconnect fails at once with `.notConnected`, and names the last failure in
    /// its message; a command sent while it connects fails with that failure's own kind.
    func failed(because kind: Kind) -> Bool {
        self.kind == kind || (self.kind == .notConnected && message.contains("(\(kind.rawValue):"))
    }
}

/// Records every state a connection reports to its observer.
final class StateLog: Sendable {
    private let states = Locked<[RedisConnectionState]>([])

    /// The observer to give to `RedisConnection.init`.
    var observer: @Sendable (RedisConnectionState) -> Void {
        { [self] state in states.withLock { $0.append(state) } }
    }

    var all: [RedisConnectionState] { states.withLock { $0 } }

    var connectedCount: Int { all.filter { $0 == .connected }.count }

    /// The errors of every `.disconnected` report, in order.
    var disconnections: [RedisConnectionError] {
        all.compactMap { state in
            if case .disconnected(let error) = state { error } else { nil }
        }
    }

    /// Waits until `condition` holds for the recorded states, for up to `limit`.
    func waitUntil(
        within limit: Duration = .seconds(5),
        _ condition: @escaping ([RedisConnectionState]) -> Bool
    ) async -> Bool {
        await eventually(timeout: limit, every: .milliseconds(5)) { condition(all) }
    }
}

/// A value set once from a test and read from callbacks (e.g. the connection an observer closes).
final class Box<Value: Sendable>: Sendable {
    private let storage: Locked<Value?>

    init(_ value: Value? = nil) {
        storage = Locked(value)
    }

    var value: Value? {
        get { storage.withLock { $0 } }
        set { storage.withLock { $0 = newValue } }
    }

    /// Removes and returns the value.
    func take() -> Value? {
        storage.withLock { current in
            defer { current = nil }
            return current
        }
    }
}

/// Collects results of completion handlers by index, and counts handlers that ran more than once.
final class Collector<Value: Sendable>: Sendable {
    private struct State: Sendable {
        var values: [Int: Value] = [:]
        var order: [Int] = []
        var duplicates = 0
        var lastRecordedAt: ContinuousClock.Instant?
    }

    private let state = Locked(State())

    private func withLock<T>(_ body: (inout State) -> T) -> T {
        state.withLock(body)
    }

    func record(_ index: Int, _ value: Value) {
        withLock { state in
            if state.values[index] != nil {
                state.duplicates += 1
            } else {
                state.values[index] = value
                state.order.append(index)
                state.lastRecordedAt = .now
            }
        }
    }

    var count: Int { withLock { $0.values.count } }
    var values: [Int: Value] { withLock { $0.values } }
    /// Indices in the order their handlers ran.
    var order: [Int] { withLock { $0.order } }
    var duplicates: Int { withLock { $0.duplicates } }
    /// When the latest distinct result was recorded (in the handler, on the connection's queue).
    var lastRecordedAt: ContinuousClock.Instant? { withLock { $0.lastRecordedAt } }

    /// Waits until `expected` distinct results arrived, for up to `limit`; returns whether they did.
    func waitFor(_ expected: Int, within limit: Duration = .seconds(10)) async -> Bool {
        await eventually(timeout: limit, every: .milliseconds(5)) { count >= expected }
    }
}

/// A string no other test or run uses, for keys and ECHO payloads.
func unique(_ prefix: String) -> String {
    "\(prefix)-\(UUID().uuidString)"
}

extension RedisReply {
    /// A bulk string reply holding `text`.
    static func bulk(_ text: String) -> RedisReply {
        .bulkString(Array(text.utf8))
    }
}
