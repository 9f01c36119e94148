/// Why a lock, renew or release failed, with the evidence: what each node answered.
///
/// The kinds tell "someone else holds it" (``Kind/taken``) from "Redis is broken"
/// (``Kind/quorumUnavailable``), which peers' users most often ask for.
public struct RedlockError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What kind of failure this is.
    ///
    /// A struct with static members, not an enum: a later release can add a kind without breaking
    /// your code. Compare with `==` or match in a `switch`, which then needs a `default`.
    public struct Kind: Sendable, Hashable, CustomStringConvertible {
        /// The kind's name, as in logs and metrics (`taken`).
        public let rawValue: String

        private init(_ rawValue: String) {
            self.rawValue = rawValue
        }

        public var description: String { rawValue }

        /// Held by someone else: enough nodes hold another value that no quorum was possible.
        public static let taken = Kind("taken")
        /// Not enough nodes answered (unreachable, timed out, error replies) to reach a quorum.
        public static let quorumUnavailable = Kind("quorumUnavailable")
        /// A quorum granted the lock, but the time it took used up the whole validity.
        public static let validityExpired = Kind("validityExpired")
        /// Renew or release of a lock that is not held (expired, released, or never ours).
        public static let notHeld = Kind("notHeld")
        /// Bad input: empty resource, non-positive ttl, ttl not above the drift allowance, bad server list, …
        public static let invalidArgument = Kind("invalidArgument")
        /// The ``Redlock`` was closed.
        public static let closed = Kind("closed")
        /// A lock held by ``Redlock/withLock(_:ttl:_:)-(String,_,_)`` was lost: renewing failed until its validity
        /// ran out, a quorum said it was no longer held, or the maximum hold time was reached.
        public static let lost = Kind("lost")
    }

    /// What kind of failure this is.
    public var kind: Kind
    /// The resource concerned, when there is one.
    public var resource: String?
    /// How many attempts were made (0 when the input was refused before any I/O).
    public var attempts: Int
    /// What each node answered in the last attempt.
    public var nodes: [NodeEvidence]
    /// What happened, in words.
    public var message: String

    public init(
        _ kind: Kind, resource: String? = nil, attempts: Int = 0, nodes: [NodeEvidence] = [],
        message: String
    ) {
        self.kind = kind
        self.resource = resource
        self.attempts = attempts
        self.nodes = nodes
        self.message = message
    }

    public var description: String {
        var text = message
        if let resource { text = "\(resource.debugDescription): " + text }
        if attempts > 0 { text += " (\(attempts) attempt\(attempts == 1 ? "" : "s"))" }
        if !nodes.isEmpty { text += "; nodes: " + nodes.map(\.description).joined(separator: ", ") }
        return text
    }
}

/// What one node answered.
public struct NodeEvidence: Sendable, Hashable, CustomStringConvertible {
    /// A node's answer.
    public enum Outcome: Sendable, Hashable {
        /// Acquired, extended or released.
        case granted
        /// Held by another value, or not held by this one.
        case refused
        /// An error reply, a timeout, or no connection.
        case failed(NodeFailure)
        /// No answer yet when the quorum was decided.
        case pending
    }

    /// The node's name.
    public var node: String
    /// Its answer.
    public var outcome: Outcome

    public init(node: String, outcome: Outcome) {
        self.node = node
        self.outcome = outcome
    }

    public var description: String {
        switch outcome {
        case .granted: "\(node) granted"
        case .refused: "\(node) refused"
        case .failed(let failure): "\(node) failed (\(failure))"
        case .pending: "\(node) no answer yet"
        }
    }
}
