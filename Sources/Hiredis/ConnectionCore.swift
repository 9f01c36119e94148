import CHiredis
import Dispatch
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The engine behind ``RedisConnection``: one hiredis async context at a time, its adapter, the
/// commands in flight, the deadline timer, and the reconnect state machine.
///
/// Phases: `resolving` → `connecting` → `handshaking` (AUTH, SELECT, PING) → `ready`; any failure
/// before `ready` goes to `backoff`, which reconnects when its delay is over. A failure while
/// `ready` reconnects at once when the connection had been working (up for `backoffResetAfter`,
/// or it answered a command of the application's: the backoff starts over) or nothing had failed
/// since the backoff last started over; otherwise it backs off like a failed connect: a server
/// that accepts and then drops connections is not hammered at round-trip rate. `closed` is final.
///
/// hiredis calls back into this object through the context's `data` pointer, which is unretained:
/// the core outlives every context it creates, because a context is freed (or handed to hiredis
/// to free) before `close` finishes, and `close` is the last thing the owning handle does.
// @unchecked Sendable: every stored var is read and written only on `queue`, the connection's
// serial queue (all entry points hop onto it, or run directly when already on it);
// `connected` is an Atomic and `serverIdentity` a Locked, read from any thread.
final class ConnectionCore: @unchecked Sendable {
    typealias Completion = @Sendable (Result<RedisReply, RedisConnectionError>) -> Void

    private struct Pending {
        var deadline: UInt64
        var completion: Completion
    }

    private enum Phase {
        case resolving, connecting, handshaking, ready, backoff, closed
    }

    let server: RedisServer
    let options: RedisConnectionOptions
    private let serverName: String
    private let observer: (@Sendable (RedisConnectionState) -> Void)?
    private let queue: DispatchQueue
    private let timer: any DispatchSourceTimer
    private let connected = Atomic<Bool>(false)
    /// The server's run_id from the last handshake, and when a reconnect last found a different one.
    let serverIdentity = Locked<(runID: String?, restartDetectedAt: ContinuousClock.Instant?)>((nil, nil))

    private var phase = Phase.backoff
    private var context: UnsafeMutablePointer<redisAsyncContext>?
    private var adapter: EventAdapter?
    /// Commands handed to hiredis, in the order their replies will come.
    private var inflight = FIFO<Pending>()
    /// Commands sent while connecting: they go out once the handshake is done.
    private var waiting = FIFO<(command: RedisCommand, pending: Pending)>()
    private var armedDeadline = UInt64.max
    private var connectDeadline = UInt64.max
    private var reconnectAt = UInt64.max
    private var failures = 0
    /// When the connection last became ready (uptime nanoseconds), and whether it has answered a
    /// command of the application's since: either shows that a lost connection had been working.
    private var readyAt: UInt64 = 0
    private var answeredSinceReady = false
    private var generation: UInt64 = 0
    private var lastError: RedisConnectionError?
    private var reportedConnected: Bool?

    /// Scratch space for formatting commands (RESP), reused so a command costs no allocation here.
    private var formatBuffer: [UInt8] = []

    init(
        server: RedisServer,
        options: RedisConnectionOptions,
        queue: DispatchQueue?,
        observer: (@Sendable (RedisConnectionState) -> Void)?
    ) {
        self.server = server
        self.options = options
        self.observer = observer
        serverName = server.description
        let queue = queue ?? DispatchQueue(label: "multiredlock.redis.\(server.description)")
        // Marks the queue (see isOnQueue) and holds its write batches.
        _ = WriteBatch.of(queue)
        self.queue = queue
        timer = DispatchSource.makeTimerSource(queue: queue)
        timer.setEventHandler { [weak self] in self?.timerFired() }
        timer.schedule(deadline: .distantFuture)
        // Activated once and never suspended: it is rescheduled, and cancelled on close.
        timer.activate()
    }

