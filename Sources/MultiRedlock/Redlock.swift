import Dispatch
import Logging
import Metrics
import Synchronization

/// The events a ``Redlock`` reports: a quorum of nodes connected, or no longer.
public enum RedlockEvent: Sendable, Hashable {
    /// The connected nodes reached a quorum (N/2+1 of N): locks can be acquired.
    case connect
    /// The connected nodes fell below a quorum: locks cannot be acquired (releasing still works
    /// on the nodes that remain).
    case disconnect
}

/// A distributed lock over N independent Redis masters (the Redlock algorithm).
///
/// ```swift
/// let redlock = try Redlock(servers: [RedisServer(host: "10.0.0.1"), RedisServer(host: "10.0.0.2"),
///                                     RedisServer(host: "10.0.0.3")])
/// let lock = try await redlock.lock("invoice-42", ttl: .seconds(10))
/// defer { redlock.unlock(lock.resource, value: lock.value) }
/// // … work while lock.isValid …
/// ```
///
/// `lock` sends `SET resource value NX PX ttl` to every node at once and holds the lock when N/2+1
/// nodes agreed and validity is left: `validity = ttl − elapsed − (drift + driftFactor × ttl)`,
/// elapsed on the monotonic clock. A failed attempt is released on every node (a timed-out SET may
/// have landed), then retried after a random wait. `renew` and `release` use compare-and-pexpire and
/// compare-and-delete scripts, so another owner's lock is never touched and an expired lock is never
/// re-created.
///
/// `Redlock` is `Sendable`: share one instance; concurrent calls share the N connections.
public final class Redlock: Sendable {
    /// The nodes, in the order given.
    public let nodes: [any RedlockNode]
    /// How many nodes must agree: N/2+1 of the configured N.
    public let quorum: Int

    /// The nodes' names, in the order given.
    let names: [String]
    /// The nodes as fencing nodes, nil for a node that cannot issue fencing tokens.
    let fencingNodes: [(any FencingRedlockNode)?]
    /// The one serial queue all the nodes' connections run on, when this Redlock made them: a
    /// fan-out then costs one hop to it, however many nodes there are.
    let ioQueue: DispatchQueue?
    /// The task executor on `ioQueue` (nil without one): ``taskExecutor``, and where withLock's
    /// renewals run. Looked up once here (the lookup takes a process-wide lock).
    let connectionExecutor: ConnectionQueueExecutor?
    let state: Locked<State>
    /// Acquire attempts and releases under way: ``close()`` waits for them.
    let operationsInFlight = InFlightOperations()
    /// Release retry chains alive: grants skip looking for superseded ones when there are none.
    let retryChains = RetryChain.Count()
    let eventQueue = DispatchQueue(label: "multiredlock.events")
    let metrics: RedlockMetrics

    struct State {
        var options: RedlockOptions
        var nodeUp: [Bool]
        var quorumUp = false
        var closed = false
        var handlers: [RedlockEvent: [@Sendable () -> Void]] = [:]
        /// The callers of ``Redlock/waitUntilConnected(timeout:all:)``, by id: whether each waits for
        /// every node (else a quorum).
        var connectWaiters: [UInt64: ConnectWaiter] = [:]
        var nextConnectWaiter: UInt64 = 0
        /// The streams of ``Redlock/events``, by subscription.
        var subscribers: [UInt64: AsyncStream<RedlockEvent>.Continuation] = [:]
        var nextSubscriber: UInt64 = 0
        /// Per node, by lock value: the failed release retried as soon as the node reconnects or
        /// when its timer fires, whichever comes first. One entry per node and value, at most
        /// ``RedlockOptions/Tuning/maxPendingReleasesPerNode`` per node.
        var releaseRetries: [[String: PendingRelease]]
        var nextRetryID: UInt64 = 0
        /// The longest ttl this client has locked or renewed with (the default restart quarantine,
        /// and how long ``Redlock/unlock(_:value:)`` retries a value it does not know).
        var longestTTL: Duration = .zero
        /// Per node: the earlier node with the same server identity (`run_id`), if any.
        var duplicateOf: [Int?]
        /// Per node: how many times it reported its connection down (a failed connect included).
        var connectFailures: [Int]
    }

    /// A caller of ``Redlock/waitUntilConnected(timeout:all:)``.
    struct ConnectWaiter {
        /// Waits for every node, else for a quorum.
        var all: Bool
        /// ``State/connectFailures`` when the wait began.
        var failuresAtStart: [Int]
        var continuation: CheckedContinuation<Void, Never>
    }

