import Dispatch
import Hiredis
import MultiRedlock

/// An in-memory ``RedlockNode`` that behaves like one Redis master, for unit tests without Redis.
///
/// It mirrors ``RedisNode``: `acquire` is `SET key value NX PX ttl` (set only while the key is absent
/// or expired), `extend` is compare-and-pexpire (never creates a key) and `release` is
/// compare-and-delete; the multi-resource and fencing operations follow the same Lua scripts. Ttls
/// are whole milliseconds, as sent to Redis, and a key expires when `clock.now >= setAt + ttl` on
/// the node's ``MockClock``.
///
/// Faults can be switched on and off at any time, from any thread: ``isDown``, ``latency``,
/// ``isHung`` (with ``hungWritesApply``), ``errorReply`` and ``restart(keepingData:)``. Every call
/// is logged in ``calls``.
///
/// ```swift
/// let clock = MockClock()
/// let nodes = (1...3).map { MockRedlockNode(name: "node\($0)", clock: clock) }
/// let redlock = try Redlock(nodes: nodes, options: RedlockOptions(id: "test"))
/// let lock = try await redlock.lock("invoice-42", ttl: .seconds(10))
/// clock.advance(by: .seconds(11))  // the lock has expired on every node
/// ```
public final class MockRedlockNode: FencingRedlockNode {
    /// One call made to the node, as logged in ``MockRedlockNode/calls``.
    public enum Call: Sendable, Hashable, CustomStringConvertible {
        /// `acquire(key:value:ttl:timeout:completion:)` (or a one-key `acquire(keys:…)`): SET NX PX.
        case acquire(key: String, value: String, ttl: Duration)
        /// `extend(key:value:ttl:timeout:completion:)` (or a one-key `extend(keys:…)`):
        /// compare-and-pexpire.
        case extend(key: String, value: String, ttl: Duration)
        /// `release(key:value:timeout:completion:)` (or a one-key `release(keys:…)`):
        /// compare-and-delete.
        case release(key: String, value: String)
        /// `acquire(keys:value:ttl:timeout:completion:)` with several keys: all set, or none.
        case acquireAll(keys: [String], value: String, ttl: Duration)
        /// `extend(keys:value:ttl:timeout:completion:)` with several keys: all extended only when all
        /// hold the value.
        case extendAll(keys: [String], value: String, ttl: Duration)
        /// `release(keys:value:timeout:completion:)` with several keys: each one holding the value is
        /// deleted.
        case releaseAll(keys: [String], value: String)
        /// `acquireFenced(key:counterKey:value:ttl:timeout:completion:)`: SET NX PX, answering the
        /// fencing counter.
        case acquireFenced(key: String, counterKey: String, value: String, ttl: Duration)
        /// `raiseFence(key:counterKey:value:token:timeout:completion:)`: raises the fencing counter.
        case raiseFence(key: String, counterKey: String, value: String, token: Int64)

        /// The lock keys the call was about (the counter key of a fencing call is not one).
        public var keys: [String] {
            switch self {
            case .acquire(let key, _, _), .extend(let key, _, _), .release(let key, _),
                .acquireFenced(let key, _, _, _), .raiseFence(let key, _, _, _):
                [key]
            case .acquireAll(let keys, _, _), .extendAll(let keys, _, _), .releaseAll(let keys, _):
                keys
            }
        }

        /// The key the call was about: the first of ``keys``.
        public var key: String { keys.first ?? "" }

        /// The lock value the call carried.
        public var value: String {
            switch self {
            case .acquire(_, let value, _), .extend(_, let value, _), .release(_, let value),
                .acquireAll(_, let value, _), .extendAll(_, let value, _), .releaseAll(_, let value),
                .acquireFenced(_, _, let value, _), .raiseFence(_, _, let value, _):
                value
            }
        }

        /// Whether this is an acquire call (``acquire(key:value:ttl:)``,
        /// ``acquireAll(keys:value:ttl:)`` or ``acquireFenced(key:counterKey:value:ttl:)``).
        public var isAcquire: Bool {
            switch self {
            case .acquire, .acquireAll, .acquireFenced: true
            default: false
            }
        }

        /// Whether this is an extend call (``extend(key:value:ttl:)`` or
        /// ``extendAll(keys:value:ttl:)``).
        public var isExtend: Bool {
            switch self {
            case .extend, .extendAll: true
            default: false
            }
        }

        /// Whether this is a release call (``release(key:value:)`` or ``releaseAll(keys:value:)``).
        public var isRelease: Bool {
            switch self {
            case .release, .releaseAll: true
            default: false
            }
        }

