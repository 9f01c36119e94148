/// A lock held on a quorum of nodes.
///
/// > Important: the lock protects the resource only until ``validUntil``. Past it, another client
/// > may hold the same resource: check ``isValid`` (or ``remainingValidity``) before each step that
/// > needs the lock, and renew in good time.
public struct Lock: Sendable, Hashable, CustomStringConvertible {
    /// The locked resource; it is also the Redis key on every node.
    public let resource: String
    /// The lock's unique value, `<id>_<ms since epoch>_<32 hex chars>`: needed to renew or release it.
    public let value: String
    /// How long the lock was valid when it was granted: `ttl − elapsed − drift`.
    public let validity: Duration
    /// The ttl the lock was set (or last renewed) with.
    public let ttl: Duration
    /// When the lock stops being valid, on the monotonic clock.
    public let validUntil: ContinuousClock.Instant
    /// How many attempts it took.
    public let attempts: Int
    /// The nodes that granted it (their names).
    public let nodes: [String]

    public init(
        resource: String, value: String, validity: Duration, ttl: Duration,
        validUntil: ContinuousClock.Instant, attempts: Int, nodes: [String]
    ) {
        self.resource = resource
        self.value = value
        self.validity = validity
        self.ttl = ttl
        self.validUntil = validUntil
        self.attempts = attempts
        self.nodes = nodes
    }

    /// Whether the lock is still valid now.
    public var isValid: Bool { ContinuousClock.now < validUntil }

    /// How much validity is left now (zero once expired).
    public var remainingValidity: Duration { max(.zero, validUntil - ContinuousClock.now) }

    public var description: String {
        "Lock(resource: \(resource), value: \(value), validity: \(validity.wholeMilliseconds) ms)"
    }
}