    /// Connects to the given Redis masters (without waiting for them).
    ///
    /// - Parameters:
    ///   - servers: the independent masters. The default is one server on localhost:6379.
    ///   - options: identity, drift, retries, timeouts, logger.
    /// - Throws: ``RedlockError`` of kind ``RedlockError/Kind/invalidArgument`` for an empty or
    ///   duplicated server list, a malformed address, or invalid options.
    public convenience init(
        servers: [RedisServer] = [RedisServer(host: "localhost")],
        options: RedlockOptions = .init()
    ) throws(RedlockError) {
        guard !servers.isEmpty else {
            throw RedlockError(.invalidArgument, message: "the server list is empty")
        }
        var seen = Set<String>()
        for server in servers where !seen.insert(server.endpointKey).inserted {
            throw RedlockError(
                .invalidArgument,
                message:
                    "server \(server) is listed twice; each node must be a distinct master or the quorum is wrong"
            )
        }
        var nodes: [any RedlockNode] = []
        let queue = DispatchQueue(label: "multiredlock.io")
        // Nothing blocks on it: every completion there is the nodes' own.
        RedisConnection.handleEventsOnWatcherThread(of: queue)
        for server in servers {
            do {
                nodes.append(try RedisNode(server: server, options: options.connection, queue: queue))
            } catch {
                for node in nodes { Task { await node.close() } }
                throw RedlockError(.invalidArgument, message: error.message)
            }
        }
        try self.init(nodes: nodes, options: options, ioQueue: queue)
    }

    /// A Redlock over nodes of your own, such as `MultiRedlockTesting`'s in-memory nodes.
    /// - Throws: ``RedlockError`` of kind ``RedlockError/Kind/invalidArgument`` for an empty node
    ///   list, duplicate names, or invalid options.
    public convenience init(nodes: [any RedlockNode], options: RedlockOptions = .init()) throws(RedlockError)
    {
        try self.init(nodes: nodes, options: options, ioQueue: nil)
    }

    private init(nodes: [any RedlockNode], options: RedlockOptions, ioQueue: DispatchQueue?)
        throws(RedlockError)
    {
        guard !nodes.isEmpty else {
            throw RedlockError(.invalidArgument, message: "the node list is empty")
        }
        try options.validate()
        let names = nodes.map(\.name)
        guard Set(names).count == names.count else {
            throw RedlockError(.invalidArgument, message: "two nodes have the same name: \(names)")
        }
        self.nodes = nodes
        self.names = names
        fencingNodes = nodes.map { $0 as? any FencingRedlockNode }
        self.ioQueue = ioQueue
        connectionExecutor = ioQueue.map { ConnectionQueueExecutor.of($0) }
        quorum = nodes.count / 2 + 1
        state = Locked(
            State(
                options: options, nodeUp: Array(repeating: false, count: nodes.count),
                releaseRetries: Array(repeating: [:], count: nodes.count),
                duplicateOf: Array(repeating: nil, count: nodes.count),
                connectFailures: Array(repeating: 0, count: nodes.count)))
        metrics = RedlockMetrics(factory: options.metricsFactory ?? MetricsSystem.factory)
        metrics.connectedNodes.record(0)
        for (index, node) in nodes.enumerated() {
            node.observeConnection { [weak self] up in self?.node(index, isUp: up) }
        }
    }

    /// The executor of this Redlock's connections, for a task that takes locks often and wants them
    /// fast: run it with `withTaskExecutorPreference(redlock.taskExecutor) { … }` (or
    /// `Task(executorPreference: redlock.taskExecutor)`), and a reply resumes it on the thread that
    /// read the reply, with no thread woken to run it, and the commands it sends next leave in the
    /// same pass. In `make bench` (2 cores, 3 local servers) that took a sequential lock-and-release
    /// cycle from about 200 to about 150 µs.
    ///
    /// Code on it runs on the connections' one serial queue: while it runs, no connection of this
    /// Redlock reads, writes or times out. Use it for the lock calls and short work between them;
    /// never block on it (no `sleep`, no waiting on a semaphore or a lock held elsewhere); awaiting is
    /// fine. A Redlock over nodes of your own has no such queue: this is then the global concurrent
    /// executor.
    ///
    /// ```swift
    /// await withTaskExecutorPreference(redlock.taskExecutor) {
    ///     for invoice in batch {
    ///         try await redlock.withLock("invoice-\(invoice.id)", ttl: .seconds(5)) { _ in
    ///             try await settle(invoice)
    ///         }
    ///     }
    /// }
    /// ```
    public var taskExecutor: any TaskExecutor {
        connectionExecutor ?? globalConcurrentExecutor
    }

    // MARK: Configuration and events