        /// The call in words, e.g. `acquire(r, v, 10.0 seconds)`.
        public var description: String {
            switch self {
            case .acquire(let key, let value, let ttl): "acquire(\(key), \(value), \(ttl))"
            case .extend(let key, let value, let ttl): "extend(\(key), \(value), \(ttl))"
            case .release(let key, let value): "release(\(key), \(value))"
            case .acquireAll(let keys, let value, let ttl): "acquireAll(\(keys), \(value), \(ttl))"
            case .extendAll(let keys, let value, let ttl): "extendAll(\(keys), \(value), \(ttl))"
            case .releaseAll(let keys, let value): "releaseAll(\(keys), \(value))"
            case .acquireFenced(let key, let counterKey, let value, let ttl):
                "acquireFenced(\(key), \(counterKey), \(value), \(ttl))"
            case .raiseFence(let key, let counterKey, let value, let token):
                "raiseFence(\(key), \(counterKey), \(value), \(token))"
            }
        }
    }

    /// The node's name, as given.
    public let name: String
    /// The clock keys expire on.
    public let clock: MockClock

    private let state: Locked<State>
    /// Held while telling the observer about the connection, so that reports keep their order. The
    /// observer may read the node (it is called without `state` held) but must not change its
    /// connection from within the handler.
    private let reporting = Locked<Void>(())

    /// A command's answer: the result, and the fencing counter for `acquireFenced`.
    private typealias Reply = (result: NodeResult, counter: Int64)
    private typealias Answer = @Sendable (Reply) -> Void

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
        var pending: [Int: Answer] = [:]
        /// Commands a hung node received, in order; they run when it resumes.
        var suspended: [(id: Int, call: Call)] = []
        var nextID = 0
        /// The server process: a restart starts a new one, and commands sent to the old one never run.
        var generation = 0
        /// When the server last restarted, on the node's clock.
        var restartedAt: Duration?
        /// The server's identity (`run_id`), if set.
        var serverID: String?

