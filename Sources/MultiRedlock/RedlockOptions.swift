import Logging
import Metrics
import Tracing

/// How a ``Redlock`` locks: identity, clock drift, retries and timeouts. Every default is stated
/// in its property's comment and set here, in one place.
public struct RedlockOptions: Sendable {
    /// Identifies this client in lock values (`<id>_<ms since epoch>_<32 hex>`). The default is the
    /// machine's host name.
    public var id: String

    /// The fixed part of the clock-drift allowance subtracted from every validity. The default is
    /// 100 ms. Zero to 100 years.
    public var drift: Duration

    /// The part of the drift allowance proportional to the ttl. The default is 0.01, so a 10 s lock
    /// loses 100 ms + 100 ms of validity to drift.
    public var driftFactor: Double

    /// How many times `lock` retries after a failed attempt; 0 means one attempt only. The default
    /// is 3, so four attempts in all. At most ``maximumRetries`` (1,000,000); to keep
    /// trying until some time has passed, use ``Redlock/lock(_:ttl:waitingUpTo:)``.
    public var retries: Int

    /// The longest wait between attempts; each wait is random in `0...retryWait` so that competing
    /// clients do not retry in lock step. The default is 100 ms. Zero to 100 years.
    public var retryWait: Duration

    /// How long one node may take to answer one command before it counts as failed (and its
    /// connection is replaced). A hung node delays a decision by at most this much. The default is
    /// 100 ms; keep it small against the ttl. At least 1 ms, at most 100 years.
    public var nodeTimeout: Duration

    /// Connect timeout and reconnect backoff of each node's connection. The defaults are
    /// ``RedisConnectionOptions``'s (1 s to connect, reconnect after 25 ms doubling up to 2 s). Each of
    /// its four durations must be positive and at most 100 years.
    public var connection: RedisConnectionOptions

    /// The longest time ``Redlock/withLock(_:ttl:_:)-(String,_,_)`` keeps renewing one lock. Past it, the lock is
    /// left to expire and the body is cancelled, so a stuck holder cannot keep a resource forever.
    /// The default is 10 minutes. Positive, at most 100 years.
    public var maxHold: Duration

    /// Issue a fencing token with every lock (``Lock/fencingToken``): a number that strictly increases
    /// with each grant of a resource, for the storage the lock protects to check. Single-resource
    /// locks only. The default is false.
    ///
    /// Each grant reads the counters of the quorum that granted it, takes the maximum + 1, and writes
    /// it back to a quorum before the lock is returned; majorities intersect, so the next grant
    /// reads it. Costs one more round trip per lock and keeps a counter key per resource on each
    /// node (``Lock/fencingKey(for:)``, in a namespace no lock key can take).
    ///
    /// > Important: the order holds only while no node of a write-back quorum loses its counter.
    /// > The write-back may reach exactly a quorum; if one of those nodes then restarts without its
    /// > data, the next grant's quorum may miss the highest counter and repeat a token. Run the nodes
    /// > with `appendfsync always` when you rely on fencing tokens.
    public var fencingTokens: Bool

    /// How long a node's grants do not count after it was seen to restart (a new `run_id`: a new
    /// process that may have lost the locks it held). The default is
    /// ``RestartQuarantine/longestTTL``.
    public var restartQuarantine: RestartQuarantine

    /// Logs each attempt at `debug` level when true; at `trace` level when false (the default). The
    /// library never changes the logger's level. To act on each attempt, use ``onAttempt``.
    public var debug: Bool

    /// Where the library logs. The default is a logger labelled `multiredlock`.
    public var logger: Logger

    /// Where the metrics go (names in the Operating it article). The default, nil, is the backend
    /// the application bootstrapped (`MetricsSystem.factory`; none records anything).
    public var metricsFactory: (any MetricsFactory)?

