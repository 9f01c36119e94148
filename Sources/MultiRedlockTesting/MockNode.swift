import Dispatch
import MultiRedlock
import Synchronization

/// An in-memory ``RedlockNode`` that behaves like one Redis master, for unit tests without Redis.
///
/// It mirrors ``RedisNode``: `acquire` is `SET key value NX PX ttl` (set only while the key is absent
/// or expired), `extend` is compare-and-pexpire (never creates a key) and `release` is
/// compare-and-delete. Ttls are whole milliseconds, as sent to Redis, and a key expires when
/// `clock.now >= setAt + ttl` on the node's ``MockClock``.
///
/// Faults can be switched on and off at any time, from any thread: ``isDown``, ``latency``,
/// ``isHung`` (with ``hungWritesApply``) and ``errorReply``. Every call is logged in ``calls``.
///
/// ```swift
/// let clock = MockClock()
/// let nodes = (1...3).map { MockRedlockNode(name: "node\($0)", clock: clock) }
/// let redlock = try Redlock(nodes: nodes, options: RedlockOptions(id: "test"))
/// let lock = try await redlock.lock("invoice-42", ttl: .seconds(10))
/// clock.advance(by: .seconds(11))  // the lock has expired on every node
/// ```
public final class MockRedlockNode: RedlockNode {
    /// One call made to the node, as logged in ``MockRedlockNode/calls``.
    public enum Call: Sendable, Hashable, CustomStringConvertible {
        /// `acquire(key:value:ttl:timeout:completion:)`: SET NX PX.
        case acquire(key: String, value: String, ttl: Duration)
        /// `extend(key:value:ttl:timeout:completion:)`: compare-and-pexpire.
        case extend(key: String, value: String, ttl: Duration)
        /// `release(key:value:timeout:completion:)`: compare-and-delete.
        case release(key: String, value: String)

        /// The key the call was about.
        public var key: String {
            switch self {
            case .acquire(let key, _, _), .extend(let key, _, _), .release(let key, _): key
            }
        }

        /// The lock value the call carried.
        public var value: String {
            switch self {
            case .acquire(_, let value, _), .extend(_, let value, _), .release(_, let value): value
            }
        }

        /// Whether this is an acquire call.
        public var isAcquire: Bool {
            if case .acquire = self { true } else { false }
        }

        /// Whether this is an extend call.
        public var isExtend: Bool {
            if case .extend = self { true } else { false }
        }

        /// Whether this is a release call.
        public var isRelease: Bool {
            if case .release = self { true } else { false }
        }

        /// The call in words, e.g. `acquire(r, v, 10 seconds)`.
        public var description: String {
            switch self {
            case .acquire(let key, let value, let ttl): "acquire(\(key), \(value), \(ttl))"
            case .extend(let key, let value, let ttl): "extend(\(key), \(value), \(ttl))"
            case .release(let key, let value): "release(\(key), \(value))"
            }
        }
    }

    /// The node's name, as given.
    public let name: String
    /// The clock keys expire on.
    public let clock: MockClock

    private let state: Mutex<State>
    /// Held while telling the observer about the connection, so that reports keep their order. The
    /// observer may read the node (it is called without `state` held) but must not change its
    /// connection from within the handler.
    private let reporting = Mutex<Void>(())

    private struct Entry {
        var value: String
        /// When the key expires on the node's clock; nil for a key without expiry.
        var expiresAt: Duration?
    }

    private struct State {
        var store: [String: Entry] = [:]
        var calls: [Call] = []
        var connected = true
        var closed = false
        var latency: Duration = .zero
        var isHung = false
        var hungWritesApply = true
        var errorReply: String?
        var observer: (@Sendable (Bool) -> Void)?
        /// Calls not answered yet (delayed by latency, or held by a hung node), by id.
        var pending: [Int: @Sendable (NodeResult) -> Void] = [:]
        /// Commands a hung node received, in order; they run when it resumes.
        var suspended: [(id: Int, call: Call)] = []
        var nextID = 0

