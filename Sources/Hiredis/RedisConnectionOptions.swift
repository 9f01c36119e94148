/// How a ``RedisConnection`` connects, times out and reconnects.
public struct RedisConnectionOptions: Sendable, Hashable {
    /// How long connecting plus the AUTH/SELECT/PING handshake may take. The default is 1 s.
    ///
    /// hiredis 0.14.1 has no timeouts of its own, and connecting to a hung (SIGSTOPped) server
    /// succeeds: only the PING after connecting finds out, so the handshake shares this deadline.
    public var connectTimeout: Duration = .seconds(1)

    /// How long a command may wait for its reply when the caller gives no timeout. The default is 1 s.
    ///
    /// A command whose deadline passes before it is sent (it waited on the connection's queue or
    /// for the handshake) fails alone with a timeout, known not to have run. When the deadline of a
    /// command already sent passes, every pending command fails with a timeout and the connection
    /// is dropped and replaced: hiredis matches replies first in, first out and cannot cancel one
    /// command, so a late reply must never meet a later command.
    public var commandTimeout: Duration = .seconds(1)

    /// The first delay before reconnecting after a failed connect. The default is 25 ms.
    /// Each further failure doubles it, up to ``reconnectMaxDelay``; each delay is jittered to a
    /// random value between half and all of it. A connection that stays up for
    /// ``backoffResetAfter``, or answers a command, starts over.
    public var reconnectInitialDelay: Duration = .milliseconds(25)

    /// The longest delay between reconnect attempts. The default is 2 s.
    public var reconnectMaxDelay: Duration = .seconds(2)

    /// How long a connection must have stayed up (through its handshake) for its loss to start the
    /// backoff over, with an immediate reconnect; a connection that answered a command of the
    /// application's counts as working too, however short-lived. Any other lost connection
    /// reconnects at once only when nothing failed since the backoff last started over, and
    /// otherwise backs off like a failed connect, so a server (or proxy) that accepts and then
    /// drops connections is not hammered at round-trip rate. The default is 1 s.
    public var backoffResetAfter: Duration = .seconds(1)

    /// The most bytes one reply may take before the connection gives up on it: the command fails
    /// with ``RedisConnectionError/Kind/replyTooLarge`` and the connection is dropped and replaced.
    /// hiredis buffers a bulk string whole before handing it over, so without a cap a broken or
    /// hostile server could make the client buffer without limit. Counted as the bytes read since
    /// the last complete reply (to within 16 KiB, hiredis's read size), so it bounds arrays too.
    /// The default is 64 MiB.
    public var maxReplyBytes: Int = 64 << 20

    /// Options with the defaults; any can be given.
    public init(
        connectTimeout: Duration = .seconds(1),
        commandTimeout: Duration = .seconds(1),
        reconnectInitialDelay: Duration = .milliseconds(25),
        reconnectMaxDelay: Duration = .seconds(2),
        backoffResetAfter: Duration = .seconds(1),
        maxReplyBytes: Int = 64 << 20
    ) {
        self.connectTimeout = connectTimeout
        self.commandTimeout = commandTimeout
        self.reconnectInitialDelay = reconnectInitialDelay
        self.reconnectMaxDelay = reconnectMaxDelay
        self.backoffResetAfter = backoffResetAfter
        self.maxReplyBytes = maxReplyBytes
    }
}

/// A connection's state, as reported to its observer.
public enum RedisConnectionState: Sendable, Hashable {
    /// Connected and through the handshake: commands are sent at once.
    case connected
    /// Not connected, with the reason. The connection keeps reconnecting until it is closed.
    case disconnected(RedisConnectionError)
}

extension Duration {
    /// The duration in whole nanoseconds, clamped to `UInt64` (a negative duration is 0).
    var nanoseconds: UInt64 {
        let (seconds, attoseconds) = components
        // Both components carry the sign: -1 ms is (0 s, -10^15 as), which must not reach UInt64().
        if seconds < 0 || attoseconds < 0 { return 0 }
        let total = Double(seconds) * 1e9 + Double(attoseconds) / 1e9
        return total >= Double(UInt64.max) ? UInt64.max : UInt64(total)
    }
}
