import Dispatch
import Logging
import Metrics
import Synchronization

/// The events a ``Redlock`` reports, after the seed's `connect` and `disconnect`.
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

    private let names: [String]
    /// The one serial queue all the nodes' connections run on, when this Redlock made them: a
    /// fan-out then costs one hop to it, however many nodes there are.
    private let ioQueue: DispatchQueue?
    private let state: Locked<State>
    /// Acquire attempts and releases under way: ``close()`` waits for them (see ``inFlight(_:)``).
    private let operationsInFlight = Atomic<Int>(0)
    /// Release retry chains alive: grants skip looking for superseded ones when there are none.
    private let retryChains = RetryChain.Count()
    private let eventQueue = DispatchQueue(label: "multiredlock.events")
    let metrics: RedlockMetrics

    private struct State {
        var options: RedlockOptions
        var nodeUp: [Bool]
        var quorumUp = false
        var closed = false
        var handlers: [RedlockEvent: [@Sendable () -> Void]] = [:]
        /// The streams of ``Redlock/events``, by subscription.
        var subscribers: [UInt64: AsyncStream<RedlockEvent>.Continuation] = [:]
        var nextSubscriber: UInt64 = 0
        /// Per node, by lock value: the failed release retried as soon as the node reconnects or
        /// when its timer fires, whichever comes first. One entry per node and value, at most
        /// ``Redlock/maxPendingReleasesPerNode`` per node.
        var releaseRetries: [[String: PendingRelease]]
        var nextRetryID: UInt64 = 0
        /// The longest ttl this client has locked or renewed with (the default restart quarantine,
        /// and how long ``Redlock/unlock(_:value:)`` retries a value it does not know).
        var longestTTL: Duration = .zero
        /// Per node: the earlier node with the same server identity (`run_id`), if any.
        var duplicateOf: [Int?]
    }

    /// A failed release waiting for its retry.
    private struct PendingRelease {
        var keys: [String]
        var expiry: ContinuousClock.Instant
        var id: UInt64
        var chain: RetryChain
        var run: @Sendable () -> Void
    }

    /// The retries of one release on one node: dropping the chain stops a retry already under way
    /// from scheduling the next.
    private final class RetryChain: Sendable {
        let dropped = Atomic<Bool>(false)
        private let count: Count

        final class Count: Sendable {
            let alive = Atomic<Int>(0)
        }

        init(_ count: Count) {
            self.count = count
            count.alive.add(1, ordering: .relaxed)
        }

        deinit {
            count.alive.subtract(1, ordering: .relaxed)
        }
    }

    /// The most failed releases one node keeps for retrying; past it the one that expires first is
    /// dropped (its keys expire on their own). Bounds the memory and work of a node that stays down.
    static let maxPendingReleasesPerNode = 1024

    /// Connects to the given Redis masters (without waiting for them).
    ///
    /// - Parameters:
    ///   - servers: the independent masters; the seed's default is one server on localhost:6379.
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
        self.ioQueue = ioQueue
        quorum = nodes.count / 2 + 1
        state = Locked(
            State(
                options: options, nodeUp: Array(repeating: false, count: nodes.count),
                releaseRetries: Array(repeating: [:], count: nodes.count),
                duplicateOf: Array(repeating: nil, count: nodes.count)))
        metrics = RedlockMetrics(factory: options.metricsFactory ?? MetricsSystem.factory)
        metrics.connectedNodes.record(0)
        for (index, node) in nodes.enumerated() {
            node.observeConnection { [weak self] up in self?.node(index, isUp: up) }
        }
    }

    // MARK: Configuration and events

    /// The options in force (``setRetry(_:retryWait:)`` changes two of them).
    public var options: RedlockOptions { state.withLock { $0.options } }

    /// Sets how often `lock` retries and the longest random wait between attempts (seed:
    /// `setRetry(retries, retryWait)`). `retries` 0 disables retrying.
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

    /// Whether at least a quorum of nodes is connected (seed: `connected`).
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
            of: RedlockEvent.self, bufferingPolicy: .bufferingNewest(64))
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

    private func node(_ index: Int, isUp: Bool) {
        // A node that connected may have revealed that it is another node's server (same run_id).
        let duplicates = isUp ? Self.duplicates(nodes.map(\.serverID)) : nil
        let (retries, connected, options) = state.withLock {
            state -> ([@Sendable () -> Void], Int?, RedlockOptions?) in
            if let duplicates { state.duplicateOf = duplicates }
            guard state.nodeUp[index] != isUp else { return ([], nil, nil) }
            state.nodeUp[index] = isUp
            // Under the state lock, so the gauge keeps the order of the transitions.
            let connected = state.nodeUp.count { $0 }
            metrics.connectedNodes.record(connected)
            // A node that is back gets its failed releases now, not when their timers fire.
            var retries: [@Sendable () -> Void] = []
            if isUp {
                let now = ContinuousClock.now
                retries = state.releaseRetries[index].values.filter { $0.expiry > now }.map(\.run)
                state.releaseRetries[index] = [:]
            }
            let voters = state.nodeUp.indices.count { state.nodeUp[$0] && state.duplicateOf[$0] == nil }
            let quorumUp = voters >= quorum
            guard quorumUp != state.quorumUp else { return (retries, connected, state.options) }
            state.quorumUp = quorumUp
            // Dispatched while holding the state lock, so events keep the order of transitions.
            let handlers = state.handlers[quorumUp ? .connect : .disconnect] ?? []
            eventQueue.async { for handler in handlers { handler() } }
            for subscriber in state.subscribers.values { subscriber.yield(quorumUp ? .connect : .disconnect) }
            return (retries, connected, state.options)
        }
        // Outside the state lock (a log handler may block); one node's changes come from its
        // connection's serial queue, in order.
        if let connected, let options {
            logTransition(of: index, isUp: isUp, connected: connected, options: options)
        }
        // Not inside the connection's state callback: each retry sends a command.
        if !retries.isEmpty { Task { for retry in retries { retry() } } }
    }

    /// For each node, the first earlier node reporting the same server identity.
    static func duplicates(_ identities: [String?]) -> [Int?] {
        var first: [String: Int] = [:]
        return identities.enumerated().map { index, identity in
            guard let identity else { return nil }
            if let earlier = first[identity] { return earlier }
            first[identity] = index
            return nil
        }
    }

    // MARK: Lock

    /// Acquires a lock on `resource` for `ttl`, retrying as configured (seed: `lock`).
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

    enum RetryLimit {
        case attempts(Int)
        case deadline(ContinuousClock.Instant)
    }

    /// The retry loop. Each attempt has a value of its own: what runs later for a failed attempt (its
    /// release, and the background retries of that release) can only ever touch that attempt's
    /// keys, never the keys of a later attempt that succeeded. A failed attempt is released on the
    /// nodes that may hold its keys before the next attempt starts (in the background after the last
    /// one). Cancellation stops the loop at once, in an attempt or between two: whatever the attempt
    /// set is released, and `CancellationError` is thrown.
    func acquire(
        _ keys: [String], ttl: Duration, options: RedlockOptions, until limit: RetryLimit
    ) async throws -> Lock {
        try await traced(
            "multiredlock.lock", keys, options: options,
            outcome: { result in
                switch result {
                case .success(let lock):
                    SpanOutcome(kind: "granted", attempts: lock.attempts, nodes: lock.nodes.count)
                case .failure(let error): SpanOutcome(error)
                }
            }
        ) { () async -> Result<Lock, any Error> in
            do {
                return .success(try await acquireLoop(keys, ttl: ttl, options: options, until: limit))
            } catch {
                return .failure(error)
            }
        }.get()
    }

    /// The retry loop of ``acquire(_:ttl:options:until:)``.
    private func acquireLoop(
        _ keys: [String], ttl: Duration, options: RedlockOptions, until limit: RetryLimit
    ) async throws -> Lock {
        let start = ContinuousClock.now
        var attempt = 0
        while true {
            attempt += 1
            let value = LockValue.make(id: options.id)
            let attemptStart = ContinuousClock.now
            let (result, outcomes) = await inFlight {
                await acquireOnce(keys, value: value, ttl: ttl, options: options, attempt: attempt)
            }
            let attemptEnd = ContinuousClock.now
            let elapsed = attemptEnd - attemptStart
            // A key set in this attempt lives at most ttl from now.
            let expiry = attemptEnd + ttl
            switch result {
            case .success(let lock):
                logAttempt(options, keys, attempt: attempt, result, elapsed: elapsed, retryIn: nil)
                if Task.isCancelled {
                    releaseEverywhere(keys, value: value, until: expiry, options: options)
                    throw CancellationError()
                }
                metrics.grants.increment()
                metrics.acquireDuration.recordInterval(since: start)
                return lock
            case .failure(let error):
                var wait = Duration.random(upTo: options.retryWait)
                let exhausted: Bool
                switch limit {
                case .attempts(let count):
                    exhausted = attempt >= count
                case .deadline(let deadline):
                    // Retry until the deadline has passed, never sleeping past it: a wait that would
                    // cross it is cut short, so the last attempt starts once the deadline is reached.
                    exhausted = attemptEnd >= deadline
                    wait = min(wait, deadline - attemptEnd)
                }
                let last = exhausted || error.kind == .closed || Task.isCancelled
                logAttempt(
                    options, keys, attempt: attempt, result, elapsed: elapsed, retryIn: last ? nil : wait)
                // Only nodes that may hold this attempt's keys are released: a node that refused the
                // SET NX holds another value (and this attempt's value is unique to it).
                let targets = outcomes.map { $0 != .refused }
                if last {
                    releaseEverywhere(keys, value: value, until: expiry, options: options, on: targets)
                    try Task.checkCancellation()
                    metrics.failed(error.kind)
                    throw error
                }
                // Wait for the release on the nodes that answered the attempt promptly (granted, or
                // an error reply); a node that timed out, was not connected or lost its connection
                // is released in the background: waiting for it could cost another node timeout.
                let answeredInTime = outcomes.map { outcome in
                    switch outcome {
                    case .pending, .refused: false
                    case .failed(let failure): failure.kind == .errorReply
                    case .granted: true
                    }
                }
                _ = await tracedRelease(keys, options: options) {
                    await releaseOnce(
                        keys, value: value, until: expiry, options: options, on: targets,
                        waitingFor: answeredInTime)
                }
                if wait > .zero { try await Task.sleep(for: wait) }
                try Task.checkCancellation()
            }
        }
    }

    /// Runs `operation` counted as in flight, so that ``close()`` waits for it.
    private func inFlight<T>(_ operation: () async -> T) async -> T {
        operationsInFlight.add(1, ordering: .relaxed)
        defer { operationsInFlight.subtract(1, ordering: .releasing) }
        return await operation()
    }

    /// One attempt: SET NX PX (or the all-or-none script) on every node, decided as soon as the
    /// outcome is certain; with fencing tokens, then the token's write-back to a quorum. Returns the
    /// lock or the error, and what each node answered the SET (which nodes may hold the keys).
    private func acquireOnce(
        _ keys: [String], value: String, ttl: Duration, options: RedlockOptions, attempt: Int
    ) async -> (Result<Lock, RedlockError>, [NodeEvidence.Outcome]) {
        metrics.attempts.increment()
        let resource = Lock.name(of: keys)
        let start = ContinuousClock.now
        let timeout = options.nodeTimeout
        let counters = options.fencingTokens ? FencingCounters(count: nodes.count) : nil
        let tally = await fanOut(.acquire, options: options, cancellable: true) {
            [self] index, node, answer in
            // A node that grants these keys holds no older value of ours for them any more. Only
            // wrapped while retry chains exist: the usual lock costs no extra closure per node.
            let done: @Sendable (NodeResult) -> Void
            if retryChains.alive.load(ordering: .relaxed) > 0 {
                done = { result in
                    if result == .succeeded { self.supersedeReleases(of: keys, on: index) }
                    answer(result)
                }
            } else {
                done = answer
            }
            if let counters {
                node.acquireFenced(
                    key: keys[0], counterKey: Lock.fencingKey(for: keys[0]), value: value, ttl: ttl,
                    timeout: timeout
                ) { result, counter in
                    counters.record(counter, at: index)
                    done(result)
                }
            } else {
                node.acquire(keys: keys, value: value, ttl: ttl, timeout: timeout, completion: done)
            }
        }
        var decided = tally
        var fencingToken: Int64?
        if let counters, tally.decision == .succeeded {
            // Take max + 1 over the granting majority, and write it back to a majority before the lock
            // is returned: majorities intersect, so the next grant reads at least this token.
            let token = counters.max(over: tally.grantedIndices) + 1
            let writeBack = await fanOut(.extend, options: options, cancellable: true) { _, node, done in
                node.raiseFence(
                    key: keys[0], counterKey: Lock.fencingKey(for: keys[0]), value: value, token: token,
                    timeout: timeout, completion: done)
            }
            log(options, "fence", resource, attempt: attempt, tally: writeBack, elapsed: .now - start)
            fencingToken = token
            if writeBack.decision != .succeeded { decided = writeBack }
        }
        let outcomes = tally.outcomes
        let now = ContinuousClock.now
        // The nodes keep the key for whole milliseconds (PX), so the validity is counted from those.
        let validUntil = start + .milliseconds(ttl.wholeMilliseconds) - options.driftAllowance(for: ttl)
        if decided.decision == .succeeded && now < validUntil {
            // A grant that comes in while close() runs is not returned: it fails with `closed` and is
            // released (close() waits for this attempt and its release).
            if !isClosed {
                let lock = Lock(
                    resources: keys, value: value, validity: validUntil - now, ttl: ttl,
                    validUntil: validUntil, attempts: attempt, nodes: tally.grantedIndices.map { names[$0] },
                    fencingToken: fencingToken)
                return (.success(lock), outcomes)
            }
        }
        // The caller releases the nodes that may hold the keys: also those that failed or did not
        // answer, since a SET that timed out may have landed.
        let error = failure(
            decided, resource: resource, attempts: attempt, elapsed: now - start,
            operation: fencingToken != nil && decided.decision != .succeeded ? .fence : .acquire)
        return (.failure(error), outcomes)
    }

    /// The operations whose failures ``failure(_:resource:attempts:elapsed:operation:)`` words.
    private enum Operation {
        case acquire, fence, renew, release
    }

    /// One place that decides the kind of a failed quorum round, and words it: closed; a quorum
    /// that came too late (`validityExpired`); refused by a quorum (`taken` for an acquire, else
    /// `notHeld`, or `validityExpired` for a fencing write-back, whose refusals mean this attempt's
    /// keys expired); otherwise `quorumUnavailable`.
    private func failure(
        _ tally: QuorumTally, resource: String, attempts: Int, elapsed: Duration, operation: Operation
    ) -> RedlockError {
        if isClosed {
            return RedlockError(
                .closed, resource: resource, attempts: attempts, message: "redlock was closed")
        }
        let evidence = tally.evidence(names: names)
        let verb =
            switch operation {
            case .acquire: "granted the lock"
            case .fence: "took the fencing token"
            case .renew: "extended the lock"
            case .release: "released the lock"
            }
        if tally.decision == .succeeded {
            return RedlockError(
                .validityExpired, resource: resource, attempts: attempts, nodes: evidence,
                message: "a quorum \(verb), but that took \(elapsed), leaving no validity")
        }
        if tally.refusedByQuorum {
            switch operation {
            case .acquire:
                return RedlockError(
                    .taken, resource: resource, attempts: attempts, nodes: evidence,
                    message:
                        "held by someone else: \(tally.refused) of \(nodes.count) nodes hold another value")
            case .fence:
                return RedlockError(
                    .validityExpired, resource: resource, attempts: attempts, nodes: evidence,
                    message:
                        "the lock expired before its fencing token was written back: \(tally.refused) of "
                        + "\(nodes.count) nodes no longer hold it")
            case .renew, .release:
                return RedlockError(
                    .notHeld, resource: resource, attempts: attempts, nodes: evidence,
                    message: "the lock is not held (expired, released, or another owner's) on enough nodes")
            }
        }
        return RedlockError(
            .quorumUnavailable, resource: resource, attempts: attempts, nodes: evidence,
            message:
                "not enough nodes answered: \(tally.succeeded) \(operation == .acquire ? "granted" : "succeeded"), "
                + "\(tally.refused) refused, \(tally.failed) failed; \(quorum) of \(nodes.count) needed")
    }

    // MARK: Renew

    /// Extends a lock this client holds to a new `ttl` (seed: `renew`).
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

    /// `heldUntil`: the validity of the lock being renewed, when known (see the notHeld case below).
    private func renew(
        _ keys: [String], value: String, ttl: Duration, fencingToken: Int64?,
        heldUntil: ContinuousClock.Instant?
    ) async throws(RedlockError) -> Lock {
        let options = try prepare(keys, ttl: ttl)
        let resource = Lock.name(of: keys)
        guard !value.isEmpty else {
            throw RedlockError(.invalidArgument, resource: resource, message: "the lock value is empty")
        }
        return try await traced(
            "multiredlock.renew", keys, options: options,
            outcome: { result in
                switch result {
                case .success(let lock): SpanOutcome(kind: "renewed", attempts: 1, nodes: lock.nodes.count)
                case .failure(let error): SpanOutcome(error)
                }
            }
        ) { () async -> Result<Lock, RedlockError> in
            do throws(RedlockError) {
                return .success(
                    try await renewOnce(
                        keys, value: value, ttl: ttl, fencingToken: fencingToken, heldUntil: heldUntil,
                        options: options))
            } catch {
                return .failure(error)
            }
        }.get()
    }

    /// One renew round: compare-and-pexpire on every node.
    private func renewOnce(
        _ keys: [String], value: String, ttl: Duration, fencingToken: Int64?,
        heldUntil: ContinuousClock.Instant?, options: RedlockOptions
    ) async throws(RedlockError) -> Lock {
        let resource = Lock.name(of: keys)
        metrics.renewAttempts.increment()
        let start = ContinuousClock.now
        let timeout = options.nodeTimeout
        let tally = await fanOut(.extend, options: options) { _, node, done in
            node.extend(keys: keys, value: value, ttl: ttl, timeout: timeout, completion: done)
        }
        let now = ContinuousClock.now
        // The nodes keep the key for whole milliseconds (PX), so the validity is counted from those.
        let validUntil = start + .milliseconds(ttl.wholeMilliseconds) - options.driftAllowance(for: ttl)
        log(options, "renew", resource, attempt: 1, tally: tally, elapsed: now - start)
        if tally.decision == .succeeded && now < validUntil {
            metrics.renewals.increment()
            metrics.renewDuration.recordInterval(since: start)
            return Lock(
                resources: keys, value: value, validity: validUntil - now, ttl: ttl, validUntil: validUntil,
                attempts: 1, nodes: tally.grantedIndices.map { names[$0] }, fencingToken: fencingToken)
        }
        let error = failure(tally, resource: resource, attempts: 1, elapsed: now - start, operation: .renew)
        if error.kind == .notHeld && tally.refused < nodes.count, let heldUntil {
            // The lock is gone from a quorum, yet other nodes may just have extended it (also those
            // that had not answered when a quorum refused): they would block the resource for the
            // new ttl with a lock nobody holds. Release them, but only once the lock being renewed
            // is past its validity (and drift): until then its holder may still rely on it, and its
            // keys on those nodes are what keeps another client from a quorum (found by `make sim`,
            // seed 125: releasing at once let a second client in while the first was still valid).
            let targets = tally.outcomes.map { $0 != .refused }
            let releaseAt = heldUntil + options.driftAllowance(for: ttl)
            operationsInFlight.add(1, ordering: .relaxed)
            Task {
                defer { self.operationsInFlight.subtract(1, ordering: .releasing) }
                try? await Task.sleep(until: releaseAt, clock: .continuous)
                guard !self.isClosed else { return }
                _ = await self.releaseOnce(
                    keys, value: value, until: .now + ttl, options: options, on: targets)
            }
        }
        metrics.renewFailed(error.kind)
        throw error
    }

    // MARK: Release

    /// Releases a lock, best effort, and returns at once (seed: `unlock`).
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
        let known = state.withLock { max($0.longestTTL, .seconds(60)) }
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
        let options = self.options
        guard !isClosed else {
            throw RedlockError(.closed, resource: lock.resource, message: "redlock was closed")
        }
        // Every key of this lock was set or extended before now, so it expires within its ttl from now.
        let tally = await inFlight {
            await tracedRelease(lock.resources, options: options) {
                await releaseOnce(lock.resources, value: lock.value, until: .now + lock.ttl, options: options)
            }
        }
        log(options, "release", lock.resource, attempt: 1, tally: tally, elapsed: .zero)
        if tally.succeeded > 0 { return tally.succeeded }
        let evidence = tally.evidence(names: names)
        if tally.failed == 0 {
            throw RedlockError(
                .notHeld, resource: lock.resource, attempts: 1, nodes: evidence,
                message: "no node held the lock (expired, released, or another owner's)")
        }
        throw RedlockError(
            .quorumUnavailable, resource: lock.resource, attempts: 1, nodes: evidence,
            message: "no node released the lock: \(tally.refused) did not hold it, \(tally.failed) failed")
    }

    /// Fire-and-forget release on the nodes marked in `targets` (all by default), with background
    /// retries for failed nodes. ``close()`` waits for these first releases (not for later retries),
    /// so a client that fails to lock and closes at once (a CLI, a short job) leaves nothing locked.
    func releaseEverywhere(
        _ keys: [String], value: String, until expiry: ContinuousClock.Instant, options: RedlockOptions,
        on targets: [Bool]? = nil
    ) {
        operationsInFlight.add(1, ordering: .relaxed)
        Task {
            _ = await self.tracedRelease(keys, options: options) {
                await self.releaseOnce(keys, value: value, until: expiry, options: options, on: targets)
            }
            self.operationsInFlight.subtract(1, ordering: .releasing)
        }
    }

    /// A release round in a `multiredlock.release` span: the outcome is `released` when a node
    /// deleted the keys, `notHeld` when every node answered and none held them, else
    /// `quorumUnavailable`.
    private func tracedRelease(
        _ keys: [String], options: RedlockOptions, _ round: () async -> QuorumTally
    ) async -> QuorumTally {
        await traced(
            "multiredlock.release", keys, options: options,
            outcome: { (result: Result<QuorumTally, Never>) in
                let tally = result.get()
                let kind =
                    tally.succeeded > 0
                    ? "released"
                    : tally.failed == 0
                        ? RedlockError.Kind.notHeld.rawValue : RedlockError.Kind.quorumUnavailable.rawValue
                return SpanOutcome(kind: kind, attempts: 1, nodes: tally.succeeded)
            }
        ) { () async -> Result<QuorumTally, Never> in
            .success(await round())
        }.get()
    }

    /// Logs (at debug) why node `index` connected or disconnected, and how many nodes are connected.
    private func logTransition(of index: Int, isUp: Bool, connected: Int, options: RedlockOptions) {
        options.logger.debug(
            isUp ? "node connected" : "node disconnected",
            metadata: [
                "node": "\(names[index])",
                "reason": "\(nodes[index].connectionDetail ?? (isUp ? "connected" : "no reason given"))",
                "connected": "\(connected)", "nodes": "\(nodes.count)", "quorum": "\(quorum)",
            ])
    }

    /// Compare-and-delete on the nodes marked in `targets` (all by default; the others count as
    /// refused), waiting for the answers of those marked in `awaited` (all by default). Nodes that
    /// failed (timeout, no connection, error) are retried in the background until `expiry` (past it
    /// the keys have expired on their own): as soon as the node reconnects, or after a doubling
    /// delay, whichever is first.
    private func releaseOnce(
        _ keys: [String], value: String, until expiry: ContinuousClock.Instant, options: RedlockOptions,
        on targets: [Bool]? = nil, waitingFor awaited: [Bool]? = nil
    ) async -> QuorumTally {
        let timeout = options.nodeTimeout
        let delays = options.releaseRetryDelay
        let retryFailed: @Sendable (QuorumTally) -> Void = { [weak self] tally in
            guard let self else { return }
            for index in tally.outcomes.indices {
                guard case .failed = tally.outcomes[index] else { continue }
                self.retryRelease(
                    on: index, keys, value, expiry, timeout, delay: delays.first, longest: delays.longest,
                    chain: RetryChain(self.retryChains))
            }
        }
        let awaited = awaited ?? Array(repeating: true, count: nodes.count)
        return await fanOut(
            .release, options: options, until: .answered(awaited), whenAllAnswered: retryFailed
        ) { index, node, done in
            if let targets, !targets[index] { return done(.refused) }
            node.release(keys: keys, value: value, timeout: timeout, completion: done)
        }
    }

    /// Retries a failed release on node `index` once it reconnects or after `delay`, whichever comes
    /// first; a retry that fails again schedules the next with twice the delay (at most `longest`).
    /// Stops at `expiry`, when the keys have expired anyway, and when the Redlock is closed. A node
    /// keeps one retry per value (a newer one replaces it), dropped when a later grant of the same
    /// keys on that node shows the value is gone.
    private func retryRelease(
        on index: Int, _ keys: [String], _ value: String, _ expiry: ContinuousClock.Instant,
        _ timeout: Duration, delay: Duration, longest: Duration, chain: RetryChain
    ) {
        guard ContinuousClock.now < expiry, !chain.dropped.load(ordering: .relaxed) else { return }
        let attempt: @Sendable () -> Void = { [weak self] in
            guard let self, !self.isClosed, ContinuousClock.now < expiry else { return }
            self.nodes[index].release(keys: keys, value: value, timeout: timeout) { [weak self] result in
                guard case .failed = result else { return }
                self?.retryRelease(
                    on: index, keys, value, expiry, timeout, delay: min(delay * 2, longest), longest: longest,
                    chain: chain)
            }
        }
        let id: UInt64? = state.withLock { state in
            guard !state.closed, !chain.dropped.load(ordering: .relaxed) else { return nil }
            state.nextRetryID &+= 1
            let id = state.nextRetryID
            let pending = PendingRelease(keys: keys, expiry: expiry, id: id, chain: chain, run: attempt)
            if let replaced = state.releaseRetries[index].updateValue(pending, forKey: value),
                replaced.chain !== chain
            {
                replaced.chain.dropped.store(true, ordering: .relaxed)
            }
            if state.releaseRetries[index].count > Self.maxPendingReleasesPerNode,
                let soonest = state.releaseRetries[index].min(by: { $0.value.expiry < $1.value.expiry })
            {
                soonest.value.chain.dropped.store(true, ordering: .relaxed)
                state.releaseRetries[index][soonest.key] = nil
            }
            return id
        }
        guard let id else { return }
        Task { [weak self] in
            try? await Task.sleep(for: min(delay, expiry - .now))
            // Runs the retry unless the node's reconnect took it first (or a newer one replaced it).
            let retry: (@Sendable () -> Void)? = self?.state.withLock { state in
                guard let pending = state.releaseRetries[index][value], pending.id == id else { return nil }
                state.releaseRetries[index][value] = nil
                return pending.run
            }
            retry?()
        }
    }

    /// Drops node `index`'s pending releases of exactly `keys`: the node has just granted them to a
    /// new value, so no older value of this client's is left there.
    private func supersedeReleases(of keys: [String], on index: Int) {
        guard retryChains.alive.load(ordering: .relaxed) > 0 else { return }
        state.withLock { state in
            state.releaseRetries[index] = state.releaseRetries[index].filter { _, pending in
                guard pending.keys == keys else { return true }
                pending.chain.dropped.store(true, ordering: .relaxed)
                return false
            }
        }
    }

    // MARK: Close

    /// Closes every node's connection (seed: `close`), after the attempts and releases under way (of
    /// failed attempts and of ``unlock(_:value:)``) have had up to three node timeouts and 50 ms to finish: a
    /// `lock` still in flight fails with ``RedlockError/Kind/closed`` and releases what it got. Locks
    /// returned before `close()` stay held until their ttl (as `redlock lock` needs): release them
    /// first. Later calls fail with ``RedlockError/Kind/closed``; background release retries stop and the ``events`` streams finish.
    public func close() async {
        let (alreadyClosed, options, subscribers) = state.withLock { state in
            defer {
                state.closed = true
                state.releaseRetries = Array(repeating: [:], count: nodes.count)
                state.subscribers = [:]
            }
            return (state.closed, state.options, Array(state.subscribers.values))
        }
        for subscriber in subscribers { subscriber.finish() }
        guard !alreadyClosed else { return }
        let deadline = ContinuousClock.now + Self.closeGrace(options)
        while operationsInFlight.load(ordering: .acquiring) > 0 && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(2))
        }
        await withTaskGroup(of: Void.self) { group in
            for node in nodes { group.addTask { await node.close() } }
        }
    }

    /// How long ``close()`` waits for the attempts and releases under way: an attempt (its SET round
    /// and a fencing write-back) and then its release, each bounded by the node timeout, plus 50 ms.
    static func closeGrace(_ options: RedlockOptions) -> Duration {
        options.nodeTimeout * 3 + .milliseconds(50)
    }

    private var isClosed: Bool { state.withLock { $0.closed } }

    /// When the failed releases pending on node `index` stop being retried (for tests).
    func pendingReleaseExpiries(on index: Int) -> [ContinuousClock.Instant] {
        state.withLock { $0.releaseRetries[index].values.map(\.expiry) }
    }

    // MARK: Internals

    /// Validates a call's input before any I/O and returns the options in force.
    func prepare(_ keys: [String], ttl: Duration) throws(RedlockError) -> RedlockOptions {
        let resource = keys.count == 1 ? keys[0] : nil
        let (options, closed) = state.withLock { ($0.options, $0.closed) }
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
        guard Set(keys).count == keys.count else {
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
        state.withLock { state in
            if ttl > state.longestTTL { state.longestTTL = ttl }
        }
        return options
    }

    /// What a fan-out asks of the nodes, for how their answers count.
    enum RoundKind {
        /// SET NX: a late answer is a timeout, a restarted node's grant does not count yet, and a
        /// duplicate node fails.
        case acquire
        /// Compare-and-pexpire (renew, fencing write-back): a late answer is a timeout, and a
        /// duplicate node fails.
        case extend
        /// Compare-and-delete: a duplicate node is not asked (its server is asked as the earlier node).
        case release
    }

    /// Runs `operation` on every node at once and returns when the outcome is certain (or, with
    /// `.answered`, when the nodes waited for have answered); `whenAllAnswered` runs once every
    /// node has. A cancellable fan-out returns at once when its task is cancelled, with the answers
    /// so far (undecided); a release is never cut short.
    ///
    /// How answers count is decided here, once for every operation: the node timeout is strict (an
    /// answer that comes after it, though before the node's own timer fired, is a timeout), a node
    /// whose server restarted within the quarantine does not grant, and a node that is another
    /// node's server (same `run_id`) has no vote.
    private func fanOut(
        _ kind: RoundKind,
        options: RedlockOptions,
        until: FanOutRound.Until = .settled,
        cancellable: Bool = false,
        whenAllAnswered: (@Sendable (QuorumTally) -> Void)? = nil,
        _ operation:
            @escaping @Sendable (Int, any RedlockNode, @escaping @Sendable (NodeResult) -> Void) -> Void
    ) async -> QuorumTally {
        let round = FanOutRound(nodeCount: nodes.count, until: until, whenAllAnswered: whenAllAnswered)
        let nodes = nodes
        let names = names
        let (duplicates, longestTTL) = state.withLock { ($0.duplicateOf, $0.longestTTL) }
        let quarantine: Duration? =
            switch (kind, options.restartQuarantine) {
            case (.acquire, .longestTTL): longestTTL
            case (.acquire, .fixed(let duration)): duration
            default: nil
            }
        let timeout = options.nodeTimeout
        return await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                round.start { continuation.resume(returning: $0) }
                let send: @Sendable () -> Void = {
                    let sent = ContinuousClock.now
                    for (index, node) in nodes.enumerated() {
                        if let first = duplicates[index] {
                            let duplicate = NodeFailure(
                                .duplicate,
                                "the same server as \(names[first]) (run_id \(node.serverID ?? "?")): one vote"
                            )
                            round.record(kind == .release ? .refused : .failed(duplicate), at: index)
                            continue
                        }
                        operation(index, node) { result in
                            round.record(
                                Self.counted(
                                    result, kind, node, sent: sent, timeout: timeout, quarantine: quarantine),
                                at: index)
                        }
                    }
                }
                // One hop to the nodes' shared queue; there each command goes straight to hiredis,
                // and all of them are written when `send` returns (a write batch: no queue turn per
                // node for the flush).
                if let ioQueue { RedisConnection.batch(on: ioQueue, send) } else { send() }
            }
        } onCancel: {
            if cancellable { round.finishEarly() }
        }
    }

    /// How one node's answer counts (see ``fanOut(_:options:until:cancellable:whenAllAnswered:_:)``).
    private static func counted(
        _ result: NodeResult, _ kind: RoundKind, _ node: any RedlockNode, sent: ContinuousClock.Instant,
        timeout: Duration, quarantine: Duration?
    ) -> NodeResult {
        if kind == .release { return result }
        if case .failed = result { return result }
        let elapsed = ContinuousClock.now - sent
        if elapsed > timeout {
            // Whatever the command did (it ran), the answer is too late to count.
            return .failed(
                NodeFailure(.timeout, "answered after \(elapsed), past the node timeout of \(timeout)"))
        }
        if result == .succeeded, let quarantine, let since = node.timeSinceRestart, since < quarantine {
            return .failed(
                NodeFailure(
                    .restarted,
                    "the server restarted \(since) ago (new run_id); its grants count again in \(quarantine - since)"
                ))
        }
        return result
    }

    /// One line per acquire attempt, with its outcome: `granted` or the error's kind, and the
    /// details (the nodes that granted, or the error's message with its per-node evidence). `retryIn`
    /// is the random wait before the next attempt (`retry_in_ms`), nil after the last one.
    private func logAttempt(
        _ options: RedlockOptions, _ keys: [String], attempt: Int, _ result: Result<Lock, RedlockError>,
        elapsed: Duration, retryIn: Duration?
    ) {
        options.logger.log(
            level: options.debug ? .debug : .trace, "acquire attempt",
            metadata: {
                var metadata: Logger.Metadata = [
                    "resource": "\(Lock.name(of: keys))", "attempt": "\(attempt)",
                    "elapsed_ms": "\(elapsed.milliseconds)",
                ]
                switch result {
                case .success(let lock):
                    metadata["outcome"] = "granted"
                    metadata["granted"] = "\(lock.nodes.count)"
                    metadata["validity_ms"] = "\(lock.validity.milliseconds)"
                case .failure(let error):
                    metadata["outcome"] = "\(error.kind.rawValue)"
                    metadata["error"] = "\(error)"
                }
                if let retryIn { metadata["retry_in_ms"] = "\(retryIn.milliseconds)" }
                return metadata
            }())
    }

    private func log(
        _ options: RedlockOptions, _ operation: String, _ resource: String, attempt: Int, tally: QuorumTally,
        elapsed: Duration
    ) {
        options.logger.log(
            level: options.debug ? .debug : .trace, "\(operation) attempt",
            metadata: [
                "resource": "\(resource)", "attempt": "\(attempt)", "granted": "\(tally.succeeded)",
                "refused": "\(tally.refused)", "failed": "\(tally.failed)",
                "elapsed_ms": "\(elapsed.milliseconds)",
            ])
    }
}