    deinit {
        assert(context == nil || ForkDetector.isForkedChild, "a hiredis context outlived its connection")
    }

    var isConnected: Bool { connected.load(ordering: .acquiring) }

    func start() {
        queue.async { self.connect() }
    }

    // MARK: Commands

    func submit(_ command: RedisCommand, timeout: Duration, completion: @escaping Completion) {
        // In a child made by fork() the connection's queue and the watcher thread do not exist:
        // answer on the caller's thread, touching no Dispatch object.
        if ForkDetector.isForkedChild {
            completion(.failure(ForkDetector.error(server: serverName)))
            return
        }
        guard command.count > 0 else {
            let failure = error(.invalidCommand, "a command needs at least its name")
            queue.async { completion(.failure(failure)) }
            return
        }
        if let reason = command.unsupportedReason {
            let failure = error(.unsupportedCommand, reason)
            queue.async { completion(.failure(failure)) }
            return
        }
        let pending = Pending(deadline: deadline(after: timeout), completion: completion)
        if isOnQueue {
            enqueue(command, pending)
        } else {
            queue.async { self.enqueue(command, pending) }
        }
    }

    /// Whether the caller runs on this connection's queue (then it may call in directly).
    var isOnQueue: Bool {
        WriteBatch.current?.queueID == ObjectIdentifier(queue)
    }

    private func enqueue(_ command: RedisCommand, _ pending: Pending) {
        switch phase {
        case .ready:
            issue(command, pending)
        case .resolving, .connecting, .handshaking:
            waiting.append((command, pending))
            arm(pending.deadline)
        case .backoff:
            let reason = lastError.map { "connection is down (\($0.kind.rawValue): \($0.message))" }
            pending.completion(.failure(error(.notConnected, reason ?? "connection is down")))
        case .closed:
            pending.completion(.failure(error(.closed, "connection was closed")))
        }
    }

