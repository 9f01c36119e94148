import Dispatch
import Synchronization

/// A Redis master reached through a ``RedisConnection``: the real ``RedlockNode``.
///
/// Scripts are sent as EVALSHA; when the server answers NOSCRIPT (a restart or `SCRIPT FLUSH`
/// emptied its cache) the same call is sent once more as EVAL, which also reloads the script.
///
/// Restarts: when a reconnect finds that the server's `run_id` changed, the server is a new process
/// that may have lost the locks it held (no persistence). For the longest ttl this node has been
/// asked to set, its grants answer ``NodeFailure/Kind/restarted`` instead of counting: the
/// "delayed restart" the Redlock pattern asks of operators, enforced by the client. A client that
/// first connects after the restart cannot know; run servers with `appendfsync always` for that.
public final class RedisNode: RedlockNode {
    /// The server's address.
    public let server: RedisServer
    /// The connection, for commands of the caller's own (diagnostics, tests).
    public let connection: RedisConnection
    private let observed: HandlerSlot
    /// The longest ttl set through this node, in milliseconds.
    private let longestTTL = Atomic<Int64>(0)

    /// Connects to `server` (without waiting for it).
    /// - Parameters:
    ///   - server: the Redis server's address and credentials.
    ///   - options: connect timeout and reconnect backoff.
    ///   - queue: the serial queue the connection runs on (see ``RedisConnection``); `Redlock` gives
    ///     all its nodes one. The default is a queue of its own.
    /// - Throws: ``RedisConnectionError`` when the address is invalid.
    public init(
        server: RedisServer, options: RedisConnectionOptions = .init(), queue: DispatchQueue? = nil
    ) throws(RedisConnectionError) {
        let slot = HandlerSlot()
        self.server = server
        observed = slot
        connection = try RedisConnection(server: server, options: options, queue: queue) { state in
            slot.call(state == .connected)
        }
    }

    public var name: String { server.description }

    public var isConnected: Bool { connection.isConnected }

    public func observeConnection(_ handler: @escaping @Sendable (Bool) -> Void) {
        observed.set(handler)
        // A connection that came up before the handler was set must not be missed.
        if connection.isConnected { handler(true) }
    }

    public func acquire(
        key: String, value: String, ttl: Duration, timeout: Duration,
        completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        let milliseconds = ttl.wholeMilliseconds
        raiseLongestTTL(to: milliseconds)
        let command: RedisCommand = ["SET", key, value, "NX", "PX", String(milliseconds)]
        connection.send(command, timeout: timeout) { [self] result in
            switch result {
            case .success(.status(let status)) where status == "OK":
                if let until = quarantinedUntil() {
                    completion(
                        .failed(
                            NodeFailure(
                                .restarted,
                                "the server restarted (new run_id); its grants count again in \(until - .now)"
                            )))
                } else {
                    completion(.succeeded)
                }
            case .success(.null): completion(.refused)
            case .success(.error(let message)): completion(.failed(NodeFailure(.errorReply, message)))
            case .success(let other):
                completion(.failed(NodeFailure(.errorReply, "unexpected reply \(other)")))
            case .failure(let error): completion(.failed(NodeFailure(error)))
            }
        }
    }

    public func extend(
        key: String, value: String, ttl: Duration, timeout: Duration,
        completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        raiseLongestTTL(to: ttl.wholeMilliseconds)
        run(
            Scripts.extend, key: key, arguments: [value, String(ttl.wholeMilliseconds)], timeout: timeout,
            completion)
    }

    public func release(
        key: String, value: String, timeout: Duration,
        completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        run(Scripts.release, key: key, arguments: [value], timeout: timeout, completion)
    }

    public func close() async {
        await connection.close()
    }

    public func acquire(
        keys: [String], value: String, ttl: Duration, timeout: Duration,
        completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        guard keys.count > 1 else {
            return acquire(key: keys[0], value: value, ttl: ttl, timeout: timeout, completion: completion)
        }
        let milliseconds = ttl.wholeMilliseconds
        raiseLongestTTL(to: milliseconds)
        run(Scripts.acquireAll, keys: keys, arguments: [value, String(milliseconds)], timeout: timeout) {
            [self] result in completion(countingRestart(result))
        }
    }

    public func extend(
        keys: [String], value: String, ttl: Duration, timeout: Duration,
        completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        guard keys.count > 1 else {
            return extend(key: keys[0], value: value, ttl: ttl, timeout: timeout, completion: completion)
        }
        raiseLongestTTL(to: ttl.wholeMilliseconds)
        run(
            Scripts.extendAll, keys: keys, arguments: [value, String(ttl.wholeMilliseconds)],
            timeout: timeout,
            completion)
    }

    public func release(
        keys: [String], value: String, timeout: Duration,
        completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        guard keys.count > 1 else {
            return release(key: keys[0], value: value, timeout: timeout, completion: completion)
        }
        run(Scripts.releaseAll, keys: keys, arguments: [value], timeout: timeout, completion)
    }