/// The fencing counters the granting nodes answered in one fenced attempt.
private final class FencingCounters: Sendable {
    private let counters: Locked<[Int64]>

    init(count: Int) {
        counters = Locked(Array(repeating: 0, count: count))
    }

    func record(_ counter: Int64, at index: Int) {
        counters.withLock { $0[index] = counter }
    }

    func max(over indices: [Int]) -> Int64 {
        counters.withLock { counters in indices.map { counters[$0] }.max() ?? 0 }
    }
}

/// One fan-out in progress: the tally behind a lock, and the one-shot completion.
private final class FanOutRound: Sendable {
    /// When the awaited part of a round is over.
    enum Until: Sendable {
        /// The quorum's outcome and its kind are final (see ``QuorumTally/isSettled``).
        case settled
        /// Every node marked true has answered (the others may still answer later).
        case answered([Bool])
    }

    private struct State {
        var tally: QuorumTally
        var completion: (@Sendable (QuorumTally) -> Void)?
        var finished = false
        var whenAllAnswered: (@Sendable (QuorumTally) -> Void)?

        /// Marks the round finished; returns the completion to call, if it was set.
        mutating func finish() -> (QuorumTally, @Sendable (QuorumTally) -> Void)? {
            finished = true
            defer { completion = nil }
            return completion.map { (tally, $0) }
        }
    }