    private func issue(_ command: RedisCommand, _ pending: Pending) {
        guard let context else {
            pending.completion(.failure(error(.notConnected, "connection is down")))
            return
        }
        // A command whose deadline passed while it waited (on the queue, or for the handshake) is
        // not sent: it fails alone, known not to have run, and the connection is left alone.
        if pending.deadline <= DispatchTime.now().uptimeNanoseconds {
            pending.completion(
                .failure(
                    error(
                        .timeout, "the deadline passed before the command was sent; it was not sent",
                        outcomeUnknown: false)))
            return
        }
        // Formatted here (RESP) and handed over whole: cheaper than hiredis's sds formatting.
        Self.formatForHiredis(command, into: &formatBuffer)
        let status = formatBuffer.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) {
                // The length leaves out the terminating NUL.
                redisAsyncFormattedCommand(context, replyCallback, nil, $0.baseAddress, $0.count - 1)
            }
        }
        if status == REDIS_OK {
            inflight.append(pending)
            arm(pending.deadline)
        } else {
            let reason = contextError(context.pointee.c) ?? "hiredis refused the command"
            pending.completion(.failure(error(.notConnected, reason)))
        }
    }

    /// Formats `command` (RESP) into `buffer`, replacing its contents, and terminates it with a NUL
    /// that is not part of the command: hiredis's `nextArgument`, which classifies the command,
    /// reads one byte past the last argument and `strchr`s for the next one.
    static func formatForHiredis(_ command: RedisCommand, into buffer: inout [UInt8]) {
        buffer.removeAll(keepingCapacity: true)
        command.format(into: &buffer)
        buffer.append(0)
    }

    /// A reply, or NULL when hiredis is dropping the connection: the command's outcome is unknown.
    fileprivate func didReceive(
        _ reply: UnsafeMutableRawPointer?, on context: UnsafeMutablePointer<redisAsyncContext>
    ) {
        guard let pending = inflight.popFirst() else { return }
        adapter?.replyArrived()
        if reply != nil, phase == .ready { answeredSinceReady = true }
        if let reply {
            pending.completion(.success(RedisReply(copying: reply.assumingMemoryBound(to: redisReply.self))))
        } else {
            let reason = contextError(context.pointee.c) ?? "connection lost"
            pending.completion(.failure(error(.connectionLost, reason)))
        }
    }

    // MARK: Connecting

    private func connect() {
        guard phase != .closed else { return }
        generation &+= 1
        reconnectAt = .max
        connectDeadline = deadline(after: options.connectTimeout)
        arm(connectDeadline)
        if let path = server.unixSocketPath {
            open { redisAsyncConnectUnix(path) }
        } else if isNumericAddress(server.host) {
            let (host, port) = (server.host, Int32(server.port))
            open { redisAsyncConnect(host, port) }
        } else {
            // getaddrinfo blocks: resolve on a global queue, never on the connection's.
            phase = .resolving
            let (host, port, generation) = (server.host, Int32(server.port), generation)
            DispatchQueue.global().async {
                let resolved = resolve(host)
                self.queue.async {
                    guard self.phase == .resolving, self.generation == generation else { return }
                    switch resolved {
                    case .success(let address):
                        self.open { redisAsyncConnect(address, port) }
                    case .failure(let failure):
                        self.connectFailed(
                            self.error(.connectFailed, "cannot resolve \(host): \(failure.message)"))
                    }
                }
            }
        }
    }

    private func open(_ make: () -> UnsafeMutablePointer<redisAsyncContext>?) {
        phase = .connecting
        guard let context = make() else {
            connectFailed(error(.connectFailed, "hiredis could not allocate a context"))
            return
        }
        if context.pointee.err != 0 {
            let reason = contextError(context.pointee.c) ?? "connect failed"
            freeUnattached(context)
            connectFailed(error(.connectFailed, reason))
            return
        }
        let adapter: EventAdapter
        let generation = generation
        let attached = EventAdapter.attach(
            to: context, queue: queue, maxReplyBytes: options.maxReplyBytes
        ) { [weak self] kind, message in
            self?.adapterFailed(kind, message, generation: generation)
        }
        switch attached {
        case .success(let attached):
            adapter = attached
        case .failure(let failure):
            freeUnattached(context)
            connectFailed(error(.connectFailed, failure.message))
            return
        }
        context.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        self.context = context
        self.adapter = adapter
        redisAsyncSetConnectCallback(context, connectCallback)
        redisAsyncSetDisconnectCallback(context, disconnectCallback)
    }

    /// hiredis's connect callback, status OK: run the handshake. Nothing is freed in here
    /// (freeing inside this callback crashes hiredis 0.14.1); failures free on a later turn.
    fileprivate func didConnect() {
        guard phase == .connecting else { return }
        phase = .handshaking
        let deadline = connectDeadline
        if let password = server.password {
            var auth: RedisCommand = ["AUTH"]
            if let username = server.username { auth.append(username) }
            auth.append(password)
            handshake(auth, deadline) { reply in
                if case .error(let message) = reply {
                    self.handshakeFailed(
                        self.error(.authenticationFailed, "authentication failed: \(message)"))
                }
            }
        }
        if let database = server.database {
            handshake(["SELECT", String(database)], deadline) { reply in
                if case .error(let message) = reply {
                    self.handshakeFailed(
                        self.error(.handshakeFailed, "SELECT \(database) failed: \(message)"))
                }
            }
        }
        handshake(["PING"], deadline) { reply in
            guard self.phase == .handshaking else { return }
            if case .error(let message) = reply {
                let kind: RedisConnectionError.Kind =
                    message.hasPrefix("NOAUTH") || message.hasPrefix("WRONGPASS")
                    ? .authenticationFailed : .handshakeFailed
                let prefix = kind == .authenticationFailed ? "authentication failed" : "PING failed"
                self.handshakeFailed(self.error(kind, "\(prefix): \(message)"))
            }
        }
        // The server's run_id tells a restart (a new process, its data possibly lost) from a
        // reconnect to the same process. A server without INFO (some proxies) still connects.
        handshake(["INFO", "server"], deadline) { reply in
            guard self.phase == .handshaking else { return }
            if let info = reply.string, !reply.isError {
                self.recordRunID(Self.runID(in: info))
            }
            self.becameReady()
        }
    }

    private func recordRunID(_ runID: String?) {
        guard let runID else { return }
        serverIdentity.withLock { identity in
            if let previous = identity.runID, previous != runID {
                identity.restartDetectedAt = .now
            }
            identity.runID = runID
        }
    }

    private static func runID(in info: String) -> String? {
        for line in info.split(whereSeparator: \.isNewline) where line.hasPrefix("run_id:") {
            return String(line.dropFirst("run_id:".count).filter { !$0.isWhitespace })
        }
        return nil
    }

    private func handshake(
        _ command: RedisCommand,
        _ deadline: UInt64,
        _ onReply: @escaping @Sendable (RedisReply) -> Void
    ) {
        // A failure (timeout, lost connection) is handled by whoever failed the connection.
        issue(
            command,
            Pending(deadline: deadline) { result in
                if case .success(let reply) = result { onReply(reply) }
            })
    }

    private func handshakeFailed(_ failure: RedisConnectionError) {
        guard phase == .handshaking else { return }
        dropContext(failing: failure)
        connectFailed(failure)
    }

    private func becameReady() {
        phase = .ready
        readyAt = DispatchTime.now().uptimeNanoseconds
        answeredSinceReady = false
        lastError = nil
        connectDeadline = .max
        connected.store(true, ordering: .releasing)
        while let (command, pending) = waiting.popFirst() {
            issue(command, pending)
        }
        report(.connected)
    }

    /// A connect attempt failed: fail what waited for it, report, and back off.
    private func connectFailed(_ failure: RedisConnectionError) {
        guard phase != .closed else { return }
        phase = .backoff
        lastError = failure
        connectDeadline = .max
        for (_, pending) in waiting.removeAll() {
            pending.completion(.failure(failure))
        }
        report(.disconnected(failure))
        scheduleReconnect()
    }

    /// Counts one more failure and arms the reconnect after its jittered, capped exponential delay.
    private func scheduleReconnect() {
        failures += 1
        let initial = Double(options.reconnectInitialDelay.nanoseconds)
        let delay = min(
            Double(options.reconnectMaxDelay.nanoseconds), initial * pow(2, Double(min(failures - 1, 30))))
        // Clamped: a delay of centuries must neither trap in UInt64() nor overflow the sum.
        let jittered = delay * Double.random(in: 0.5...1)
        let (sum, overflow) = DispatchTime.now().uptimeNanoseconds.addingReportingOverflow(
            jittered < Double(UInt64.max) ? UInt64(jittered) : .max)
        reconnectAt = overflow ? .max : sum
        arm(reconnectAt)
    }

    /// A working connection broke (or was dropped on a deadline): report, then reconnect. At once
    /// when it had been working, up for `backoffResetAfter` or answering a command of the
    /// application's (the backoff starts over), or when nothing failed since the backoff last
    /// started over; otherwise after the backoff's next delay, as after a failed connect.
    private func connectionLost(_ failure: RedisConnectionError) {
        guard phase != .closed else { return }
        lastError = failure
        connected.store(false, ordering: .releasing)
        report(.disconnected(failure))
        let uptime = DispatchTime.now().uptimeNanoseconds &- readyAt
        if answeredSinceReady || uptime >= options.backoffResetAfter.nanoseconds { failures = 0 }
        if failures == 0 {
            failures = 1
            connect()
        } else {
            phase = .backoff
            scheduleReconnect()
        }
    }

    /// The adapter gave up on the socket (the watch could not be re-armed, a reply grew too large,
    /// the server sent what nobody asked for): drop the context and replace the connection.
    private func adapterFailed(_ kind: RedisConnectionError.Kind, _ message: String, generation: UInt64) {
        guard generation == self.generation, context != nil, phase != .closed else { return }
        let failure = error(kind, message)
        let wasReady = phase == .ready
        dropContext(failing: failure)
        if wasReady { connectionLost(failure) } else { connectFailed(failure) }
    }

    /// hiredis's connect callback, status ERR: hiredis frees the context when this returns.
    fileprivate func didFailToConnect(_ context: UnsafePointer<redisAsyncContext>) {
        let reason = contextError(context.pointee.c) ?? "connect failed"
        forgetContext(context)
        connectFailed(error(.connectFailed, reason))
    }

    /// hiredis's disconnect callback: hiredis has failed every pending command with a NULL reply and
    /// frees the context when this returns.
    fileprivate func didDisconnect(_ context: UnsafePointer<redisAsyncContext>) {
        let reason = contextError(context.pointee.c) ?? "server closed the connection"
        forgetContext(context)
        let failure = error(.connectionLost, reason)
        for pending in inflight.removeAll() { pending.completion(.failure(failure)) }
        if phase == .ready { connectionLost(failure) } else { connectFailed(failure) }
    }

    /// The context is hiredis's to free: stop hearing from it, keep its adapter alive until the free
    /// (the cleanup hook still points at it), and forget it.
    private func forgetContext(_ context: UnsafePointer<redisAsyncContext>) {
        UnsafeMutablePointer(mutating: context).pointee.data = nil
        if let adapter {
            queue.async { withExtendedLifetime(adapter) {} }
        }
        self.context = nil
        self.adapter = nil
    }

    /// Drops the current context on purpose: pending commands fail with `failure`, and the context is
    /// freed on a later queue turn, never inside a hiredis callback.
    private func dropContext(failing failure: RedisConnectionError) {
        if let context, let adapter {
            context.pointee.data = nil
            adapter.detach()
            let handle = ContextHandle(pointer: context)
            queue.async {
                if !adapter.contextFreed { redisAsyncFree(handle.pointer) }
            }
        } else if let context {
            freeUnattached(context)
        }
        context = nil
        adapter = nil
        // These were sent: whatever the reason they fail, the server may still run them.
        var sent = failure
        sent.outcomeUnknown = true
        for pending in inflight.removeAll() { pending.completion(.failure(sent)) }
    }

    // MARK: Deadlines

    private func timerFired() {
        armedDeadline = .max
        let now = DispatchTime.now().uptimeNanoseconds
        switch phase {
        case .resolving, .connecting, .handshaking:
            if now >= connectDeadline {
                let failure = error(
                    .connectTimeout,
                    "no connection and PING reply within \(options.connectTimeout) (server down or hung?)")
                dropContext(failing: failure)
                connectFailed(failure)
            }
        case .ready:
            if inflight.contains(where: { $0.deadline <= now }) {
                let failure = error(.timeout, "no reply before the deadline; the connection was replaced")
                dropContext(failing: failure)
                connectionLost(failure)
            }
        case .backoff:
            if now >= reconnectAt { connect() }
        case .closed:
            return
        }
        for (_, pending) in waiting.remove(where: { $0.pending.deadline <= now }) {
            let reason = lastError.map { ": \($0.message)" } ?? ""
            pending.completion(.failure(error(.notConnected, "no connection before the deadline\(reason)")))
        }
        var next = min(reconnectAt, connectDeadline)
        next = min(next, inflight.min { $0.deadline } ?? .max)
        next = min(next, waiting.min { $0.pending.deadline } ?? .max)
        arm(next)
    }

    /// Makes sure the timer fires no later than `deadline`.
    private func arm(_ deadline: UInt64) {
        guard deadline < armedDeadline, phase != .closed else { return }
        armedDeadline = deadline
        timer.schedule(deadline: DispatchTime(uptimeNanoseconds: deadline), leeway: .milliseconds(1))
    }

    private func deadline(after duration: Duration) -> UInt64 {
        let (sum, overflow) = DispatchTime.now().uptimeNanoseconds.addingReportingOverflow(
            duration.nanoseconds)
        return overflow ? .max : sum
    }

    // MARK: Closing

    func close(then completion: (@Sendable () -> Void)?) {
        if ForkDetector.isForkedChild {
            // The parent's context, queue and timer: touch none of them, free nothing (freeing a
            // Dispatch object in a forked child is not safe), and let the socket go with the process.
            _ = Unmanaged.passRetained(self)
            completion?()
            return
        }
        queue.async {
            if self.phase != .closed {
                let failure = self.error(.closed, "connection was closed")
                self.phase = .closed
                self.dropContext(failing: failure)
                for (_, pending) in self.waiting.removeAll() { pending.completion(.failure(failure)) }
                self.timer.cancel()
                if self.connected.exchange(false, ordering: .acquiringAndReleasing) {
                    self.report(.disconnected(failure))
                }
            }
            // dropContext stopped watching the socket at once and queued the free that closes it:
            // the completion runs after that free.
            if let completion {
                self.queue.async { completion() }
            }
        }
    }

    // MARK: Helpers

    private func report(_ state: RedisConnectionState) {
        let isUp = state == .connected
        guard reportedConnected != isUp else { return }
        reportedConnected = isUp
        observer?(state)
    }

    private func error(
        _ kind: RedisConnectionError.Kind, _ message: String, outcomeUnknown: Bool? = nil
    ) -> RedisConnectionError {
        RedisConnectionError(kind, server: serverName, message: message, outcomeUnknown: outcomeUnknown)
    }

    /// Frees a context that has no adapter (its cleanup hook is not installed). hiredis 0.14.1
    /// closes the socket only when its descriptor is above 0 (`if (c->fd > 0)`): a process started
    /// with standard input closed gets its first socket as descriptor 0, which is closed here.
    private func freeUnattached(_ context: UnsafeMutablePointer<redisAsyncContext>) {
        closeDescriptorZero(of: context)
        redisAsyncFree(context)
    }
}

