import Dispatch
import MultiRedlock
import MultiRedlockTesting

/// One line of a run's history.
struct Entry: Sendable {
    enum Kind: Sendable { case op, fault, node, note }
    /// Milliseconds from the start of the run.
    var time: Double
    var kind: Kind
    var client: Int?
    /// The lock value the line is about (node calls), for filtering.
    var value: String?
    var text: String

    var line: String {
        let stamp = String(Int(time * 10)).leftPadded(6)
        return "\(stamp.dropLast())\(".")\(stamp.suffix(1))ms  \(text)"
    }
}

extension String {
    func leftPadded(_ width: Int) -> String {
        count >= width ? self : String(repeating: " ", count: width - count) + self
    }
}

/// A lock value in short: the client's id and the last 4 hex digits, e.g. `c1#3fa2`.
func short(_ value: String) -> String {
    let client = value.split(separator: "_").first.map(String.init) ?? value
    return "\(client)#\(value.suffix(4))"
}

/// The history of one run, in the order things happened.
final class Recorder: Sendable {
    let start = ContinuousClock.now
    /// The start on `CLOCK_MONOTONIC`, the clock `MutualExclusionChecker` measures holds on.
    let startMonotonic = MutualExclusionChecker.now()
    private let entries = Locked<[Entry]>([])

    var elapsedMs: Double { Self.ms(ContinuousClock.now - start) }

    static func ms(_ duration: Duration) -> Double {
        let (seconds, attoseconds) = duration.components
        return Double(seconds) * 1000 + Double(attoseconds) / 1e15
    }

    /// A time on `CLOCK_MONOTONIC` as milliseconds from the start.
    func ms(monotonic: UInt64) -> Double {
        (Double(monotonic) - Double(startMonotonic)) / 1e6
    }

    func log(_ kind: Entry.Kind, _ text: String, client: Int? = nil, value: String? = nil) {
        let entry = Entry(time: elapsedMs, kind: kind, client: client, value: value, text: text)
        entries.withLock { $0.append(entry) }
    }

    var all: [Entry] { entries.withLock { $0 } }
}

/// One simulated Redis master: a `MockRedlockNode` (with a clock of its own, following the real one)
/// and the faults the mock does not have, which every client's connection to it applies.
final class Server: Sendable {
    let index: Int
    let node: MockRedlockNode
    let clock: MockClock
    let recorder: Recorder
    private let state = Locked(State())

    struct State {
        var loseReplies = false
        var failReleases = false
        var connections: [Connection] = []
    }

    /// Whether restarts are quarantined; when not (a negative control), a client counts a restarted
    /// node's grants at once, as a client without the quarantine would.
    let quarantine: Bool

    init(index: Int, recorder: Recorder, quarantine: Bool) {
        self.index = index
        self.recorder = recorder
        self.quarantine = quarantine
        clock = MockClock(followingSystemClock: true)
        node = MockRedlockNode(name: "n\(index)", clock: clock)
    }

    /// Starts passing the node's connection changes on to every client's connection.
    func start() {
        node.observeConnection { [weak self] up in
            guard let self else { return }
            for connection in self.state.withLock({ $0.connections }) { connection.serverChanged(up) }
        }
    }

    func connect(client: Int) -> Connection {
        let connection = Connection(server: self, client: client)
        state.withLock { $0.connections.append(connection) }
        return connection
    }

    var loseReplies: Bool {
        get { state.withLock { $0.loseReplies } }
        set { state.withLock { $0.loseReplies = newValue } }
    }

    var failReleases: Bool {
        get { state.withLock { $0.failReleases } }
        set { state.withLock { $0.failReleases = newValue } }
    }
}

/// One client's connection to a ``Server``: a `RedlockNode` of its own (a `Redlock` owns its nodes'
/// observer and closes them), passing commands to the shared mock node, applying the faults the
/// mock lacks, and logging every call with its answer.
final class Connection: FencingRedlockNode {
    let server: Server
    let client: Int
    let name: String
    private let state = Locked(State())

    private typealias Answer = @Sendable (NodeResult, Int64) -> Void

    private struct State {
        var closed = false
        var observer: (@Sendable (Bool) -> Void)?
        var pending: [Int: Answer] = [:]
        var nextID = 0
    }

    /// How long ago the server restarted: each client's `Redlock` applies its quarantine from it.
    var timeSinceRestart: Duration? { server.node.timeSinceRestart }

    init(server: Server, client: Int) {
        self.server = server
        self.client = client
        name = server.node.name
    }

    var isConnected: Bool { !state.withLock { $0.closed } && server.node.isConnected }

    func serverChanged(_ up: Bool) {
        let observer = state.withLock { $0.closed ? nil : $0.observer }
        observer?(up)
    }

    func observeConnection(_ handler: @escaping @Sendable (Bool) -> Void) {
        state.withLock { $0.observer = handler }
        if isConnected { handler(true) }
    }

    func close() async {
        let waiting: [Answer] = state.withLock { state in
            guard !state.closed else { return [] }
            state.closed = true
            defer { state.pending = [:] }
            return state.pending.sorted { $0.key < $1.key }.map(\.value)
        }
        for answer in waiting { answer(.failed(NodeFailure(.closed, "\(name) was closed")), 0) }
    }

