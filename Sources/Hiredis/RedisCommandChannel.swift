/// What a client of one Redis server needs from its connection: send a command with a deadline and
/// get its reply or a ``RedisConnectionError``; whether the connection is up; the server's identity
/// (`run_id`, and when a restart was seen); close.
///
/// ``RedisConnection`` is the real one. A test double (MultiRedlockTesting's `ScriptedConnection`)
/// conforms too, so that code built on a connection can be unit-tested without a server. Connection
/// up/down is reported to the observer given when the channel is created (as
/// ``RedisConnection/init(server:options:queue:onStateChange:)`` takes it), not through this protocol.
///
/// A conforming type keeps ``RedisConnection``'s contract: each command's completion runs once, by
/// about its deadline at the latest; an error reply (`-ERR …`) is a ``RedisReply/error(_:)``, not a
/// failure; ``RedisConnectionError/outcomeUnknown`` says whether a failed command may have run.
public protocol RedisCommandChannel: AnyObject, Sendable {
    /// The server this channel talks to.
    var server: RedisServer { get }

    /// Whether the connection is up and through its handshake.
    var isConnected: Bool { get }

    /// The server's `run_id` as of the last handshake; nil before the first.
    var serverRunID: String? { get }

    /// When a reconnect last found a different `run_id` than before (the server restarted); nil
    /// when never seen.
    var serverRestartDetectedAt: ContinuousClock.Instant? { get }

    /// Sends a command; `completion` runs once with the reply or the error (it must not block).
    /// - Parameters:
    ///   - timeout: the command's deadline, from now; the channel's default when nil.
    func send(
        _ command: RedisCommand, timeout: Duration?,
        completion: @escaping @Sendable (Result<RedisReply, RedisConnectionError>) -> Void)

    /// Closes the channel: pending and later commands fail with
    /// ``RedisConnectionError/Kind/closed``.
    func close() async
}

extension RedisCommandChannel {
    /// Sends a command and waits for its reply (an error reply is returned, not thrown).
    /// - Throws: ``RedisConnectionError`` when the command failed.
    public func send(_ command: RedisCommand, timeout: Duration? = nil) async throws(RedisConnectionError)
        -> RedisReply
    {
        let result = await withCheckedContinuation { continuation in
            send(command, timeout: timeout) { continuation.resume(returning: $0) }
        }
        return try result.get()
    }
}

extension RedisConnection: RedisCommandChannel {}
