import Dispatch

// Connecting: waiting for a quorum (`waitUntilConnected`), and what happens when a node goes up or
// down (events, the gauge, release retries owed to a node that is back).
extension Redlock {

    /// Waits until a quorum of nodes is connected (with `all`, every node), so that the first lock
    /// does not spend its node timeout on connection handshakes. Returns at once when it is already;
    /// gives up early when every node that is not connected has failed to connect since the call
    /// (a refused or failed handshake), as it would not come up in time anyway.
    ///
    /// ```swift
    /// let redlock = try Redlock(servers: servers)
    /// try await redlock.waitUntilConnected(timeout: .seconds(2))
    /// ```
    /// - Parameters:
    ///   - timeout: the longest wait, at most 100 years.
    ///   - all: wait for every node; when the time is up, a connected quorum is enough (the call
    ///     returns normally; check each node's `isConnected` to tell). The default is false.
    /// - Throws: ``RedlockError/Kind/quorumUnavailable`` when no quorum is connected when the time is
    ///   up or the task is cancelled (naming each node's state); ``RedlockError/Kind/closed`` when
    ///   the Redlock is or gets closed; ``RedlockError/Kind/invalidArgument`` for a negative timeout.
    public func waitUntilConnected(timeout: Duration, all: Bool = false) async throws(RedlockError) {
        guard timeout >= .zero, timeout <= RedlockOptions.longestDuration else {
            throw RedlockError(
                .invalidArgument, message: "the timeout must be in 0...100 years (got \(timeout))")
        }
        let timer = Locked<Task<Void, Never>?>(nil)
        let id = state.withLock { state in
            state.nextConnectWaiter &+= 1
            return state.nextConnectWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let waiting = state.withLock { state in
                    let waiter = ConnectWaiter(
                        all: all, failuresAtStart: state.connectFailures, continuation: continuation)
                    guard !state.closed, !Self.done(waiter, state) else { return false }
                    state.connectWaiters[id] = waiter
                    return true
                }
                guard waiting else { return continuation.resume() }
                if Task.isCancelled { return resumeConnectWaiter(id) }
                timer.withLock {
                    $0 = Task { [weak self] in
                        try? await Task.sleep(for: timeout)
                        self?.resumeConnectWaiter(id)
                    }
                }
            }
        } onCancel: {
            resumeConnectWaiter(id)
        }
        timer.withLock { $0 }?.cancel()
        let (closed, quorumUp, up) = state.withLock { ($0.closed, $0.quorumUp, $0.nodeUp) }
        if closed { throw RedlockError(.closed, message: "redlock was closed") }
        if quorumUp { return }
        let down = nodes.indices.filter { !up[$0] }.map {
            "\(names[$0]): \(nodes[$0].connectionDetail ?? "not connected")"
        }
        throw RedlockError(
            .quorumUnavailable,
            message:
                "\(up.count { $0 }) of \(nodes.count) nodes connected after \(timeout)"
                + "\(Task.isCancelled ? " (cancelled)" : ""); \(quorum) needed; "
                + down.joined(separator: "; "))
    }

    /// Whether a waiter of ``waitUntilConnected(timeout:all:)`` is done: what it waits for is
    /// connected, or every node that is not has failed to connect since it began.
    private static func done(_ waiter: ConnectWaiter, _ state: State) -> Bool {
        if waiter.all ? !state.nodeUp.contains(false) : state.quorumUp { return true }
        return state.nodeUp.indices.allSatisfy {
            state.nodeUp[$0] || state.connectFailures[$0] > waiter.failuresAtStart[$0]
        }
    }

    /// Resumes the connection waiters that are satisfied now.
    private func resumeConnectWaiters() {
        let ready = state.withLock { state in
            let ready = state.connectWaiters.filter { Self.done($0.value, state) }
            for id in ready.keys { state.connectWaiters[id] = nil }
            return ready.values.map(\.continuation)
        }
        for waiter in ready { waiter.resume() }
    }

    /// Resumes one connection waiter (its time is up, or its task was cancelled), if still waiting.
    private func resumeConnectWaiter(_ id: UInt64) {
        state.withLock { $0.connectWaiters.removeValue(forKey: id) }?.continuation.resume()
    }

    // MARK: Node transitions

    /// Node `index` went up or down: the gauge, the quorum events, the release retries it was
    /// owed, and the callers of ``waitUntilConnected(timeout:all:)``.
    func node(_ index: Int, isUp: Bool) {
        // A node that connected may have revealed that it is another node's server (same run_id).
        let duplicates = isUp ? Self.duplicates(nodes.map(\.serverID)) : nil
        let (retries, connected, options) = state.withLock {
            state -> ([@Sendable () -> Void], Int?, RedlockOptions?) in
            if let duplicates { state.duplicateOf = duplicates }
            if !isUp { state.connectFailures[index] &+= 1 }
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
        resumeConnectWaiters()
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
}
