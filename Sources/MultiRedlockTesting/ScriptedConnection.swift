import Dispatch
import Hiredis

/// A connection to no server: it answers each command as a script says, and records what was sent.
///
/// Put it under a ``RedisNode`` to unit-test the node's reply handling without a server:
///
/// ```swift
/// let connection = ScriptedConnection()
/// let node = RedisNode { connection.observe($0) }
/// connection.script(.reply(.error("NOSCRIPT No matching script.")), .reply(.integer(1)))
/// node.release(key: "k", value: "v", timeout: .seconds(1)) { result in … }   // .succeeded
/// // connection.sent: the EVALSHA, then the EVAL
/// ```
///
/// Each command that reaches it (connected, not closed) is recorded in ``sent`` and takes the next
/// scripted ``Step``; when the script is empty, the ``respond(_:)`` handler chooses one, and without
/// a handler the command gets an error reply saying nothing was scripted. Like ``RedisConnection``:
/// completions run on a serial queue of the connection's own, never within ``send(_:timeout:completion:)``;
/// a command whose deadline passes before its step answers fails with a timeout (outcome unknown);
/// while disconnected, commands fail at once with ``RedisConnectionError/Kind/notConnected`` (not
/// recorded); after ``close()``, with ``RedisConnectionError/Kind/closed``. Unlike it: answers
/// come when each step says, not necessarily in the order the commands were sent, and a timeout
/// fails only its own command (script a ``Step/drop(after:)`` to drop the connection).
public final class ScriptedConnection: RedisCommandChannel {
    /// What the connection does with one command.
    public enum Step: Sendable {
        /// Answers `reply` after `delay` (`.zero`: at once).
        case reply(RedisReply, after: Duration = .zero)
        /// Fails the command with an error of `kind` (`outcomeUnknown` as ``RedisConnectionError``
        /// defaults it for that kind), after `delay`.
        case fail(RedisConnectionError.Kind, outcomeUnknown: Bool? = nil, after: Duration = .zero)
        /// Never answers: the command times out at its deadline.
        case hang
        /// After `delay`, the connection drops while the command is pending (``disconnect(_:)``):
        /// every pending command fails with ``RedisConnectionError/Kind/connectionLost``.
        case drop(after: Duration = .zero)
    }

    /// A command that reached the connection, and the deadline it was given.
    public struct Sent: Sendable, Hashable {
        public var command: RedisCommand
        public var timeout: Duration
    }

    public let server: RedisServer
    private let queue = DispatchQueue(label: "multiredlock.scripted-connection")
    private let state: Locked<State>

    private typealias Completion = @Sendable (Result<RedisReply, RedisConnectionError>) -> Void

    private struct State {
        var observer: (@Sendable (RedisConnectionState) -> Void)?
        var connected: Bool
        var closed = false
        /// The `run_id` of the "server process" behind the connection.
        var serverRunID: String?
        /// The `run_id` as of the last handshake.
        var runID: String?
        var restartDetectedAt: ContinuousClock.Instant?
        var steps: [Step] = []
        var responder: (@Sendable (RedisCommand) -> Step)?
        var sent: [Sent] = []
        var pending: [UInt64: Completion] = [:]
        var nextID: UInt64 = 0
    }

    /// A connection that is up (reported to the observer once it is set) or down.
    /// - Parameters:
    ///   - server: the address it claims to talk to (shown in errors and the node's name).
    ///   - connected: whether it starts up; else call ``connect(runID:)``.
    ///   - runID: the server's `run_id`, seen at each handshake until ``connect(runID:)`` changes it.
    public init(
        server: RedisServer = RedisServer(host: "scripted.invalid"), connected: Bool = true,
        runID: String? = "scripted-run-1"
    ) {
        self.server = server
        state = Locked(State(connected: connected, serverRunID: runID, runID: connected ? runID : nil))
    }

    /// Sets the handler the connection reports its state to (what `RedisNode(connection:)` passes),
    /// reports `.connected` to it when up, and returns the connection.
    @discardableResult
    public func observe(_ observer: @escaping @Sendable (RedisConnectionState) -> Void) -> ScriptedConnection
    {
        let connected = state.withLock {
            $0.observer = observer
            return $0.connected
        }
        if connected { queue.async { observer(.connected) } }
        return self
    }

    // MARK: Scripting

    /// Appends steps to the script: the next commands take them in order.
    public func script(_ steps: Step...) {
        state.withLock { $0.steps += steps }
    }

    /// Chooses the step for each command that finds the script empty.
    public func respond(_ responder: @escaping @Sendable (RedisCommand) -> Step) {
        state.withLock { $0.responder = responder }
    }

    /// The commands that reached the connection, in order, with their deadlines.
    public var sent: [Sent] { state.withLock { $0.sent } }

    /// The steps not taken yet.
    public var unusedSteps: Int { state.withLock { $0.steps.count } }

    /// The name of a command (its first argument, upper-cased), e.g. `EVALSHA`.
    public static func name(of command: RedisCommand) -> String {
        String(command.description.prefix { $0 != " " }).uppercased()
    }

    // MARK: Connection state