    /// Where the spans of `lock`, `renew` and release go (`multiredlock.lock`, `multiredlock.renew`,
    /// `multiredlock.release`). The default, nil, is the tracer the application bootstrapped
    /// (`InstrumentationSystem.tracer`; a no-op one unless it bootstrapped another).
    public var tracer: (any Tracer)?

    /// Called once for each acquire attempt when it is decided (granted or failed), with its
    /// resource, number, time and outcome: for progress lines and diagnostics that must not depend
    /// on log text. It runs on the task that locks, before the next attempt's wait: keep it short
    /// and do not block. The default, nil, reports nothing (and costs nothing).
    public var onAttempt: (@Sendable (AcquireAttempt) -> Void)?

    /// The library's fixed timings and bounds, named in one place (`Tuning`). Not public: the
    /// defaults always; tests shorten or lengthen some of them.
    var tuning = Tuning()

    /// Options with the defaults stated on each property; any can be given.
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
        restartQuarantine: RestartQuarantine = .longestTTL,
        debug: Bool = false,
        logger: Logger = Logger(label: "multiredlock"),
        metricsFactory: (any MetricsFactory)? = nil,
        tracer: (any Tracer)? = nil
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
        self.restartQuarantine = restartQuarantine
        self.debug = debug
        self.logger = logger
        self.metricsFactory = metricsFactory
        self.tracer = tracer
    }

    /// The validity lost to clock drift for a lock of `ttl`: `drift + driftFactor × ttl`.
    public func driftAllowance(for ttl: Duration) -> Duration {
        drift + ttl * driftFactor
    }

    /// The most retries ``retries`` and ``Redlock/setRetry(_:retryWait:)`` accept: 1,000,000. Larger
    /// counts are refused with ``RedlockError/Kind/invalidArgument`` (they could only mean "retry
    /// until some time has passed": use ``Redlock/lock(_:ttl:waitingUpTo:)`` for that).
    public static let maximumRetries = 1_000_000

    /// The longest duration any option (and any ttl) accepts: 100 years (365-day years). Longer ones
    /// are refused with ``RedlockError/Kind/invalidArgument``, so no deadline arithmetic can overflow.
    public static let longestDuration: Duration = .seconds(100 * 365 * 24 * 3600)

    /// Checks the options themselves; ``Redlock`` refuses to lock with invalid ones. Every count and
    /// duration is bounded on both sides (see ``maximumRetries`` and ``longestDuration``).
    func validate() throws(RedlockError) {
        func invalid(_ message: String) -> RedlockError { RedlockError(.invalidArgument, message: message) }
        /// A duration in `0...longestDuration` (or `> 0` when `positive`).
        func check(_ value: Duration, _ name: String, positive: Bool) throws(RedlockError) {
            if positive && value <= .zero { throw invalid("\(name) must be positive (got \(value))") }
            if value < .zero { throw invalid("\(name) must not be negative (got \(value))") }
            if value > Self.longestDuration {
                throw invalid("\(name) must be at most 100 years (got \(value))")
            }
        }
        if id.isEmpty { throw invalid("options.id must not be empty") }
        try check(drift, "options.drift", positive: false)
        if !(driftFactor >= 0 && driftFactor < 1) {
            throw invalid("options.driftFactor must be in 0..<1 (got \(driftFactor))")
        }
        try Self.checkRetries(retries)
        try check(retryWait, "retryWait", positive: false)
        try check(maxHold, "options.maxHold", positive: true)
        try check(nodeTimeout, "options.nodeTimeout", positive: true)
        if nodeTimeout < .milliseconds(1) {
            throw invalid(
                "options.nodeTimeout must be at least 1 ms (got \(nodeTimeout)): no reply comes sooner")
        }
        try check(connection.connectTimeout, "options.connection.connectTimeout", positive: true)
        try check(connection.commandTimeout, "options.connection.commandTimeout", positive: true)
        try check(
            connection.reconnectInitialDelay, "options.connection.reconnectInitialDelay", positive: true)
        try check(connection.reconnectMaxDelay, "options.connection.reconnectMaxDelay", positive: true)
        if case .fixed(let duration) = restartQuarantine {
            try check(duration, "options.restartQuarantine", positive: false)
        }
    }

    /// `retries` in `0...maximumRetries`.
    static func checkRetries(_ retries: Int) throws(RedlockError) {
        guard retries >= 0 else {
            throw RedlockError(.invalidArgument, message: "retries must not be negative (got \(retries))")
        }
        guard retries <= maximumRetries else {
            throw RedlockError(
                .invalidArgument,
                message:
                    "retries must be at most \(maximumRetries) (got \(retries)); to keep trying for a while, "
                    + "use lock(_:ttl:waitingUpTo:)")
        }
    }
}