    /// The options in force (``setRetry(_:retryWait:)`` changes two of them).
    public var options: RedlockOptions { state.withLock { $0.options } }

    /// Sets how often `lock` retries and the longest random wait between attempts. `retries` 0 disables retrying.
    /// - Throws: ``RedlockError/Kind/invalidArgument`` for a negative count or wait, more than
    ///   ``RedlockOptions/maximumRetries`` (1,000,000) retries, or a wait over 100 years.
    public func setRetry(_ retries: Int, retryWait: Duration) throws(RedlockError) {
        var changed = options
        changed.retries = retries
        changed.retryWait = retryWait
        try changed.validate()
        state.withLock {
            $0.options.retries = retries
            $0.options.retryWait = retryWait
        }
    }

    /// Whether at least a quorum of nodes is connected.
    public var isConnected: Bool { state.withLock { $0.quorumUp } }

    /// Calls `handler` each time `event` happens, on one serial queue of this Redlock's, in order.
    ///
    /// `.connect` fires when the connected nodes reach a quorum and `.disconnect` when they fall
    /// below it, each on the transition only. A `.connect` handler registered while a quorum is
    /// already connected is called once at once, so registering just after creation never misses it.
    public func on(_ event: RedlockEvent, _ handler: @escaping @Sendable () -> Void) {
        state.withLock { state in
            state.handlers[event, default: []].append(handler)
            if event == .connect && state.quorumUp {
                eventQueue.async { handler() }
            }
        }
    }