    /// Comes up (a handshake): reports `.connected`. With a `runID`, the server behind it is now a
    /// process with that `run_id`; one other than the last handshake's is a restart, as
    /// ``RedisConnection`` detects it: ``serverRestartDetectedAt`` becomes now.
    public func connect(runID: String? = nil) {
        let observer = state.withLock { state -> (@Sendable (RedisConnectionState) -> Void)? in
            guard !state.closed else { return nil }
            if let runID { state.serverRunID = runID }
            if let previous = state.runID, let current = state.serverRunID, previous != current {
                state.restartDetectedAt = .now
            }
            state.runID = state.serverRunID ?? state.runID
            state.connected = true
            return state.observer
        }
        if let observer { queue.async { observer(.connected) } }
    }

    /// Goes down: every pending command fails with an error of `kind` (outcome unknown for a lost
    /// connection), and the observer hears `.disconnected`.
    public func disconnect(_ kind: RedisConnectionError.Kind = .connectionLost) {
        let error = RedisConnectionError(kind, server: server.description, message: "scripted disconnect")
        let (failed, observer) = state.withLock { state in
            let failed = state.pending.sorted { $0.key < $1.key }.map(\.value)
            state.pending = [:]
            let wasUp = state.connected
            state.connected = false
            return (failed, wasUp ? state.observer : nil)
        }
        queue.async {
            for completion in failed { completion(.failure(error)) }
            observer?(.disconnected(error))
        }
    }

    // MARK: RedisCommandChannel

    public var isConnected: Bool { state.withLock { $0.connected && !$0.closed } }

    public var serverRunID: String? { state.withLock { $0.runID } }

    public var serverRestartDetectedAt: ContinuousClock.Instant? { state.withLock { $0.restartDetectedAt } }

    public func send(
        _ command: RedisCommand, timeout: Duration?,
        completion: @escaping @Sendable (Result<RedisReply, RedisConnectionError>) -> Void
    ) {
        let timeout = timeout ?? RedisConnectionOptions().commandTimeout
        enum Admission {
            case refused(RedisConnectionError.Kind, String)
            case taken(UInt64, Step?, (@Sendable (RedisCommand) -> Step)?)
        }
        let admission = state.withLock { state -> Admission in
            if state.closed { return .refused(.closed, "the connection was closed") }
            guard state.connected else { return .refused(.notConnected, "not connected; not sent") }
            state.sent.append(Sent(command: command, timeout: timeout))
            let id = state.nextID
            state.nextID += 1
            state.pending[id] = completion
            return .taken(id, state.steps.isEmpty ? nil : state.steps.removeFirst(), state.responder)
        }
        switch admission {
        case .refused(let kind, let message):
            let error = RedisConnectionError(
                kind, server: server.description, message: message, outcomeUnknown: false)
            queue.async { completion(.failure(error)) }
        case .taken(let id, let scripted, let responder):
            // The responder runs outside the lock: it may look at the connection.
            let step =
                scripted ?? responder?(command)
                ?? .reply(.error("ERR ScriptedConnection: no step scripted for \(command)"))
            after(timeout) { [self] in
                finish(
                    id,
                    .failure(
                        RedisConnectionError(
                            .timeout, server: server.description, message: "no reply before the deadline")))
            }
            switch step {
            case .reply(let reply, let delay):
                after(delay) { [self] in finish(id, .success(reply)) }
            case .fail(let kind, let outcomeUnknown, let delay):
                let error = RedisConnectionError(
                    kind, server: server.description, message: "scripted failure",
                    outcomeUnknown: outcomeUnknown)
                after(delay) { [self] in finish(id, .failure(error)) }
            case .hang:
                break
            case .drop(let delay):
                after(delay) { [self] in
                    if state.withLock({ $0.pending[id] != nil }) { disconnect(.connectionLost) }
                }
            }
        }
    }

    public func close() async {
        let failed = state.withLock { state in
            state.closed = true
            state.connected = false
            let failed = state.pending.sorted { $0.key < $1.key }.map(\.value)
            state.pending = [:]
            return failed
        }
        let error = RedisConnectionError(
            .closed, server: server.description, message: "the connection was closed")
        await withCheckedContinuation { continuation in
            queue.async {
                for completion in failed { completion(.failure(error)) }
                continuation.resume()
            }
        }
    }

    // MARK: Private

    /// Completes command `id` with `result`, unless it was completed already.
    private func finish(_ id: UInt64, _ result: Result<RedisReply, RedisConnectionError>) {
        // On `queue`: taken and called in one turn, so a later step cannot overtake this one.
        guard let completion = state.withLock({ $0.pending.removeValue(forKey: id) }) else { return }
        completion(result)
    }

    private func after(_ delay: Duration, _ work: @escaping @Sendable () -> Void) {
        guard delay > .zero else { return queue.async(execute: work) }
        let (seconds, attoseconds) = delay.components
        let nanoseconds = min(seconds, 1_000_000_000) * 1_000_000_000 + attoseconds / 1_000_000_000
        queue.asyncAfter(deadline: .now() + .nanoseconds(Int(nanoseconds)), execute: work)
    }
}