    private let state: Locked<State>
    private let until: Until

    init(nodeCount: Int, until: Until, whenAllAnswered: (@Sendable (QuorumTally) -> Void)? = nil) {
        state = Locked(State(tally: QuorumTally(nodeCount: nodeCount), whenAllAnswered: whenAllAnswered))
        self.until = until
    }

    /// Sets the completion; it runs at once if the round already finished early.
    func start(_ completion: @escaping @Sendable (QuorumTally) -> Void) {
        let tally: QuorumTally? = state.withLock { state in
            if state.finished { return state.tally }
            state.completion = completion
            return nil
        }
        if let tally { completion(tally) }
    }

    func record(_ result: NodeResult, at index: Int) {
        var allAnswered: (QuorumTally, @Sendable (QuorumTally) -> Void)?
        let finished: (QuorumTally, @Sendable (QuorumTally) -> Void)? = state.withLock { state in
            state.tally.record(result, at: index)
            if state.tally.answered == state.tally.total, let callback = state.whenAllAnswered {
                state.whenAllAnswered = nil
                allAnswered = (state.tally, callback)
            }
            guard !state.finished else { return nil }
            let done =
                switch until {
                case .settled: state.tally.isSettled
                case .answered(let awaited):
                    state.tally.outcomes.indices.allSatisfy {
                        !awaited[$0] || state.tally.outcomes[$0] != .pending
                    }
                }
            guard done else { return nil }
            return state.finish()
        }
        if let (tally, completion) = finished { completion(tally) }
        if let (tally, callback) = allAnswered { callback(tally) }
    }

    /// Completes now with the answers so far (the task was cancelled).
    func finishEarly() {
        let finished: (QuorumTally, @Sendable (QuorumTally) -> Void)? = state.withLock { state in
            state.finished ? nil : state.finish()
        }
        if let (tally, completion) = finished { completion(tally) }
    }
}

extension RedisServer {
    /// What makes two servers the same node: the endpoint, whatever the credentials.
    var endpointKey: String {
        unixSocketPath.map { "unix:\($0)" } ?? "\(host.lowercased()):\(port)"
    }
}

extension Duration {
    /// A uniformly random duration in `0...limit`.
    static func random(upTo limit: Duration) -> Duration {
        let nanoseconds = limit.nanosecondsClamped
        guard nanoseconds > 0 else { return .zero }
        return .nanoseconds(Int64.random(in: 0...nanoseconds))
    }

    var nanosecondsClamped: Int64 {
        let (seconds, attoseconds) = components
        let (product, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        let (sum, sumOverflow) = product.addingReportingOverflow(attoseconds / 1_000_000_000)
        return overflow || sumOverflow ? (seconds < 0 ? .min : .max) : sum
    }
}
