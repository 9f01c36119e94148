/// A lock held on a quorum of nodes.
///
/// > Important: the lock protects the resource only until ``validUntil``. Past it, another client
/// > may hold the same resource: check ``isValid`` (or ``remainingValidity``) before each step that
/// > needs the lock, and renew in good time.
public struct Lock: Sendable, Hashable, CustomStringConvertible {
    /// The locked resource; it is also the Redis key on every node. For a multi-resource lock, a
    /// name for logs and messages only (the names joined with commas): use ``resources``, and
    /// ``Redlock/unlock(_:)-(Lock)`` or ``Redlock/release(_:)``, which work for both kinds.
    public let resource: String
    /// The locked resources: one, or all of a multi-resource lock.
    public let resources: [String]
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
    /// The nodes that granted it (their names), as counted when the quorum was decided.
    public let nodes: [String]
    /// The fencing token, when ``RedlockOptions/fencingTokens`` is on: strictly greater than every
    /// token granted for this resource before. Pass it to the storage the lock protects, and have
    /// that storage refuse writes with a token lower than one it has seen.
    public let fencingToken: Int64?

    public init(
        resource: String, value: String, validity: Duration, ttl: Duration,
        validUntil: ContinuousClock.Instant, attempts: Int, nodes: [String], fencingToken: Int64? = nil
    ) {
        self.init(
            resources: [resource], value: value, validity: validity, ttl: ttl, validUntil: validUntil,
            attempts: attempts, nodes: nodes, fencingToken: fencingToken)
    }

    public init(
        resources: [String], value: String, validity: Duration, ttl: Duration,
        validUntil: ContinuousClock.Instant, attempts: Int, nodes: [String], fencingToken: Int64? = nil
    ) {
        self.resource = Lock.name(of: resources)
        self.resources = resources
        self.fencingToken = fencingToken
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
        let token = fencingToken.map { ", fencing token: \($0)" } ?? ""
        return
            "Lock(resource: \(resource), value: \(value), validity: \(validity.wholeMilliseconds) ms\(token))"
    }

    /// The name of one resource, or of several joined with commas.
    static func name(of resources: [String]) -> String {
        resources.count == 1 ? resources[0] : resources.joined(separator: ",")
    }

    /// The key holding a resource's fencing counter on each node: `multiredlock:fence:<resource>`.
    /// Resource names in that namespace are refused, so no lock key can take a counter's key.
    public static func fencingKey(for resource: String) -> String {
        fencingKeyPrefix + resource
    }

    /// The namespace of the fencing counters' keys; no resource name may start with it.
    public static let fencingKeyPrefix = "multiredlock:fence:"
}