    public func acquireFenced(
        key: String, counterKey: String, value: String, ttl: Duration, timeout: Duration,
        completion: @escaping @Sendable (NodeResult, Int64) -> Void
    ) {
        let milliseconds = ttl.wholeMilliseconds
        raiseLongestTTL(to: milliseconds)
        let tail = ["2", key, counterKey, value, String(milliseconds)]
        evaluate(Scripts.acquireFenced, tail, timeout: timeout) { [self] result in
            switch result {
            case .success(.integer(let counter)) where counter >= 0:
                completion(countingRestart(.succeeded), counter)
            case .success(.integer): completion(.refused, 0)
            default: completion(Self.scriptResult(result), 0)
            }
        }
    }

    public func raiseFence(
        key: String, counterKey: String, value: String, token: Int64, timeout: Duration,
        completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        run(
            Scripts.raiseFence, keys: [key, counterKey], arguments: [value, String(token)], timeout: timeout,
            completion)
    }

    /// A grant from a node that restarted within the longest ttl does not count.
    private func countingRestart(_ result: NodeResult) -> NodeResult {
        guard result == .succeeded, let until = quarantinedUntil() else { return result }
        return .failed(
            NodeFailure(
                .restarted, "the server restarted (new run_id); its grants count again in \(until - .now)"))
    }

    /// When the server's grants count again after a detected restart; nil when they count now.
    private func quarantinedUntil() -> ContinuousClock.Instant? {
        guard let restart = connection.serverRestartDetectedAt else { return nil }
        let until = restart + .milliseconds(longestTTL.load(ordering: .relaxed))
        return ContinuousClock.now < until ? until : nil
    }

    private func raiseLongestTTL(to milliseconds: Int64) {
        var current = longestTTL.load(ordering: .relaxed)
        while milliseconds > current {
            let (exchanged, original) = longestTTL.compareExchange(
                expected: current, desired: milliseconds, ordering: .relaxed)
            if exchanged { return }
            current = original
        }
    }

    /// EVALSHA, falling back to EVAL on NOSCRIPT. The script answers 1 (done) or 0 (not held).
    private func run(
        _ script: Script, key: String, arguments: [String], timeout: Duration,
        _ completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        run(script, keys: [key], arguments: arguments, timeout: timeout, completion)
    }

    private func run(
        _ script: Script, keys: [String], arguments: [String], timeout: Duration,
        _ completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        evaluate(script, [String(keys.count)] + keys + arguments, timeout: timeout) {
            completion(Self.scriptResult($0))
        }
    }

    /// Sends `EVALSHA sha <tail>`; on NOSCRIPT, sends it once more as `EVAL source <tail>`, which also
    /// loads the script into the server's cache.
    private func evaluate(
        _ script: Script, _ tail: [String], timeout: Duration,
        _ completion: @escaping @Sendable (Result<RedisReply, RedisConnectionError>) -> Void
    ) {
        let connection = connection
        connection.send(RedisCommand(["EVALSHA", script.sha1] + tail), timeout: timeout) { result in
            if case .success(.error(let message)) = result, message.hasPrefix("NOSCRIPT") {
                connection.send(
                    RedisCommand(["EVAL", script.source] + tail), timeout: timeout, completion: completion)
            } else {
                completion(result)
            }
        }
    }

    private static func command(_ name: String, _ script: String, _ tail: [String]) -> RedisCommand {
        var bytes = name.utf8.count + script.utf8.count
        for argument in tail { bytes += argument.utf8.count }
        var command = RedisCommand(reservingArguments: tail.count + 2, bytes: bytes)
        command.append(name)
        command.append(script)
        for argument in tail { command.append(argument) }
        return command
    }

    private static func scriptResult(_ result: Result<RedisReply, RedisConnectionError>) -> NodeResult {
        switch result {
        case .success(.integer(let count)): count > 0 ? .succeeded : .refused
        case .success(.error(let message)): .failed(NodeFailure(.errorReply, message))
        case .success(let other): .failed(NodeFailure(.errorReply, "unexpected reply \(other)"))
        case .failure(let error): .failed(NodeFailure(error))
        }
    }
}

/// Holds the connection-state handler, which is set after the connection (and its observer) exist.
private final class HandlerSlot: Sendable {
    private let handler = Locked<(@Sendable (Bool) -> Void)?>(nil)

    func set(_ newHandler: @escaping @Sendable (Bool) -> Void) {
        handler.withLock { $0 = newHandler }
    }

    func call(_ connected: Bool) {
        handler.withLock { $0 }?(connected)
    }
}

extension NodeFailure {
    /// Maps a connection's failure onto a node failure, keeping its message.
    init(_ error: RedisConnectionError) {
        let kind: Kind =
            switch error.kind {
            case .timeout: .timeout
            case .connectionLost: .connectionLost
            case .closed: .closed
            default: .unreachable
            }
        self.init(kind, "\(error.kind.rawValue): \(error.message)")
    }
}

extension Duration {
    /// The duration in whole milliseconds (rounded down), clamped to `Int64`'s range.
    var wholeMilliseconds: Int64 {
        let (seconds, attoseconds) = components
        let (product, overflow) = seconds.multipliedReportingOverflow(by: 1000)
        if overflow { return seconds < 0 ? .min : .max }
        let (sum, sumOverflow) = product.addingReportingOverflow(attoseconds / 1_000_000_000_000_000)
        return sumOverflow ? .max : sum
    }

    /// The duration in milliseconds, with fractions.
    var milliseconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) * 1000 + Double(attoseconds) / 1e15
    }
}
