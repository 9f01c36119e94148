import CHiredis
import Dispatch
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// One connection to one Redis server: a hiredis async context driven by Dispatch.
///
/// Commands may be sent from any thread or task; many can be in flight at once (pipelining), and
/// their replies come back in order. Every command has a deadline: when one passes, all pending
/// commands fail with a ``RedisConnectionError/Kind/timeout`` and the connection is replaced.
/// The connection reconnects by itself, with capped exponential backoff and jitter, runs AUTH and
/// SELECT on every (re)connect, and reports its state to the observer given at creation.
///
/// While the connection is being established, commands wait for it (up to their deadline); while
/// it is down between reconnect attempts, they fail at once with
/// ``RedisConnectionError/Kind/notConnected``: a lock client must not wait on a dead server.
///
/// Close the connection with ``close()`` when done. Dropping the last reference closes it too.
///
/// > Note: hiredis 0.14.1 writes with `write(2)`, which raises SIGPIPE on a closed socket. The first
/// > connection created sets SIGPIPE to ignored, unless the process already installed a handler.
///
/// > Note: while connected, a connection holds one file descriptor, hiredis's socket, close-on-exec:
/// > a process the application spawns does not inherit it. All connections share one more, the
/// > socket watcher's epoll instance, and its thread.
public final class RedisConnection: Sendable {
    /// The server this connection talks to.
    public let server: RedisServer
    /// The options it was created with.
    public let options: RedisConnectionOptions
    private let core: ConnectionCore

    /// Creates a connection and starts connecting at once, without blocking the caller.
    ///
    /// - Parameters:
    ///   - server: the server's address; it is validated first.
    ///   - options: timeouts and reconnect backoff.
    ///   - queue: the serial queue the connection runs on, its hiredis callbacks and completions
    ///     included. Connections may share one: a `Redlock` gives all its nodes one queue, so that a
    ///     fan-out to N servers is one hop and their replies are handled on one thread. The default
    ///     is a queue of the connection's own.
    ///   - onStateChange: called on the connection's own serial queue each time the state changes
    ///     (connected, or disconnected with the reason). It must not block.
    /// - Throws: ``RedisConnectionError`` of kind ``RedisConnectionError/Kind/invalidAddress`` when
    ///   the address is malformed.
    public init(
        server: RedisServer,
        options: RedisConnectionOptions = .init(),
        queue: DispatchQueue? = nil,
        onStateChange: (@Sendable (RedisConnectionState) -> Void)? = nil
    ) throws(RedisConnectionError) {
        do {
            try server.validate()
        } catch {
            throw RedisConnectionError(.invalidAddress, server: server.description, message: error.reason)
        }
        ignoreSIGPIPE()
        self.server = server
        self.options = options
        core = ConnectionCore(server: server, options: options, queue: queue, observer: onStateChange)
        core.start()
    }

    deinit {
        core.close(then: nil)
    }

    /// Whether the connection is up and through its handshake.
    public var isConnected: Bool { core.isConnected }

    /// The server's `run_id` (from `INFO server`) as of the last handshake; nil before the first.
    public var serverRunID: String? { core.serverIdentity.withLock { $0.runID } }

    /// When a reconnect last found a different `run_id` than the connection before it: the server
    /// process restarted, and whatever it held in memory may be gone. Nil when never seen.
    public var serverRestartDetectedAt: ContinuousClock.Instant? {
        core.serverIdentity.withLock { $0.restartDetectedAt }
    }

    /// Sends a command and waits for its reply.
    ///
    /// An error reply from the server (`-ERR …`) is returned as ``RedisReply/error(_:)``, not
    /// thrown: only the connection's failures are thrown.
    /// - Parameters:
    ///   - command: the command and its arguments.
    ///   - timeout: how long to wait for the reply; ``RedisConnectionOptions/commandTimeout`` when nil.
    /// - Throws: ``RedisConnectionError``; check ``RedisConnectionError/outcomeUnknown`` to know
    ///   whether the command may have run anyway.
    public func send(_ command: RedisCommand, timeout: Duration? = nil) async throws(RedisConnectionError)
        -> RedisReply
    {
        let result = await withCheckedContinuation { continuation in
            core.submit(command, timeout: timeout ?? options.commandTimeout) { result in
                continuation.resume(returning: result)
            }
        }
        return try result.get()
    }

    /// Sends a command; `completion` runs once with the reply or the error, on the connection's
    /// serial queue (it must not block).
    public func send(
        _ command: RedisCommand,
        timeout: Duration? = nil,
        completion: @escaping @Sendable (Result<RedisReply, RedisConnectionError>) -> Void
    ) {
        core.submit(command, timeout: timeout ?? options.commandTimeout, completion: completion)
    }

    /// Closes the connection: every pending command fails with a
    /// ``RedisConnectionError/Kind/closed`` error, the context is freed, and no socket watch or file
    /// descriptor is left behind once this returns. Later commands fail with the same error.
    public func close() async {
        await withCheckedContinuation { continuation in
            core.close { continuation.resume() }
        }
    }

    /// Closes the connection; `completion` runs once everything is freed.
    public func close(completion: @escaping @Sendable () -> Void) {
        core.close(then: completion)
    }
}

private let sigpipeIgnored: Bool = {
    var current = sigaction()
    guard sigaction(SIGPIPE, nil, &current) == 0 else { return false }
    #if canImport(Glibc)
        let handler = unsafeBitCast(current.__sigaction_handler.sa_handler, to: Int.self)
    #else
        let handler = unsafeBitCast(current.__sigaction_u.__sa_handler, to: Int.self)
    #endif
    // Only when nobody installed a handler (SIG_DFL is 0): never override the application's choice.
    guard handler == 0 else { return false }
    _ = signal(SIGPIPE, SIG_IGN)
    return true
}()

private func ignoreSIGPIPE() {
    _ = sigpipeIgnored
}
