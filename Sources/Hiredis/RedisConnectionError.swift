/// Why a command or a connection failed. It never contains a password.
public struct RedisConnectionError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What kind of failure this is.
    public enum Kind: String, Sendable, Hashable {
        /// The server address is malformed (port out of range, empty host, …).
        case invalidAddress
        /// The TCP or unix-socket connect failed (refused, unreachable, name not resolved).
        case connectFailed
        /// Connecting, or the AUTH/SELECT/PING handshake after it, took longer than the connect timeout.
        case connectTimeout
        /// The server rejected the credentials.
        case authenticationFailed
        /// The server refused a handshake step other than AUTH (SELECT of a missing database, …).
        case handshakeFailed
        /// The command's deadline passed before its reply. The command may or may not have run.
        case timeout
        /// The connection broke while the command was pending. The command may or may not have run.
        case connectionLost
        /// The connection is down (or not up yet): the command was not sent.
        case notConnected
        /// The connection was closed on purpose.
        case closed
        /// The command itself is unusable (no arguments).
        case invalidCommand
        /// The command would break the one-reply-per-command matching this connection relies on:
        /// SUBSCRIBE, PSUBSCRIBE, SSUBSCRIBE, the UNSUBSCRIBE family, MONITOR, `CLIENT REPLY`. Refused
        /// before anything is sent. Use a connection (or client library) made for pub/sub.
        case unsupportedCommand
        /// A reply grew past ``RedisConnectionOptions/maxReplyBytes``: the connection was dropped and
        /// is being replaced. The command ran (it is counted as outcome unknown).
        case replyTooLarge
        /// This process is a child made by `fork()` without `exec`: the connection (and the socket
        /// watcher thread it needs) belong to the parent. Nothing was sent. Create connections after
        /// `exec`, or in the parent.
        case forkedProcess
    }

    /// What kind of failure this is.
    public var kind: Kind
    /// The server, as its password-masked description.
    public var server: String
    /// What happened, in words.
    public var message: String

    /// Whether the command may have been executed by the server although no reply came back: it
    /// was sent, and then timed out, lost its connection, or was failed by `close()`. A lock client
    /// must then assume it ran. False when the command was never sent.
    public var outcomeUnknown: Bool

    /// An error; `outcomeUnknown` defaults to true for timeouts, lost connections and replies too large.
    public init(_ kind: Kind, server: String, message: String, outcomeUnknown: Bool? = nil) {
        self.kind = kind
        self.server = server
        self.message = message
        self.outcomeUnknown =
            outcomeUnknown ?? (kind == .timeout || kind == .connectionLost || kind == .replyTooLarge)
    }

    public var description: String {
        "\(server): \(kind.rawValue): \(message)"
    }
}