        mutating func register(_ completion: @escaping @Sendable (NodeResult) -> Void) -> Int {
            nextID += 1
            pending[nextID] = completion
            return nextID
        }

        /// The live entry for `key`, dropping it first when it has expired.
        mutating func entry(_ key: String, now: Duration) -> Entry? {
            guard let entry = store[key] else { return nil }
            if let expiresAt = entry.expiresAt, now >= expiresAt {
                store[key] = nil
                return nil
            }
            return entry
        }

        /// Runs one command on the store, as Redis would.
        mutating func execute(_ call: Call, now: Duration) -> NodeResult {
            if let errorReply { return .failed(NodeFailure(.errorReply, errorReply)) }
            switch call {
            case .acquire(let key, let value, let ttl):
                let milliseconds = ttl.mockWholeMilliseconds
                guard milliseconds > 0 else {
                    return .failed(NodeFailure(.errorReply, "ERR invalid expire time in 'set' command"))
                }
                if entry(key, now: now) != nil { return .refused }
                store[key] = Entry(value: value, expiresAt: now + .milliseconds(milliseconds))
                return .succeeded
            case .extend(let key, let value, let ttl):
                guard entry(key, now: now)?.value == value else { return .refused }
                let milliseconds = ttl.mockWholeMilliseconds
                // PEXPIRE with a ttl that is not positive deletes the key (and answers 1).
                store[key]?.expiresAt = now + .milliseconds(milliseconds)
                if milliseconds <= 0 { store[key] = nil }
                return .succeeded
            case .release(let key, let value):
                guard entry(key, now: now)?.value == value else { return .refused }
                store[key] = nil
                return .succeeded
            }
        }
    }

    /// A connected node with no keys and no faults.
    /// - Parameters:
    ///   - name: the node's name; the nodes of one ``Redlock`` need distinct names.
    ///   - clock: the clock keys expire on. The default follows the real clock, so keys expire in
    ///     real time; pass a manual ``MockClock()`` (shared by the nodes) to expire them at will.
    public init(name: String, clock: MockClock = .system) {
        self.name = name
        self.clock = clock
        state = Mutex(State())
    }

    // MARK: Fault knobs

    /// Whether the node is down: every call answers ``NodeFailure/Kind/unreachable`` at once and
    /// applies nothing, and the observer is told the connection went down. Setting it is
    /// ``setConnected(_:)`` with the opposite value. The default is false.
    public var isDown: Bool {
        get { state.withLock { !$0.connected } }
        set { setConnected(!newValue) }
    }

    /// How long the node takes to answer each call (the default is zero: it answers at once, on
    /// the caller's thread). The command runs, and its effect applies, when the answer is due. When
    /// the latency is not below the call's `timeout`, the call answers ``NodeFailure/Kind/timeout``
    /// after `timeout` and the command still runs after the latency, as on a slow server.
    public var latency: Duration {
        get { state.withLock { $0.latency } }
        set {
            precondition(newValue >= .zero, "latency must not be negative (got \(newValue))")
            state.withLock { $0.latency = newValue }
        }
    }

    /// Whether the node is hung, like a SIGSTOPped Redis server: calls get no answer and, when their
    /// `timeout` passes, answer ``NodeFailure/Kind/timeout``. The commands are kept and run, in
    /// order, when the node resumes (set back to false): those still waiting then get their real
    /// answers; those that timed out run too when ``hungWritesApply`` is true. The default is false.
    public var isHung: Bool {
        get { state.withLock { $0.isHung } }
        set {
            let answers: [(@Sendable (NodeResult) -> Void, NodeResult)] = state.withLock { state in
                let resumed = state.isHung && !newValue
                state.isHung = newValue
                guard resumed else { return [] }
                let now = clock.now
                let suspended = state.suspended
                state.suspended = []
                var answers: [(@Sendable (NodeResult) -> Void, NodeResult)] = []
                for (id, call) in suspended {
                    if let completion = state.pending.removeValue(forKey: id) {
                        answers.append((completion, state.execute(call, now: now)))
                    } else if state.hungWritesApply {
                        _ = state.execute(call, now: now)
                    }
                }
                return answers
            }
            for (completion, result) in answers { completion(result) }
        }
    }

