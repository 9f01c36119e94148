/// What one independent Redis master must do for Redlock. ``RedisNode`` is the real one;
/// `MultiRedlockTesting` ships an in-memory node for unit tests.
///
/// Each operation reports exactly once through its completion, from any thread, and must report
/// within `timeout` (a hung node must answer ``NodeResult/failed(_:)`` when it passes).
public protocol RedlockNode: Sendable {
    /// The node's name in logs and error evidence, e.g. `127.0.0.1:6379`. Never contains a password.
    var name: String { get }
    /// Whether the node is connected now.
    var isConnected: Bool { get }
    /// Acquire: on this node, sets every key to `value` with `ttl` (`SET key value NX PX ttl` for
    /// one key), or none of them. ``NodeResult/succeeded`` when set, ``NodeResult/refused`` when any
    /// key exists.
    func acquire(
        keys: [String], value: String, ttl: Duration, timeout: Duration,
        completion: @escaping @Sendable (NodeResult) -> Void)
    /// Compare-and-pexpire: sets the keys' ttl only when every one of them holds `value`;
    /// ``NodeResult/refused`` when any does not (expired, released, or another owner's). Never
    /// creates a key.
    func extend(
        keys: [String], value: String, ttl: Duration, timeout: Duration,
        completion: @escaping @Sendable (NodeResult) -> Void)
    /// Compare-and-delete: deletes each key that holds `value`; ``NodeResult/succeeded`` when any
    /// did, ``NodeResult/refused`` otherwise.
    func release(
        keys: [String], value: String, timeout: Duration,
        completion: @escaping @Sendable (NodeResult) -> Void)
    /// Registers the one handler told each time the connection goes up (true) or down (false).
    /// ``Redlock`` calls this once, when it is created.
    func observeConnection(_ handler: @escaping @Sendable (Bool) -> Void)
    /// The identity of the server process behind the node (Redis's `run_id`) as of its last
    /// connection, or nil when unknown. ``Redlock`` counts two nodes that report the same identity as
    /// one server: only the first of them votes. The default is nil.
    var serverID: String? { get }
    /// How long ago the node last saw its server restart (a new `run_id` on a reconnect: a new
    /// process, which may have lost the locks it held), or nil when it never did. ``Redlock`` does
    /// not count a restarted node's grants for a while (see ``RedlockOptions/restartQuarantine``).
    /// The default is nil.
    var timeSinceRestart: Duration? { get }
    /// Why the node's connection last changed state, in words (e.g. the connect error), for the log
    /// line ``Redlock`` writes at each change; nil when the node does not say. Never contains a
    /// password. The default is nil.
    var connectionDetail: String? { get }
    /// Closes the node's connection.
    func close() async
}

extension RedlockNode {
    public var serverID: String? { nil }

    public var timeSinceRestart: Duration? { nil }

    public var connectionDetail: String? { nil }
}

/// A node that can issue fencing tokens (``RedlockOptions/fencingTokens``). ``RedisNode`` and
/// `MultiRedlockTesting`'s in-memory node are; with fencing on, ``Redlock`` counts a node that is
/// not as failed (an error reply saying so).
public protocol FencingRedlockNode: RedlockNode {
    /// Fenced acquire: `SET key value NX PX ttl`, answering with the node's fencing counter for the
    /// resource (kept under `counterKey`) when granted.
    func acquireFenced(
        key: String, counterKey: String, value: String, ttl: Duration, timeout: Duration,
        completion: @escaping @Sendable (NodeResult, Int64) -> Void)
    /// Fencing write-back: raises the counter under `counterKey` to `token` (never lowers it), only
    /// while `key` holds `value`; ``NodeResult/refused`` when it does not.
    func raiseFence(
        key: String, counterKey: String, value: String, token: Int64, timeout: Duration,
        completion: @escaping @Sendable (NodeResult) -> Void)
}

/// One node's answer to one operation.
public enum NodeResult: Sendable, Hashable {
    /// Acquired, extended or released.
    case succeeded
    /// The key is held by another value (acquire), or not held by this value (extend, release).
    case refused
    /// No usable answer: an error reply, a timeout, no connection.
    case failed(NodeFailure)
}

/// Why a node gave no usable answer.
public struct NodeFailure: Error, Sendable, Hashable, CustomStringConvertible {
    /// The kinds of failure.
    ///
    /// A struct with static members, not an enum: a later release can add a kind without breaking
    /// your code. Compare with `==` or match in a `switch`, which then needs a `default`.
    public struct Kind: Sendable, Hashable, CustomStringConvertible {
        /// The kind's name, as in logs and metrics (`timeout`).
        public let rawValue: String

        private init(_ rawValue: String) {
            self.rawValue = rawValue
        }

        public var description: String { rawValue }

        /// The server answered with an error (OOM, READONLY, NOAUTH, BUSY, …).
        public static let errorReply = Kind("errorReply")
        /// No answer within the node timeout; the command may have run.
        public static let timeout = Kind("timeout")
        /// The connection broke while the command was pending; it may have run.
        public static let connectionLost = Kind("connectionLost")
        /// Not connected: the command was not sent.
        public static let unreachable = Kind("unreachable")
        /// The node was closed.
        public static let closed = Kind("closed")
        /// The server restarted (its `run_id` changed) within the restart quarantine (see
        /// ``RedlockOptions/restartQuarantine``): it may have lost locks it held, so its grants do
        /// not count yet. The key was set.
        public static let restarted = Kind("restarted")
        /// The node is the same server as an earlier node in the list (the same `run_id`, reached
        /// under another address): it does not vote, so one server never counts twice.
        public static let duplicate = Kind("duplicate")
    }

    /// The kind of failure.
    public var kind: Kind
    /// The server's error text, or what went wrong.
    public var message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    /// Whether the command may have run although it failed: then the key may be set.
    public var outcomeUnknown: Bool { kind == .timeout || kind == .connectionLost || kind == .restarted }

    public var description: String { "\(kind.rawValue): \(message)" }
}
