import Dispatch
import Synchronization

/// A Redis master reached through a ``RedisConnection`` (or any ``RedisCommandChannel``): the real
/// ``RedlockNode``.
///
/// The acquire scripts are sent as EVAL; the compare-and-* scripts as EVALSHA, sent once more as
/// EVAL when the server answers NOSCRIPT (a restart or `SCRIPT FLUSH` emptied its cache), within
/// the same deadline (see `evaluate`).
///
/// Restarts: when a reconnect finds that the server's `run_id` changed, the server is a new process
/// that may have lost the locks it held (no persistence); ``timeSinceRestart`` says since when, and
/// ``Redlock`` does not count its grants for a while (``RedlockOptions/restartQuarantine``).
public final class RedisNode: FencingRedlockNode {
    /// The server's address.
    public let server: RedisServer
    /// The connection (a ``RedisConnection`` unless the node was made with
    /// ``init(connection:)``), for commands of the caller's own (diagnostics, tests).
    public let connection: any RedisCommandChannel
    private let observed: HandlerSlot

    /// Connects to `server` (without waiting for it).
    /// - Parameters:
    ///   - server: the Redis server's address and credentials.
    ///   - options: connect timeout and reconnect backoff.
    ///   - queue: the serial queue the connection runs on (see ``RedisConnection``); `Redlock` gives
    ///     all its nodes one. The default is a queue of its own.
    /// - Throws: ``RedisConnectionError`` when the address is invalid.
    public convenience init(
        server: RedisServer, options: RedisConnectionOptions = .init(), queue: DispatchQueue? = nil
    ) throws(RedisConnectionError) {
        try self.init { onStateChange throws(RedisConnectionError) in
            try RedisConnection(server: server, options: options, queue: queue, onStateChange: onStateChange)
        }
    }

    /// A node over a connection of the caller's making, such as MultiRedlockTesting's
    /// `ScriptedConnection`: `connect` gets the handler the connection must report its state to
    /// (connected, disconnected), and returns the connection. ``server`` is the connection's.
    public init<Failure: Error>(
        connection connect: (_ onStateChange: @escaping @Sendable (RedisConnectionState) -> Void)
            throws(Failure)
            -> any RedisCommandChannel
    ) throws(Failure) {
        let slot = HandlerSlot()
        observed = slot
        connection = try connect { slot.call($0) }
        server = connection.server
    }

    public var name: String { server.description }

    public var isConnected: Bool { connection.isConnected }

    /// The server's `run_id` as of the last handshake.
    public var serverID: String? { connection.serverRunID }

    /// `connected (handshake done)` after a connect; after a disconnect, the connection error's kind
    /// and message (which never carry the password).
    public var connectionDetail: String? { observed.detail }

    public var timeSinceRestart: Duration? {
        connection.serverRestartDetectedAt.map { ContinuousClock.now - $0 }
    }

    public func observeConnection(_ handler: @escaping @Sendable (Bool) -> Void) {
        observed.set(handler)
        // A connection that came up before the handler was set must not be missed.
        if connection.isConnected { handler(true) }
    }