    /// Whether the commands a hung node received still run when it resumes although their calls
    /// timed out (or the node was closed), as on a real server, which runs what it read from the
    /// socket after SIGCONT. Read when the node resumes. The default is true.
    public var hungWritesApply: Bool {
        get { state.withLock { $0.hungWritesApply } }
        set { state.withLock { $0.hungWritesApply = newValue } }
    }

    /// An error the node answers every command with, as ``NodeFailure/Kind/errorReply`` with this
    /// message (e.g. `"OOM command not allowed"`), applying nothing; nil (the default) for none.
    /// Read when a command runs.
    public var errorReply: String? {
        get { state.withLock { $0.errorReply } }
        set { state.withLock { $0.errorReply = newValue } }
    }

    // MARK: Connection

    /// Whether the node is connected: not down (see ``setConnected(_:)``) and not closed.
    public var isConnected: Bool { state.withLock { $0.connected && !$0.closed } }

    /// Sets whether the node is connected and, when that changes, tells the handler registered with
    /// ``observeConnection(_:)``, on the caller's thread. A disconnected node answers every call
    /// ``NodeFailure/Kind/unreachable``, as a ``RedisNode`` does (same as ``isDown``).
    public func setConnected(_ connected: Bool) {
        reporting.withLock { _ in
            let observer: (@Sendable (Bool) -> Void)? = state.withLock { state in
                guard state.connected != connected else { return nil }
                state.connected = connected
                return state.closed ? nil : state.observer
            }
            observer?(connected)
        }
    }

    /// Registers the one handler told each time the connection goes up (true) or down (false),
    /// replacing any earlier one. When the node is connected, the handler is told `true` at once.
    public func observeConnection(_ handler: @escaping @Sendable (Bool) -> Void) {
        reporting.withLock { _ in
            let connected = state.withLock { state in
                state.observer = handler
                return state.connected && !state.closed
            }
            if connected { handler(true) }
        }
    }

    /// Closes the node: later calls answer ``NodeFailure/Kind/closed`` and calls still waiting for
    /// an answer (latency, hung) answer it at once. The observer is told the connection went down.
    public func close() async {
        reporting.withLock { _ in
            typealias Completion = @Sendable (NodeResult) -> Void
            let (waiting, observer): ([Completion], (@Sendable (Bool) -> Void)?) = state.withLock { state in
                guard !state.closed else { return ([], nil) }
                state.closed = true
                let waiting = state.pending.sorted { $0.key < $1.key }.map(\.value)
                state.pending = [:]
                return (waiting, state.connected ? state.observer : nil)
            }
            for completion in waiting { completion(.failed(NodeFailure(.closed, "\(name) was closed"))) }
            observer?(false)
        }
    }

    /// Whether ``close()`` was called.
    public var isClosed: Bool { state.withLock { $0.closed } }

    // MARK: Inspection

    /// The value `key` holds now; nil when it is absent or expired.
    public func value(of key: String) -> String? {
        let now = clock.now
        return state.withLock { $0.entry(key, now: now)?.value }
    }

    /// How long `key` lives on; nil when it is absent, expired, or set without expiry.
    public func ttl(of key: String) -> Duration? {
        let now = clock.now
        return state.withLock { $0.entry(key, now: now)?.expiresAt.map { $0 - now } }
    }

    /// Sets `key` to `value` whatever it held (plain `SET`, e.g. to play another lock holder),
    /// expiring after `ttl` (which must be positive), or never when nil. Not logged in ``calls``
    /// and not affected by faults.
    public func set(key: String, value: String, ttl: Duration? = nil) {
        precondition(ttl.map { $0 > .zero } ?? true, "ttl must be positive (got \(ttl!))")
        let now = clock.now
        state.withLock { $0.store[key] = Entry(value: value, expiresAt: ttl.map { now + $0 }) }
    }

