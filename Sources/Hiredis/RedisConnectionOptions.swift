/// How a ``RedisConnection`` connects, times out and reconnects.
public struct RedisConnectionOptions: Sendable, Hashable {
    /// How long connecting plus the AUTH/SELECT/PING handshake may take. The default is 1 s.
    ///
    /// hiredis 0.14.1 has no timeouts of its own, and connecting to a hung (SIGSTOPped) server
    /// succeeds: only the PING after connecting finds out, so the handshake shares this deadline.
    public var connectTimeout: Duration = .seconds(1)

    /// How long a command may wait for its reply when the caller gives no timeout. The default is 1 s.
    ///
    /// When a deadline passes, every pending command fails with a timeout and the connection is
    /// dropped and replaced: hiredis matches replies first in, first out and cannot cancel one
    /// command, so a late reply must never meet a later command.
    public var commandTimeout: Duration = .seconds(1)

    /// The first delay before reconnecting after a failed connect. The default is 25 ms.
    /// Each further failure doubles it, up to ``reconnectMaxDelay``; each delay is jittered to a
    /// random value between half and all of it. A successful handshake starts over.
    public var reconnectInitialDelay: Duration = .milliseconds(25)

    /// The longest delay between reconnect attempts. The default is 2 s.
    public var reconnectMaxDelay: Duration = .seconds(2)

    /// Options with the defaults; any can be given.
    public init(
        connectTimeout: Duration = .seconds(1),
        commandTimeout: Duration = .seconds(1),
        reconnectInitialDelay: Duration = .milliseconds(25),
        reconnectMaxDelay: Duration = .seconds(2)
    ) {
        self.connectTimeout = connectTimeout
        self.commandTimeout = commandTimeout
        self.reconnectInitialDelay = reconnectInitialDelay
        self.reconnectMaxDelay = reconnectMaxDelay
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