    /// Sends one command: `send` runs it on the mock with the completion to call.
    private func forward(
        _ text: String, value: String, isRelease: Bool, timeout: Duration,
        completion: @escaping Answer, send: (@escaping Answer) -> Void
    ) {
        let id: Int? = state.withLock { state in
            guard !state.closed else { return nil }
            state.nextID += 1
            state.pending[state.nextID] = completion
            return state.nextID
        }
        guard let id else {
            return completion(.failed(NodeFailure(.closed, "\(name) was closed")), 0)
        }
        let recorder = server.recorder
        let server = self.server
        let label = "\(name) ← c\(client) \(text) [\(short(value))]"
        let answer: Answer = { [weak self] result, counter in
            guard let done = self?.state.withLock({ $0.pending.removeValue(forKey: id) }) else { return }
            recorder.log(.node, "\(label) → \(describe(result))", client: self?.client, value: value)
            done(result, counter)
        }
        if isRelease && server.failReleases {
            return answer(.failed(NodeFailure(.errorReply, "ERR simulated release failure")), 0)
        }
        if server.loseReplies {
            recorder.log(.node, "\(label) applied, reply lost", client: client, value: value)
            send { _, _ in }
            let nanoseconds = Int(clamping: Int64(Recorder.ms(timeout) * 1e6))
            DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(nanoseconds)) {
                answer(.failed(NodeFailure(.timeout, "\(self.name) did not answer in time (reply lost)")), 0)
            }
            return
        }
        send(answer)
    }

    func acquire(
        keys: [String], value: String, ttl: Duration, timeout: Duration,
        completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        forward(
            "SET \(keys.joined(separator: ",")) NX PX \(Int(Recorder.ms(ttl)))", value: value,
            isRelease: false,
            timeout: timeout, completion: { result, _ in completion(result) },
            send: { answer in
                server.node.acquire(keys: keys, value: value, ttl: ttl, timeout: timeout) { answer($0, 0) }
            })
    }

    func extend(
        keys: [String], value: String, ttl: Duration, timeout: Duration,
        completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        forward(
            "PEXPIRE \(keys.joined(separator: ",")) \(Int(Recorder.ms(ttl)))", value: value, isRelease: false,
            timeout: timeout, completion: { result, _ in completion(result) },
            send: { answer in
                server.node.extend(keys: keys, value: value, ttl: ttl, timeout: timeout) { answer($0, 0) }
            })
    }

    func release(
        keys: [String], value: String, timeout: Duration, completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        forward(
            "DEL \(keys.joined(separator: ","))", value: value, isRelease: true, timeout: timeout,
            completion: { result, _ in completion(result) },
            send: { answer in
                server.node.release(keys: keys, value: value, timeout: timeout) { answer($0, 0) }
            })
    }

    func acquireFenced(
        key: String, counterKey: String, value: String, ttl: Duration, timeout: Duration,
        completion: @escaping @Sendable (NodeResult, Int64) -> Void
    ) {
        forward(
            "SET \(key) NX PX \(Int(Recorder.ms(ttl))) +counter", value: value, isRelease: false,
            timeout: timeout, completion: completion,
            send: { answer in
                server.node.acquireFenced(
                    key: key, counterKey: counterKey, value: value, ttl: ttl, timeout: timeout,
                    completion: answer
                )
            })
    }

    func raiseFence(
        key: String, counterKey: String, value: String, token: Int64, timeout: Duration,
        completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        forward(
            "FENCE \(key) \(token)", value: value, isRelease: false, timeout: timeout,
            completion: { result, _ in completion(result) },
            send: { answer in
                server.node.raiseFence(
                    key: key, counterKey: counterKey, value: value, token: token, timeout: timeout
                ) { answer($0, 0) }
            })
    }
}

func describe(_ result: NodeResult) -> String {
    switch result {
    case .succeeded: "ok"
    case .refused: "refused"
    case .failed(let failure):
        "\(failure.kind.rawValue)\(failure.kind == .errorReply ? " (\(failure.message.prefix(24)))" : "")"
    }
}

/// Measures how late the process's tasks wake up (a loaded machine stalls them): an operation over
/// its bound by no more than the stalls seen meanwhile is the scheduler's delay, not Redlock's.
final class LagMonitor: Sendable {
    static let shared = LagMonitor()
    private let stalls = Locked<[(end: ContinuousClock.Instant, excess: Duration)]>([])
    /// The same, measured on Dispatch's global queue (where the mock nodes' timers run).
    private let dispatchStalls = Locked<[(end: ContinuousClock.Instant, excess: Duration)]>([])

    private func probeDispatch(_ before: ContinuousClock.Instant) {
        DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(2)) { [self] in
            let now = ContinuousClock.now
            let excess = now - before - .milliseconds(2)
            if excess > .milliseconds(3) {
                dispatchStalls.withLock { stalls in
                    stalls.append((now, excess))
                    stalls.removeAll { now - $0.end > .seconds(30) }
                }
            }
            probeDispatch(now)
        }
    }

    private init() {
        Task.detached { [self] in
            let tick = Duration.milliseconds(2)
            while true {
                let before = ContinuousClock.now
                try? await Task.sleep(for: tick)
                let now = ContinuousClock.now
                let excess = now - before - tick
                guard excess > .milliseconds(3) else { continue }
                stalls.withLock { stalls in
                    stalls.append((now, excess))
                    stalls.removeAll { now - $0.end > .seconds(30) }
                }
            }
        }
    }

    /// Starts measuring (once).
    func start() {
        _ = Self.dispatchProbe
    }

    private static let dispatchProbe: Void = shared.probeDispatch(.now)

    /// How long tasks (or Dispatch's timers, whichever more) were stalled between `from` and `to`.
    func stalled(from: ContinuousClock.Instant, to: ContinuousClock.Instant) -> Duration {
        func sum(_ stalls: [(end: ContinuousClock.Instant, excess: Duration)]) -> Duration {
            stalls.filter { $0.end > from && $0.end - $0.excess < to }.reduce(.zero) { $0 + $1.excess }
        }
        return max(stalls.withLock { sum($0) }, dispatchStalls.withLock { sum($0) })
    }
}