// MARK: - hiredis callbacks

/// A context pointer carried into a closure that runs on the same serial queue.
// @unchecked Sendable: the pointer is only dereferenced on the connection's queue, like every other
// use of the context.
private struct ContextHandle: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<redisAsyncContext>
}

private func core(of context: UnsafePointer<redisAsyncContext>) -> ConnectionCore? {
    guard let data = context.pointee.data else { return nil }
    return Unmanaged<ConnectionCore>.fromOpaque(data).takeUnretainedValue()
}

private let replyCallback:
    @convention(c) (
        UnsafeMutablePointer<redisAsyncContext>?, UnsafeMutableRawPointer?, UnsafeMutableRawPointer?
    ) -> Void = { context, reply, _ in
        guard let context, let core = core(of: context) else { return }
        core.didReceive(reply, on: context)
    }

private let connectCallback: @convention(c) (UnsafePointer<redisAsyncContext>?, Int32) -> Void = {
    context, status in
    guard let context, let core = core(of: context) else { return }
    if status == REDIS_OK { core.didConnect() } else { core.didFailToConnect(context) }
}

private let disconnectCallback: @convention(c) (UnsafePointer<redisAsyncContext>?, Int32) -> Void = {
    context, _ in
    guard let context, let core = core(of: context) else { return }
    core.didDisconnect(context)
}

/// The context's error text, or nil when it has none.
private func contextError(_ context: redisContext) -> String? {
    guard context.err != 0 else { return nil }
    var errstr = context.errstr
    let text = withUnsafeBytes(of: &errstr) { bytes in
        String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
    }
    return text.isEmpty ? "error \(context.err)" : text
}