        mutating func register(_ answer: @escaping Answer) -> Int {
            nextID += 1
            pending[nextID] = answer
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

        /// Runs one command on the store, as Redis (and its Lua scripts) would.
        mutating func execute(_ call: Call, now: Duration) -> Reply {
            if let errorReply { return (.failed(NodeFailure(.errorReply, errorReply)), 0) }
            let invalidExpireTime: Reply = (
                .failed(NodeFailure(.errorReply, "ERR invalid expire time in 'set' command")), 0
            )
            switch call {
            case .acquire(let key, let value, let ttl):
                let milliseconds = ttl.wholeMilliseconds
                guard milliseconds > 0 else { return invalidExpireTime }
                if entry(key, now: now) != nil { return (.refused, 0) }
                store[key] = Entry(value: value, expiresAt: now + .milliseconds(milliseconds))
                return (.succeeded, 0)
            case .extend(let key, let value, let ttl):
                guard entry(key, now: now)?.value == value else { return (.refused, 0) }
                pexpire(key, ttl.wholeMilliseconds, now: now)
                return (.succeeded, 0)
            case .release(let key, let value):
                guard entry(key, now: now)?.value == value else { return (.refused, 0) }
                store[key] = nil
                return (.succeeded, 0)
            case .acquireAll(let keys, let value, let ttl):
                if keys.contains(where: { entry($0, now: now) != nil }) { return (.refused, 0) }
                let milliseconds = ttl.wholeMilliseconds
                guard milliseconds > 0 || keys.isEmpty else { return invalidExpireTime }
                for key in keys {
                    store[key] = Entry(value: value, expiresAt: now + .milliseconds(milliseconds))
                }
                return (.succeeded, 0)
            case .extendAll(let keys, let value, let ttl):
                guard keys.allSatisfy({ entry($0, now: now)?.value == value }) else { return (.refused, 0) }
                for key in keys { pexpire(key, ttl.wholeMilliseconds, now: now) }
                return (.succeeded, 0)
            case .releaseAll(let keys, let value):
                var released = 0
                for key in keys where entry(key, now: now)?.value == value {
                    store[key] = nil
                    released += 1
                }
                return (released > 0 ? .succeeded : .refused, 0)
            case .acquireFenced(let key, let counterKey, let value, let ttl):
                let milliseconds = ttl.wholeMilliseconds
                guard milliseconds > 0 else { return invalidExpireTime }
                if entry(key, now: now) != nil { return (.refused, 0) }
                store[key] = Entry(value: value, expiresAt: now + .milliseconds(milliseconds))
                guard let counter = self.counter(counterKey, now: now) else {
                    return (
                        .failed(NodeFailure(.errorReply, "unexpected reply: the counter is not a number")), 0
                    )
                }
                return (.succeeded, counter)
            case .raiseFence(let key, let counterKey, let value, let token):
                guard entry(key, now: now)?.value == value else { return (.refused, 0) }
                guard let counter = self.counter(counterKey, now: now) else {
                    return (.failed(NodeFailure(.errorReply, "ERR the counter is not a number")), 0)
                }
                if token > counter { store[counterKey] = Entry(value: String(token), expiresAt: nil) }
                return (.succeeded, 0)
            }
        }

        /// PEXPIRE: a ttl that is not positive deletes the key.
        mutating func pexpire(_ key: String, _ milliseconds: Int64, now: Duration) {
            if milliseconds > 0 {
                store[key]?.expiresAt = now + .milliseconds(milliseconds)
            } else {
                store[key] = nil
            }
        }

        /// The fencing counter under `counterKey` (0 when absent); nil when it is not a number.
        mutating func counter(_ counterKey: String, now: Duration) -> Int64? {
            guard let entry = entry(counterKey, now: now) else { return 0 }
            return Int64(entry.value)
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
        state = Locked(State())
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
            let answers: [(Answer, Reply)] = state.withLock { state in
                let resumed = state.isHung && !newValue
                state.isHung = newValue
                guard resumed else { return [] }
                let now = clock.now
                let suspended = state.suspended
                state.suspended = []
                var answers: [(Answer, Reply)] = []
                for (id, call) in suspended {
                    if let answer = state.pending.removeValue(forKey: id) {
                        answers.append((answer, state.execute(call, now: now)))
                    } else if state.hungWritesApply {
                        _ = state.execute(call, now: now)
                    }
                }
                return answers
            }
            for (answer, reply) in answers { answer(reply) }
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

    /// Restarts the server process, as a `redis-server` killed and started again.
    ///
    /// Without persistence (the default) every key is lost. Calls waiting for an answer (latency,
    /// hung) answer ``NodeFailure/Kind/connectionLost`` and their commands never run, and a hang
    /// ends. A connected node's observer is told the connection went down and came back. Then, as a
    /// ``RedisNode`` that sees the server's new `run_id`, ``timeSinceRestart`` counts from now on the
    /// node's clock, and a ``Redlock`` does not count the node's grants for its
    /// ``RedlockOptions/restartQuarantine`` (the keys are set all the same).
    /// - Parameter keepingData: true for a server that keeps its data across restarts
    ///   (`appendfsync always`): the keys survive, with their expiry.
    public func restart(keepingData: Bool = false) {
        reporting.withLock { _ in
            let now = clock.now
            let (waiting, observer): ([Answer], (@Sendable (Bool) -> Void)?) = state.withLock { state in
                if !keepingData { state.store = [:] }
                let waiting = state.pending.sorted { $0.key < $1.key }.map(\.value)
                state.pending = [:]
                state.suspended = []
                state.isHung = false
                state.generation += 1
                state.restartedAt = now
                return (waiting, state.connected && !state.closed ? state.observer : nil)
            }
            let lost = NodeFailure(.connectionLost, "\(name) restarted")
            for answer in waiting { answer((.failed(lost), 0)) }
            observer?(false)
            observer?(true)
        }
    }

    /// How long ago, on the node's clock, the node last restarted (``restart(keepingData:)``); nil
    /// when it never did.
    public var timeSinceRestart: Duration? {
        state.withLock { state in state.restartedAt.map { clock.now - $0 } }
    }

    /// The server identity the node reports (Redis's `run_id`); nil (the default) for none. Give two
    /// nodes the same identity to play one server reached under two addresses.
    public var serverID: String? {
        get { state.withLock { $0.serverID } }
        set { state.withLock { $0.serverID = newValue } }
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
            let (waiting, observer): ([Answer], (@Sendable (Bool) -> Void)?) = state.withLock { state in
                guard !state.closed else { return ([], nil) }
                state.closed = true
                let waiting = state.pending.sorted { $0.key < $1.key }.map(\.value)
                state.pending = [:]
                return (waiting, state.connected ? state.observer : nil)
            }
            let closed = NodeFailure(.closed, "\(name) was closed")
            for answer in waiting { answer((.failed(closed), 0)) }
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

    /// The live keys (fencing counters included), in no particular order.
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

    /// Acquire: `SET key value NX PX ttl` for one key; for several, sets every key, or none when any
    /// is held (``NodeResult/refused``), as on a ``RedisNode``.
    public func acquire(
        keys: [String], value: String, ttl: Duration, timeout: Duration,
        completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        let call: Call =
            keys.count == 1
            ? .acquire(key: keys[0], value: value, ttl: ttl) : .acquireAll(keys: keys, value: value, ttl: ttl)
        perform(call, timeout: timeout) { completion($0.result) }
    }

    /// Compare-and-pexpire: extends every key only when all of them hold `value`;
    /// ``NodeResult/refused`` otherwise. Never creates a key.
    public func extend(
        keys: [String], value: String, ttl: Duration, timeout: Duration,
        completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        let call: Call =
            keys.count == 1
            ? .extend(key: keys[0], value: value, ttl: ttl) : .extendAll(keys: keys, value: value, ttl: ttl)
        perform(call, timeout: timeout) { completion($0.result) }
    }

    /// Compare-and-delete: deletes each key that holds `value`; ``NodeResult/succeeded`` when any
    /// did, ``NodeResult/refused`` otherwise.
    public func release(
        keys: [String], value: String, timeout: Duration,
        completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        let call: Call =
            keys.count == 1 ? .release(key: keys[0], value: value) : .releaseAll(keys: keys, value: value)
        perform(call, timeout: timeout) { completion($0.result) }
    }

    /// ``acquire(keys:value:ttl:timeout:completion:)`` for one key, for tests that drive the node
    /// directly.
    public func acquire(
        key: String, value: String, ttl: Duration, timeout: Duration,
        completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        acquire(keys: [key], value: value, ttl: ttl, timeout: timeout, completion: completion)
    }

    /// ``extend(keys:value:ttl:timeout:completion:)`` for one key.
    public func extend(
        key: String, value: String, ttl: Duration, timeout: Duration,
        completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        extend(keys: [key], value: value, ttl: ttl, timeout: timeout, completion: completion)
    }

    /// ``release(keys:value:timeout:completion:)`` for one key.
    public func release(
        key: String, value: String, timeout: Duration,
        completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        release(keys: [key], value: value, timeout: timeout, completion: completion)
    }

    /// Fenced acquire: `SET key value NX PX ttl` and, when set, the fencing counter under
    /// `counterKey` (0 when there is none yet).
    public func acquireFenced(
        key: String, counterKey: String, value: String, ttl: Duration, timeout: Duration,
        completion: @escaping @Sendable (NodeResult, Int64) -> Void
    ) {
        perform(.acquireFenced(key: key, counterKey: counterKey, value: value, ttl: ttl), timeout: timeout) {
            completion($0.result, $0.counter)
        }
    }

    /// Fencing write-back: raises the counter under `counterKey` to `token` (never lowers it), only
    /// while `key` holds `value`; ``NodeResult/refused`` otherwise.
    public func raiseFence(
        key: String, counterKey: String, value: String, token: Int64, timeout: Duration,
        completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        perform(.raiseFence(key: key, counterKey: counterKey, value: value, token: token), timeout: timeout) {
            completion($0.result)
        }
    }

    private enum Plan {
        case answer(Reply)
        case delayed(id: Int, latency: Duration, generation: Int)
        case suspended(id: Int)
    }

    private func perform(_ call: Call, timeout: Duration, _ answer: @escaping Answer) {
        let now = clock.now
        let plan: Plan = state.withLock { state in
            state.calls.append(call)
            if state.closed { return .answer((.failed(NodeFailure(.closed, "\(name) was closed")), 0)) }
            if !state.connected { return .answer((.failed(NodeFailure(.unreachable, "\(name) is down")), 0)) }
            if state.isHung {
                let id = state.register(answer)
                state.suspended.append((id, call))
                return .suspended(id: id)
            }
            if state.latency > .zero {
                return .delayed(
                    id: state.register(answer), latency: state.latency, generation: state.generation)
            }
            return .answer(state.execute(call, now: now))
        }
        switch plan {
        case .answer(let reply):
            answer(reply)
        case .delayed(let id, let latency, let generation):
            if latency >= timeout {
                after(timeout) { self.timeOut(id) }
            }
            after(latency) {
                let now = self.clock.now
                let due: (Answer, Reply)? = self.state.withLock { state in
                    // A restart in between killed the server the command was sent to.
                    guard state.generation == generation else { return nil }
                    let reply = state.execute(call, now: now)
                    return state.pending.removeValue(forKey: id).map { ($0, reply) }
                }
                if let (answer, reply) = due { answer(reply) }
            }
        case .suspended(let id):
            after(timeout) { self.timeOut(id) }
        }
    }

    /// Answers call `id` with a timeout unless it was answered already.
    private func timeOut(_ id: Int) {
        let answer = state.withLock { $0.pending.removeValue(forKey: id) }
        answer?((.failed(NodeFailure(.timeout, "\(name) did not answer in time")), 0))
    }

    private func after(_ delay: Duration, _ work: @escaping @Sendable () -> Void) {
        let nanoseconds = max(0, Int(clamping: delay.nanosecondsClamped))
        DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(nanoseconds), execute: work)
    }
}