    public func acquire(
        key: String, value: String, ttl: Duration, timeout: Duration,
        completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        // Built straight into the command's one RESP buffer: one allocation.
        var command = RedisCommand(reservingBytes: key.utf8.count + value.utf8.count + 64)
        command.append("SET")
        command.append(key)
        command.append(value)
        command.append("NX")
        command.append("PX")
        command.append(String(ttl.wholeMilliseconds))
        connection.send(command, timeout: timeout) { result in
            switch result {
            case .success(.status(let status)) where status == "OK": completion(.succeeded)
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
        run(
            Scripts.extend, key: key, value, String(ttl.wholeMilliseconds), timeout: timeout,
            completion)
    }

    public func release(
        key: String, value: String, timeout: Duration,
        completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        run(Scripts.release, key: key, value, timeout: timeout, completion)
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
        run(
            Scripts.acquireAll, keys: keys, arguments: [value, String(ttl.wholeMilliseconds)],
            timeout: timeout,
            completion)
    }

    public func extend(
        keys: [String], value: String, ttl: Duration, timeout: Duration,
        completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        guard keys.count > 1 else {
            return extend(key: keys[0], value: value, ttl: ttl, timeout: timeout, completion: completion)
        }
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
        let tail = RedisCommand(["2", key, counterKey, value, String(ttl.wholeMilliseconds)])
        evaluate(Scripts.acquireFenced, tail, timeout: timeout) { result in
            switch result {
            case .success(.integer(let counter)) where counter >= 0:
                completion(.succeeded, counter)
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

    /// EVALSHA, falling back to EVAL on NOSCRIPT. The script answers 1 (done) or 0 (not held).
    private func run(
        _ script: Script, key: String, _ first: String, _ second: String? = nil, timeout: Duration,
        _ completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        // EVALSHA, the SHA1, numkeys, the key and the arguments, straight into one RESP buffer: one
        // allocation (the NOSCRIPT fallback takes the tail from it).
        var command = RedisCommand(
            reservingBytes: 64 + key.utf8.count + first.utf8.count + (second?.utf8.count ?? 0))
        command.append("EVALSHA")
        command.append(script.sha1)
        command.append("1")
        command.append(key)
        command.append(first)
        if let second { command.append(second) }
        // The reply is mapped in evaluate's own closure: no closure of ours per command.
        evaluate(script, evalsha: command, timeout: timeout, .nodeResult(completion))
    }

    private func run(
        _ script: Script, keys: [String], arguments: [String], timeout: Duration,
        _ completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        var tail = RedisCommand([String(keys.count)])
        for key in keys { tail.append(key) }
        for argument in arguments { tail.append(argument) }
        evaluate(script, tail, timeout: timeout) {
            completion(Self.scriptResult($0))
        }
    }

    /// Runs `script` with `tail` (numkeys, keys, arguments, as a command's arguments), within one deadline `timeout` from now.
    ///
    /// A script that sets keys (``Script/setsKeys``: the acquires) is always sent as
    /// `EVAL source <tail>`. Its place among the connection's commands is then where it was sent:
    /// with EVALSHA, its NOSCRIPT fallback would go out from the reply, behind commands queued in
    /// the meantime; a release of the same attempt queued there would run first and delete
    /// nothing, and the late EVAL would then set keys that stay for the whole ttl. EVAL costs only
    /// the source's bytes: the server caches the compiled script by its SHA1.
    ///
    /// The compare-and-* scripts (release, extend, raiseFence, releaseAll, extendAll) are sent as
    /// `EVALSHA sha1 <tail>` and, on NOSCRIPT, once more as EVAL (which also reloads the script).
    /// Their fallback may land behind later commands, and that is harmless: each lock attempt has a
    /// value of its own, and these scripts only touch keys that hold that value, which no other
    /// attempt's or owner's command sets; so whatever else runs in between, each script does what it
    /// would have done in order, on its own attempt's keys.
    ///
    /// The fallback gets only what is left of `timeout` (one deadline per operation); when nothing
    /// is left, it fails as a timeout without being sent.
    private func evaluate(
        _ script: Script, _ tail: RedisCommand, timeout: Duration,
        _ completion: @escaping @Sendable (Result<RedisReply, RedisConnectionError>) -> Void
    ) {
        let connection = connection
        guard !script.setsKeys else {
            connection.send(
                Self.command("EVAL", script.source, tail), timeout: timeout, completion: completion)
            return
        }
        evaluate(
            script, evalsha: Self.command("EVALSHA", script.sha1, tail), timeout: timeout, .reply(completion))
    }

    /// Sends `evalsha` (`EVALSHA sha1 <tail>` of a compare-and-* `script`) and, on NOSCRIPT,
    /// `EVAL source <tail>` within what is left of `timeout` (see ``evaluate(_:_:timeout:_:)``);
    /// `completion` gets the reply, or what it means as a script's ``NodeResult``.
    private func evaluate(
        _ script: Script, evalsha: RedisCommand, timeout: Duration, _ completion: ScriptCompletion
    ) {
        let deadline = ContinuousClock.now + timeout
        // Captures the node, not its connection and server: fewer references to copy per command.
        connection.send(evalsha, timeout: timeout) { [self] result in
            guard case .success(.error(let message)) = result, message.hasPrefix("NOSCRIPT") else {
                return completion(result)
            }
            let left = deadline - .now
            guard left > .zero else {
                return completion(
                    .failure(
                        RedisConnectionError(
                            .timeout, server: self.server.description,
                            message: "no time left for EVAL after NOSCRIPT (timeout \(timeout))",
                            outcomeUnknown: false)))
            }
            let eval = Self.command("EVAL", script.source, evalsha.droppingFirst(2))
            self.connection.send(eval, timeout: left) { completion($0) }
        }
    }

    /// `name script <tail>` in one RESP buffer, one allocation.
    private static func command(_ name: String, _ script: String, _ tail: RedisCommand) -> RedisCommand {
        var command = RedisCommand(reservingBytes: name.utf8.count + script.utf8.count + tail.byteCount)
        command.append(name)
        command.append(script)
        command.append(contentsOf: tail)
        return command
    }

    /// Who gets a script's reply: as it came, or as the ``NodeResult`` it means (mapped in the
    /// reply's one closure, with no closure of its own per command).
    private enum ScriptCompletion: Sendable {
        case reply(@Sendable (Result<RedisReply, RedisConnectionError>) -> Void)
        case nodeResult(@Sendable (NodeResult) -> Void)

        func callAsFunction(_ result: Result<RedisReply, RedisConnectionError>) {
            switch self {
            case .reply(let completion): completion(result)
            case .nodeResult(let completion): completion(RedisNode.scriptResult(result))
            }
        }
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

/// Holds the connection-state handler, which is set after the connection (and its observer) exist,
/// and why the state last changed.
private final class HandlerSlot: Sendable {
    private let handler = Locked<(@Sendable (Bool) -> Void)?>(nil)
    private let lastDetail = Locked<String?>(nil)

    var detail: String? { lastDetail.withLock { $0 } }

    func set(_ newHandler: @escaping @Sendable (Bool) -> Void) {
        handler.withLock { $0 = newHandler }
    }

    /// Records why the state changed, then tells the handler (which may read ``detail``).
    func call(_ state: RedisConnectionState) {
        switch state {
        case .connected: lastDetail.withLock { $0 = "connected (handshake done)" }
        case .disconnected(let error): lastDetail.withLock { $0 = "\(error.kind.rawValue): \(error.message)" }
        }
        handler.withLock { $0 }?(state == .connected)
    }
}

extension NodeFailure {
    /// Maps a connection's failure onto a node failure, keeping its message.
    init(_ error: RedisConnectionError) {
        let kind: Kind =
            switch error.kind {
            case .timeout: .timeout
            case .connectionLost, .replyTooLarge: .connectionLost  // the command ran
            case .closed: .closed
            default: .unreachable
            }
        self.init(kind, "\(error.kind.rawValue): \(error.message)")
    }
}
