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
/// their replies come back in order, one reply per command. Commands that break that (SUBSCRIBE,
/// PSUBSCRIBE, SSUBSCRIBE, the UNSUBSCRIBE family, MONITOR, `CLIENT REPLY`; hiredis's leading-"p"
/// rule included, so "PMONITOR" too) fail with ``RedisConnectionError/Kind/unsupportedCommand``
/// before anything is sent.
///
/// Every command has a deadline. A command whose deadline passes before it is sent (it waited on
/// the connection's queue, or for the handshake) fails alone with a
/// ``RedisConnectionError/Kind/timeout`` whose `outcomeUnknown` is false, and the connection is
/// left alone. When the deadline of a command that *was* sent passes, every command pending on the
/// connection fails with a timeout (outcome unknown) and the connection is dropped and replaced:
/// replies come first in, first out and hiredis cannot skip one, so waiting for the late reply
/// would hold every later command behind it, and a hung (SIGSTOPped) server would hold them
/// forever. This is what lets a lock client's node timeout replace a connection to a hung server.
/// So do not mix a blocking command (BLPOP, WAIT, …) with short-deadline commands on one
/// connection: give it a connection of its own, with a deadline longer than it blocks.
///
/// The connection reconnects by itself, with capped exponential backoff and jitter, runs AUTH and
/// SELECT on every (re)connect, and reports its state to the observer given at creation. A lost
/// connection that had been working (up for ``RedisConnectionOptions/backoffResetAfter``, or it
/// answered a command) reconnects at once and the backoff starts over; one lost before either
/// reconnects at once only the first time, and then backs off as after a failed connect.
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
/// > socket watcher's epoll instance, and its thread. hiredis 0.14.1 creates the socket without
/// > close-on-exec and the connection sets it microseconds later: a fork+exec on another thread in
/// > between inherits it. Spawn with `posix_spawn_file_actions_addclosefrom_np(3)` (glibc ≥ 2.34),
/// > as LocalRedis and `redlock run` do, to close that window too. In a process started with
/// > standard input closed, the socket may be descriptor 0, which hiredis never closes; the
/// > connection closes it itself.
///
/// > Note: after `fork()` without `exec`, the child has this connection but not the threads it runs
/// > on. In the child, every command fails at once with
/// > ``RedisConnectionError/Kind/forkedProcess`` (on the caller's thread), creating a connection
/// > throws it, and `close()` only runs its completion: the parent's connections stay the parent's.
///
/// > Note: a reply may hold at most ``RedisConnectionOptions/maxReplyBytes``. Data from the server
/// > while no command is in flight drops the connection (hiredis 0.14.1, built with assertions as
/// > Debian ships it, would abort the process on it). What this does not catch: a server that sends
/// > more replies than it was sent commands within one read reaches hiredis's assertion and aborts
/// > the process. Talk only to servers you trust, over a network you trust.
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
    ///   the address is malformed, ``RedisConnectionError/Kind/forkedProcess`` in a child made by
    ///   `fork()` of a process that had connections.
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
        if ForkDetector.isForkedChild { throw ForkDetector.error(server: server.description) }
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