    /// The events as an `AsyncStream`, a new one for each access: `.connect` at once when a quorum
    /// is connected already, then `.connect` and `.disconnect` at each transition, in order (as
    /// ``on(_:_:)`` reports them). The stream finishes when the Redlock is closed; stopping the
    /// iteration ends the subscription. It keeps the newest 64 events a slow reader has not taken.
    ///
    /// ```swift
    /// for await event in redlock.events {
    ///     logger.info("redlock: \(event)")
    /// }
    /// ```
    public var events: AsyncStream<RedlockEvent> {
        let (stream, continuation) = AsyncStream.makeStream(
            of: RedlockEvent.self, bufferingPolicy: .bufferingNewest(RedlockOptions.Tuning.eventBuffer))
        let id: UInt64? = state.withLock { state in
            guard !state.closed else { return nil }
            state.nextSubscriber &+= 1
            state.subscribers[state.nextSubscriber] = continuation
            if state.quorumUp { continuation.yield(.connect) }
            return state.nextSubscriber
        }
        guard let id else {
            continuation.finish()
            return stream
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.subscribers.removeValue(forKey: id) }
        }
        return stream
    }

    // MARK: Lock

    /// Acquires a lock on `resource` for `ttl`, retrying as configured.
    ///
    /// - Parameters:
    ///   - resource: the resource's name, also the key on every node; any non-empty string.
    ///   - ttl: how long the nodes keep the lock unless it is released or renewed. Must exceed the
    ///     drift allowance (`drift + driftFactor × ttl`).
    /// - Returns: the lock, with its validity (and its fencing token when
    ///   ``RedlockOptions/fencingTokens`` is on).
    /// - Throws: ``RedlockError``: ``RedlockError/Kind/taken`` when someone else holds it after
    ///   every attempt, ``RedlockError/Kind/quorumUnavailable`` when not enough nodes answered,
    ///   ``RedlockError/Kind/validityExpired``, ``RedlockError/Kind/invalidArgument``,
    ///   ``RedlockError/Kind/closed``; `CancellationError` when the task is cancelled (whatever the
    ///   attempt set is released).
    public func lock(_ resource: String, ttl: Duration) async throws -> Lock {
        try await lock([resource], ttl: ttl)
    }

    /// Locks several resources at once: on each node all keys are set or none (one Lua script),
    /// and the quorum counts the nodes that granted all of them. Renew and release cover all keys.
    /// - Throws: as ``lock(_:ttl:)-(String,_)``; ``RedlockError/Kind/invalidArgument`` for an empty list, an
    ///   empty name or a name given twice.
    public func lock(_ resources: [String], ttl: Duration) async throws -> Lock {
        let options = try prepare(resources, ttl: ttl)
        return try await acquire(resources, ttl: ttl, options: options, until: .attempts(options.retries + 1))
    }

    /// Makes one attempt to lock `resource`, without retrying: the lock, or the reason it was not
    /// granted (``RedlockError/Kind/taken`` when someone else holds it).
    /// - Throws: as ``lock(_:ttl:)-(String,_)``.
    public func tryLock(_ resource: String, ttl: Duration) async throws -> Lock {
        let options = try prepare([resource], ttl: ttl)
        return try await acquire([resource], ttl: ttl, options: options, until: .attempts(1))
    }

    /// Acquires a lock on `resource`, retrying with random waits in `0...retryWait` until `timeout`
    /// has passed (instead of a number of retries). It fails no sooner than `timeout`: a wait that
    /// would end past the deadline is cut short, and one last attempt starts once it is reached, so
    /// a failure comes at most one release and one attempt (each bounded by `nodeTimeout`) after it.
    /// - Throws: as ``lock(_:ttl:)-(String,_)``; the error of the last attempt when the time is up.
    public func lock(_ resource: String, ttl: Duration, waitingUpTo timeout: Duration) async throws -> Lock {
        let options = try prepare([resource], ttl: ttl)
        guard timeout >= .zero else {
            throw RedlockError(
                .invalidArgument, resource: resource,
                message: "the wait must not be negative (got \(timeout))")
        }
        return try await acquire([resource], ttl: ttl, options: options, until: .deadline(.now + timeout))
    }

    // MARK: Renew

    /// Extends a lock this client holds to a new `ttl`.
    ///
    /// Runs a compare-and-pexpire on every node: a node extends the key only while it still holds
    /// `value`, so an expired or released lock is never re-created. Succeeds with a quorum and
    /// positive validity measured from the renew's start. One attempt, no retries.
    /// - Throws: ``RedlockError``: ``RedlockError/Kind/notHeld`` when the lock is no longer held,
    ///   ``RedlockError/Kind/quorumUnavailable``, ``RedlockError/Kind/validityExpired``,
    ///   ``RedlockError/Kind/invalidArgument``, ``RedlockError/Kind/closed``.
    public func renew(_ resource: String, value: String, ttl: Duration) async throws(RedlockError) -> Lock {
        try await renew([resource], value: value, ttl: ttl, fencingToken: nil, heldUntil: nil)
    }

    /// Renews `lock` (all its resources) with a new ttl (its own ttl when nil). The fencing token,
    /// if any, stays the same: it is the same grant.
    public func renew(_ lock: Lock, ttl: Duration? = nil) async throws(RedlockError) -> Lock {
        try await renew(
            lock.resources, value: lock.value, ttl: ttl ?? lock.ttl, fencingToken: lock.fencingToken,
            heldUntil: lock.validUntil)
    }

    // MARK: Release

    /// Releases a lock, best effort, and returns at once.
    ///
    /// A compare-and-delete goes to every node; nodes that fail are retried in the background (as soon
    /// as they reconnect, else after a doubling delay) until the keys would have expired anyway: for
    /// the longest ttl this client has locked or renewed with (at least 60 s), since the value's own
    /// ttl is not known here; ``unlock(_:)-(Lock)`` uses the lock's. Bad input is ignored (and
    /// logged at debug level): use ``release(_:)`` to learn the outcome. For a multi-resource lock,
    /// use ``unlock(_:)-(Lock)``.
    public func unlock(_ resource: String, value: String) {
        let options = self.options
        guard !resource.isEmpty, !value.isEmpty, !isClosed else {
            options.logger.debug("unlock ignored: empty resource or value, or closed")
            return
        }
        let known = state.withLock { max($0.longestTTL, $0.options.tuning.unlockRetryFloor) }
        releaseEverywhere([resource], value: value, until: .now + known, options: options)
    }

    /// Releases `lock` (all its resources), best effort, and returns at once, as
    /// ``unlock(_:value:)`` does; works for single- and multi-resource locks alike.
    public func unlock(_ lock: Lock) {
        guard !isClosed else { return }
        releaseEverywhere(lock.resources, value: lock.value, until: .now + lock.ttl, options: options)
    }

    /// Releases `lock` (all its resources) on every node and waits for their answers.
    ///
    /// - Returns: how many nodes released it (deleted a key holding this lock's value).
    /// - Throws: ``RedlockError/Kind/notHeld`` when every node answered and none held it;
    ///   ``RedlockError/Kind/quorumUnavailable`` when none released it and some failed (those are
    ///   retried in the background until the lock's keys expire); ``RedlockError/Kind/closed``.
    @discardableResult
    public func release(_ lock: Lock) async throws(RedlockError) -> Int {
        let (options, closed) = state.withLock { ($0.options, $0.closed) }
        guard !closed else {
            throw RedlockError(.closed, resource: lock.resource, message: "redlock was closed")
        }
        // Every key of this lock was set or extended before now, so it expires within its ttl from now.
        let tally = await operationsInFlight.run {
            await tracedRelease(lock.resources, options: options) {
                await releaseOnce(lock.resources, value: lock.value, until: .now + lock.ttl, options: options)
            }
        }
        log(options, "release", lock.resource, attempt: 1, tally: tally, elapsed: .zero)
        if let error = verdict(.release, tally, resource: lock.resource) { throw error }
        return tally.succeeded
    }

    // MARK: Close

    /// Closes every node's connection, after the attempts and releases under way (of
    /// failed attempts and of ``unlock(_:value:)``) have had up to three node timeouts and 50 ms to finish: a
    /// `lock` still in flight fails with ``RedlockError/Kind/closed`` and releases what it got. Locks
    /// returned before `close()` stay held until their ttl (as `redlock lock` needs): release them
    /// first. Later calls fail with ``RedlockError/Kind/closed``; background release retries stop and the ``events`` streams finish.
    public func close() async {
        let (alreadyClosed, options, subscribers, waiters) = state.withLock { state in
            defer {
                state.connectWaiters = [:]
                state.closed = true
                state.releaseRetries = Array(repeating: [:], count: nodes.count)
                state.subscribers = [:]
            }
            return (
                state.closed, state.options, Array(state.subscribers.values),
                state.connectWaiters.values.map(\.continuation)
            )
        }
        for subscriber in subscribers { subscriber.finish() }
        for waiter in waiters { waiter.resume() }
        guard !alreadyClosed else { return }
        await operationsInFlight.drained(within: options.tuning.closeGrace(nodeTimeout: options.nodeTimeout))
        await withTaskGroup(of: Void.self) { group in
            for node in nodes { group.addTask { await node.close() } }
        }
    }

    var isClosed: Bool { state.withLock { $0.closed } }

    /// When the failed releases pending on node `index` stop being retried (for tests).
    func pendingReleaseExpiries(on index: Int) -> [ContinuousClock.Instant] {
        state.withLock { $0.releaseRetries[index].values.map(\.expiry) }
    }

    // MARK: Internals

    /// Validates a call's input before any I/O and returns the options in force.
    func prepare(_ keys: [String], ttl: Duration) throws(RedlockError) -> RedlockOptions {
        let resource = keys.count == 1 ? keys[0] : nil
        let (options, closed, longestTTL) = state.withLock { ($0.options, $0.closed, $0.longestTTL) }
        guard !closed else { throw RedlockError(.closed, resource: resource, message: "redlock was closed") }
        guard !keys.isEmpty else {
            throw RedlockError(.invalidArgument, message: "the list of resources is empty")
        }
        guard !keys.contains(where: \.isEmpty) else {
            throw RedlockError(.invalidArgument, message: "the resource name is empty")
        }
        if let reserved = keys.first(where: { $0.hasPrefix(Lock.fencingKeyPrefix) }) {
            throw RedlockError(
                .invalidArgument, resource: reserved,
                message:
                    "resource names starting with \"\(Lock.fencingKeyPrefix)\" are reserved for fencing counters"
            )
        }
        guard keys.count == 1 || Set(keys).count == keys.count else {
            throw RedlockError(.invalidArgument, message: "a resource is named twice in \(keys)")
        }
        if options.fencingTokens && keys.count > 1 {
            throw RedlockError(
                .invalidArgument, message: "fencing tokens are issued for single-resource locks only")
        }
        guard ttl > .zero else {
            throw RedlockError(
                .invalidArgument, resource: resource, message: "ttl must be positive (got \(ttl))")
        }
        // Redis refuses PX values that overflow a 64-bit millisecond timestamp; stay far below.
        guard ttl <= RedlockOptions.longestDuration else {
            throw RedlockError(
                .invalidArgument, resource: resource, message: "ttl \(ttl) is longer than 100 years")
        }
        guard ttl.wholeMilliseconds >= 1 else {
            throw RedlockError(
                .invalidArgument, resource: resource, message: "ttl must be at least 1 ms (got \(ttl))")
        }
        let drift = options.driftAllowance(for: ttl)
        guard ttl > drift else {
            throw RedlockError(
                .invalidArgument, resource: resource,
                message:
                    "ttl \(ttl) must be greater than the drift allowance \(drift) (drift + driftFactor × ttl)"
            )
        }
        // longestTTL only grows: a ttl no longer than the one read above needs no second lock.
        if ttl > longestTTL {
            state.withLock { state in
                if ttl > state.longestTTL { state.longestTTL = ttl }
            }
        }
        return options
    }

}

extension RedisServer {
    /// What makes two servers the same node: the endpoint, whatever the credentials.
    var endpointKey: String {
        unixSocketPath.map { "unix:\($0)" } ?? "\(host.lowercased()):\(port)"
    }
}
