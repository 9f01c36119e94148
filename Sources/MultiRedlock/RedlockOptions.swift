import Logging

/// How a ``Redlock`` locks: identity, clock drift, retries and timeouts. Every default is stated
/// in its property's comment and set here, in one place.
public struct RedlockOptions: Sendable {
    /// Identifies this client in lock values (`<id>_<ms since epoch>_<32 hex>`). The default is the
    /// machine's host name, as in the seed.
    public var id: String

    /// The fixed part of the clock-drift allowance subtracted from every validity. The default is
    /// 100 ms (the seed's `drift`).
    public var drift: Duration

    /// The part of the drift allowance proportional to the ttl. The default is 0.01, so a 10 s lock
    /// loses 100 ms + 100 ms of validity to drift.
    public var driftFactor: Double

    /// How many times `lock` retries after a failed attempt; 0 means one attempt only. The default
    /// is 3 (the seed's), so four attempts in all.
    public var retries: Int

    /// The longest wait between attempts; each wait is random in `0...retryWait` so that competing
    /// clients do not retry in lock step. The default is 100 ms (the seed's).
    public var retryWait: Duration

    /// How long one node may take to answer one command before it counts as failed (and its
    /// connection is replaced). A hung node delays a decision by at most this much. The default is
    /// 100 ms; keep it small against the ttl.
    public var nodeTimeout: Duration

    /// Connect timeout and reconnect backoff of each node's connection. The defaults are
    /// ``RedisConnectionOptions``'s (1 s to connect, reconnect after 25 ms doubling up to 2 s).
    public var connection: RedisConnectionOptions

    /// The longest time ``Redlock/withLock(_:ttl:_:)-(String,_,_)`` keeps renewing one lock. Past it, the lock is
    /// left to expire and the body is cancelled, so a stuck holder cannot keep a resource forever.
    /// The default is 10 minutes.
    public var maxHold: Duration

    /// Issue a fencing token with every lock (``Lock/fencingToken``): a number that strictly increases
    /// with each grant of a resource, across clients and across a minority of node restarts, for the
    /// storage the lock protects to check. Costs one more round trip per lock, keeps a counter key
    /// `<resource>:fencing-token` on each node, and assumes nodes keep their data across restarts
    /// (`appendfsync always`). Single-resource locks only. The default is false.
    public var fencingTokens: Bool

    /// Logs each attempt at `debug` level when true; at `trace` level when false (the default), as the
    /// seed's `debug` flag did. The library never changes the logger's level.
    public var debug: Bool

    /// Where the library logs. The default is a logger labelled `multiredlock`.
    public var logger: Logger

    /// The wait before the first background retry of a release that failed on a node, and the
    /// longest wait it doubles up to. A node that reconnects gets its retries at once. Not public:
    /// 50 ms … 2 s always; tests lengthen it to tell the reconnect from the timer.
    var releaseRetryDelay: (first: Duration, longest: Duration) = (.milliseconds(50), .seconds(2))

    /// Options with the seed's defaults; any can be given.
    public init(
        id: String? = nil,
        drift: Duration = .milliseconds(100),
        driftFactor: Double = 0.01,
        retries: Int = 3,
        retryWait: Duration = .milliseconds(100),
        nodeTimeout: Duration = .milliseconds(100),
        connection: RedisConnectionOptions = .init(),
        maxHold: Duration = .seconds(600),
        fencingTokens: Bool = false,
        debug: Bool = false,
        logger: Logger = Logger(label: "multiredlock")
    ) {
        self.id = id ?? hostName()
        self.drift = drift
        self.driftFactor = driftFactor
        self.retries = retries
        self.retryWait = retryWait
        self.nodeTimeout = nodeTimeout
        self.connection = connection
        self.maxHold = maxHold
        self.fencingTokens = fencingTokens
        self.debug = debug
        self.logger = logger
    }

    /// The validity lost to clock drift for a lock of `ttl`: `drift + driftFactor × ttl`.
    public func driftAllowance(for ttl: Duration) -> Duration {
        drift + ttl * driftFactor
    }

    /// Checks the options themselves; ``Redlock`` refuses to lock with invalid ones.
    func validate() throws(RedlockError) {
        func invalid(_ message: String) -> RedlockError { RedlockError(.invalidArgument, message: message) }
        if id.isEmpty { throw invalid("options.id must not be empty") }
        if drift < .zero { throw invalid("options.drift must not be negative (got \(drift))") }
        if !(driftFactor >= 0 && driftFactor < 1) {
            throw invalid("options.driftFactor must be in 0..<1 (got \(driftFactor))")
        }
        if retries < 0 { throw invalid("retries must not be negative (got \(retries))") }
        if retryWait < .zero { throw invalid("retryWait must not be negative (got \(retryWait))") }
        if maxHold <= .zero { throw invalid("options.maxHold must be positive (got \(maxHold))") }
        if nodeTimeout <= .zero { throw invalid("options.nodeTimeout must be positive (got \(nodeTimeout))") }
    }
}

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

private func hostName() -> String {
    var buffer = [CChar](repeating: 0, count: 256)
    guard gethostname(&buffer, buffer.count) == 0 else { return "multiredlock" }
    let name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return name.isEmpty ? "multiredlock" : name
}