extension RedlockOptions {
    /// The timings and bounds the library keeps fixed, each named and documented here. Not public
    /// (the defaults hold for every user); tests change some of them.
    struct Tuning: Sendable {
        /// How long ``Redlock/unlock(_:value:)`` retries a release that failed on a node, at least:
        /// it does not know the value's ttl, so it retries for the longest ttl this client has used,
        /// and never less than this. 60 s.
        var unlockRetryFloor: Duration = .seconds(60)

        /// The wait before the first background retry of a release that failed on a node, and the
        /// longest it doubles up to: 50 ms and 2 s. A node that reconnects gets its retries at once.
        var releaseRetryDelay: (first: Duration, longest: Duration) = (.milliseconds(50), .seconds(2))

        /// The most failed releases one node keeps for retrying; past it the one that expires first is
        /// dropped (its keys expire on their own). Bounds the memory and work of a node that stays
        /// down. 1024.
        var maxPendingReleasesPerNode = 1024

        /// ``Redlock/withLock(_:ttl:_:)-(String,_,_)`` renews when this part of the validity is left:
        /// two thirds (it renews a third of the way through), leaving two thirds for retries.
        var renewLeaving: (numerator: Int, denominator: Int) = (2, 3)

        /// The pause between two renew tries of ``Redlock/withLock(_:ttl:_:)-(String,_,_)`` after a
        /// failure: 50 ms, or a quarter of the validity left when that is shorter.
        var renewRetryPause: Duration = .milliseconds(50)

        /// How long ``Redlock/close()`` waits for the attempts and releases under way: an attempt (its
        /// SET round and a fencing write-back) and then its release, each bounded by the node timeout
        /// (so 3 node timeouts), plus 50 ms.
        var closeGraceNodeTimeouts = 3
        /// See ``closeGraceNodeTimeouts``: 50 ms.
        var closeGraceSlack: Duration = .milliseconds(50)

        /// How many events an ``Redlock/events`` stream keeps for a slow reader (the newest): 64.
        static let eventBuffer = 64

        /// ``closeGraceNodeTimeouts`` node timeouts plus ``closeGraceSlack``.
        func closeGrace(nodeTimeout: Duration) -> Duration {
            nodeTimeout * closeGraceNodeTimeouts + closeGraceSlack
        }
    }
}

/// How long a restarted node's grants do not count (``RedlockOptions/restartQuarantine``).
///
/// A Redis server restarted without persistence has lost the locks it held: until they would have
/// expired, its grants could give a second client a lock the first still holds. The Redlock
/// pattern asks operators to delay such restarts by the longest ttl; a client that saw the restart
/// (its connection found a new `run_id`) enforces the delay itself. A client that first connects
/// after the restart cannot know: for that, run the nodes with `appendfsync always`.
public enum RestartQuarantine: Sendable, Hashable {
    /// For the longest ttl this client has used (locks and renewals), from when the restart was
    /// seen. Enough when every client of the resources uses ttls no longer than this one's.
    case longestTTL
    /// For a fixed time from when the restart was seen: set it to the longest ttl any client of the
    /// fleet uses, when some use longer ttls than this one.
    case fixed(Duration)
    /// Never: a restarted node's grants count at once. For nodes that keep their data across
    /// restarts (`appendfsync always`), which lose no lock.
    case off
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