    /// The live keys, in no particular order.
    public var keys: [String] {
        let now = clock.now
        return state.withLock { state in
            state.store.keys.filter { state.entry($0, now: now) != nil }
        }
    }

    /// Every call made to the node, in the order they were made (whether or not a fault stopped
    /// them); ``removeAllCalls()`` forgets them.
    public var calls: [Call] { state.withLock { $0.calls } }

    /// Removes every key, like `FLUSHALL`. The call log is kept.
    public func removeAll() {
        state.withLock { $0.store = [:] }
    }

    /// Forgets the calls logged so far.
    public func removeAllCalls() {
        state.withLock { $0.calls = [] }
    }

    // MARK: RedlockNode

    /// `SET key value NX PX ttl`: ``NodeResult/succeeded`` when set, ``NodeResult/refused`` when
    /// the key holds a value.
    public func acquire(
        key: String, value: String, ttl: Duration, timeout: Duration,
        completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        perform(.acquire(key: key, value: value, ttl: ttl), timeout: timeout, completion)
    }

    /// Compare-and-pexpire: sets the key's ttl only while it holds `value`; ``NodeResult/refused``
    /// otherwise. Never creates the key.
    public func extend(
        key: String, value: String, ttl: Duration, timeout: Duration,
        completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        perform(.extend(key: key, value: value, ttl: ttl), timeout: timeout, completion)
    }

    /// Compare-and-delete: deletes the key only while it holds `value`; ``NodeResult/refused``
    /// otherwise.
    public func release(
        key: String, value: String, timeout: Duration,
        completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        perform(.release(key: key, value: value), timeout: timeout, completion)
    }

    private enum Plan {
        case answer(NodeResult)
        case delayed(id: Int, latency: Duration)
        case suspended(id: Int)
    }

    private func perform(
        _ call: Call, timeout: Duration, _ completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        let now = clock.now
        let plan: Plan = state.withLock { state in
            state.calls.append(call)
            if state.closed { return .answer(.failed(NodeFailure(.closed, "\(name) was closed"))) }
            if !state.connected { return .answer(.failed(NodeFailure(.unreachable, "\(name) is down"))) }
            if state.isHung {
                let id = state.register(completion)
                state.suspended.append((id, call))
                return .suspended(id: id)
            }
            if state.latency > .zero {
                return .delayed(id: state.register(completion), latency: state.latency)
            }
            return .answer(state.execute(call, now: now))
        }
        switch plan {
        case .answer(let result):
            completion(result)
        case .delayed(let id, let latency):
            if latency >= timeout {
                after(timeout) { self.timeOut(id) }
            }
            after(latency) {
                let now = self.clock.now
                let answer: (@Sendable (NodeResult) -> Void, NodeResult)? = self.state.withLock { state in
                    let result = state.execute(call, now: now)
                    return state.pending.removeValue(forKey: id).map { ($0, result) }
                }
                if let (completion, result) = answer { completion(result) }
            }
        case .suspended(let id):
            after(timeout) { self.timeOut(id) }
        }
    }

    /// Answers call `id` with a timeout unless it was answered already.
    private func timeOut(_ id: Int) {
        let completion = state.withLock { $0.pending.removeValue(forKey: id) }
        completion?(.failed(NodeFailure(.timeout, "\(name) did not answer in time")))
    }

    private func after(_ delay: Duration, _ work: @escaping @Sendable () -> Void) {
        let nanoseconds = max(0, Int(clamping: delay.mockWholeNanoseconds))
        DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(nanoseconds), execute: work)
    }
}

extension Duration {
    /// The duration in whole milliseconds, rounded toward zero, as sent to Redis.
    fileprivate var mockWholeMilliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }

    /// The duration in whole nanoseconds, saturating.
    fileprivate var mockWholeNanoseconds: Int64 {
        let (seconds, attoseconds) = components
        let (product, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return seconds < 0 ? .min : .max }
        let (sum, sumOverflow) = product.addingReportingOverflow(attoseconds / 1_000_000_000)
        return sumOverflow ? .max : sum
    }
}
