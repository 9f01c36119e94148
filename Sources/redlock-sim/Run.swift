import MultiRedlock
import MultiRedlockTesting

/// What the oracle found wrong.
struct Violation: Sendable {
    enum Kind: String, Sendable {
        /// Two clients held overlapping validity for one resource.
        case overlap
        /// A later grant got a fencing token not above an earlier one's.
        case fencing
        /// A closed client's key was still on a node past its ttl.
        case afterClose = "after-close"
        /// An operation took longer than its documented bound.
        case bound
    }

    var kind: Kind
    var text: String
    /// When it happened, in milliseconds from the start (the later grant for an overlap).
    var time: Double
    var clients: [Int]
    var values: [String]
}

/// What one run of a plan did.
struct Outcome: Sendable {
    var operations = 0
    var faults = 0
    var grants = 0
    /// Operations whose bound was not judged: the whole process stood still meanwhile.
    var unjudged = 0
    var violations: [Violation] = []
    var history: [Entry] = []
    /// The ids of the steps that started, in order, with their start times.
    var started: [(id: Int, time: Double)] = []
}

/// One run of (part of) a plan: the servers, one `Redlock` per client, a checker per resource.
final class Run: Sendable {
    let plan: Plan
    let steps: [Step]
    let slackMs: Int
    let recorder = Recorder()
    let servers: [Server]
    let redlocks: [Redlock]
    let checkers: [MutualExclusionChecker]
    private let stats = Locked(Stats())

    private struct Stats {
        var outcome = Outcome()
        var fences: [Fence] = []
    }

    private struct Fence {
        var resource: Int
        var value: String
        var token: Int64
        var client: Int
    }

    /// A lock a client holds, with its holds in the checkers (one per resource).
    struct Held {
        var lock: Lock
        var tickets: [(resource: Int, ticket: MutualExclusionChecker.Ticket)]
    }

    init(plan: Plan, steps: [Step], slackMs: Int) {
        self.plan = plan
        self.steps = steps
        self.slackMs = slackMs
        let recorder = recorder
        let servers = (0..<plan.nodes).map {
            Server(
                index: $0, recorder: recorder, quarantine: plan.modes.quarantine)
        }
        self.servers = servers
        redlocks = plan.clients.enumerated().map { index, client in
            let options = RedlockOptions(
                id: client.name, drift: .milliseconds(plan.driftMs), driftFactor: 0.01,
                retries: client.retries,
                retryWait: .milliseconds(client.retryWaitMs), nodeTimeout: .milliseconds(plan.nodeTimeoutMs),
                fencingTokens: client.fencing,
                // The fleet's setting: a restarted node is out for the longest ttl any client uses.
                // `--client-quarantine`: each client's own longest ttl (the default, `.longestTTL`,
                // which another client's longer lock can outlive); `--no-quarantine`: none.
                restartQuarantine: !plan.modes.quarantine
                    ? .off
                    : plan.modes.clientQuarantine ? .longestTTL : .fixed(.milliseconds(plan.longestTTLMs)))
            // The options are valid by construction.
            return try! Redlock(nodes: servers.map { $0.connect(client: index) }, options: options)
        }
        checkers = (0..<plan.resources).map { _ in MutualExclusionChecker() }
    }

    func execute() async -> Outcome {
        LagMonitor.shared.start()
        for server in servers { server.start() }
        await withTaskGroup(of: Void.self) { group in
            for client in plan.clients.indices {
                let mine = steps.filter {
                    if case .client(client, _) = $0.action { return true }
                    return false
                }
                group.addTask { await self.runClient(client, mine) }
            }
            let faults = steps.filter {
                if case .fault = $0.action { return true }
                return false
            }
            group.addTask { await self.runFaults(faults) }
        }
        for server in servers { heal(server) }
        for redlock in redlocks { await redlock.close() }
        check()
        return stats.withLock { stats in
            var outcome = stats.outcome
            outcome.history = recorder.all
            outcome.violations.sort { $0.time < $1.time }
            return outcome
        }
    }

    // MARK: Time

    private func sleep(untilMs ms: Double) async {
        let target = recorder.start + .nanoseconds(Int64(ms * 1e6))
        try? await Task.sleep(until: target, clock: .continuous)
    }

    private func started(_ step: Step) {
        let now = recorder.elapsedMs
        stats.withLock { stats in
            stats.outcome.started.append((step.id, now))
            if case .fault = step.action { stats.outcome.faults += 1 } else { stats.outcome.operations += 1 }
        }
    }

    /// Whether an operation's time says something about Redlock: not when the process stalled for a
    /// third of the slack or more meanwhile (a loaded machine; counted as unjudged).
    private func judged(_ stalledMs: Double) -> Bool {
        guard stalledMs >= Double(slackMs) / 3 else { return true }
        stats.withLock { $0.outcome.unjudged += 1 }
        return false
    }

    private func violation(_ violation: Violation) {
        recorder.log(.note, "VIOLATION \(violation.kind.rawValue): \(violation.text)")
        stats.withLock { $0.outcome.violations.append(violation) }
    }

    // MARK: Clients

    private func runClient(_ client: Int, _ steps: [Step]) async {
        var held: [Held] = []
        for step in steps {
            guard case .client(_, let op) = step.action else { continue }
            await sleep(untilMs: Double(step.time))
            started(step)
            await perform(op, client: client, held: &held)
        }
    }

    private func perform(_ op: Op, client: Int, held: inout [Held]) async {
        let redlock = redlocks[client]
        let config = plan.clients[client]
        let nodeTimeout = plan.nodeTimeoutMs
        // One attempt: the SETs, and with fencing the write-back (each bounded by the node timeout).
        let attempt = nodeTimeout * (config.fencing ? 2 : 1)
        // `lock`: each attempt, the release of a failed one (waited for), the random wait.
        let lockBound = (config.retries + 1) * (attempt + nodeTimeout + config.retryWaitMs)
        let start = ContinuousClock.now
        let name = "c\(client) \(op.text)"
        func names(_ resources: [Int]) -> [String] { resources.map { "r\($0)" } }
        func bound(_ ms: Int) {
            let end = ContinuousClock.now
            let took = Recorder.ms(end - start)
            // Time the whole process stood still (a loaded machine) does not count against Redlock.
            let stalled = Recorder.ms(LagMonitor.shared.stalled(from: start, to: end))
            guard judged(stalled) else { return }
            guard took - stalled > Double(ms + slackMs) else { return }
            violation(
                Violation(
                    kind: .bound,
                    text:
                        "\(name) took \(Int(took))ms (\(Int(stalled))ms of it the process stalled), over its bound \(ms)ms (+\(slackMs)ms slack)",
                    time: recorder.elapsedMs, clients: [client], values: []))
        }
        func outcome(_ result: Result<Lock, any Error>) {
            switch result {
            case .success(let lock):
                held.append(Held(lock: lock, tickets: granted(lock, client: client, name)))
            case .failure(let error):
                recorder.log(.op, "\(name) → \(describe(error))", client: client)
            }
        }
        switch op {
        case .lock(let resources, let ttl):
            outcome(await result { try await redlock.lock(names(resources), ttl: .milliseconds(ttl)) })
            bound(lockBound)
        case .tryLock(let resource, let ttl):
            outcome(await result { try await redlock.tryLock("r\(resource)", ttl: .milliseconds(ttl)) })
            bound(attempt)
        case .lockWaiting(let resource, let ttl, let wait):
            outcome(
                await result {
                    try await redlock.lock(
                        "r\(resource)", ttl: .milliseconds(ttl), waitingUpTo: .milliseconds(wait))
                })
            // Fails no sooner than the wait, and at most one release and one attempt after it.
            bound(wait + nodeTimeout + attempt)
        case .cancelWaiting(let resource, let ttl, let wait, let after):
            let task = Task {
                try await redlock.lock(
                    "r\(resource)", ttl: .milliseconds(ttl), waitingUpTo: .milliseconds(wait))
            }
            try? await Task.sleep(for: .milliseconds(after))
            let cancelled = ContinuousClock.now
            recorder.log(.op, "\(name): cancelling", client: client)
            task.cancel()
            outcome(await task.result)
            // Cancellation stops it at once, but for the release of a failed attempt under way.
            let took = Recorder.ms(ContinuousClock.now - cancelled)
            let stalled = Recorder.ms(LagMonitor.shared.stalled(from: cancelled, to: .now))
            if judged(stalled) && took - stalled > Double(nodeTimeout + slackMs) {
                violation(
                    Violation(
                        kind: .bound,
                        text:
                            "\(name) returned \(Int(took))ms after the cancel (\(Int(stalled))ms of it the process stalled), over \(nodeTimeout)ms (+\(slackMs)ms)",
                        time: recorder.elapsedMs, clients: [client], values: []))
            }
        case .withLock(let resources, let ttl, let body):
            await withLock(redlock, client: client, names(resources), ttl: ttl, bodyMs: body, name: name)
            // Acquire, the body, the renewal under way when it ends, the release.
            bound(lockBound + body + 2 * nodeTimeout)
        case .renew(let pick):
            guard !held.isEmpty else { return recorder.log(.op, "\(name) → nothing held", client: client) }
            let index = pick % held.count
            let lock = held[index].lock
            do {
                let renewed = try await redlock.renew(lock)
                if lock.validUntil < start {
                    // Renewed after the validity had ended: a new window, from now.
                    held[index] = Held(
                        lock: renewed,
                        tickets: granted(renewed, client: client, "\(name) (after expiry)", renewal: true))
                } else {
                    for (resource, ticket) in held[index].tickets {
                        checkers[resource].renewed(ticket, to: renewed)
                    }
                    held[index].lock = renewed
                    recorder.log(
                        .op,
                        "\(name) → renewed \(short(lock.value)) valid \(Int(Recorder.ms(renewed.validity)))ms",
                        client: client)
                }
            } catch {
                recorder.log(.op, "\(name) [\(short(lock.value))] → \(describe(error))", client: client)
                if error.kind == .notHeld { held.remove(at: index) }
            }
            bound(nodeTimeout)
        case .release(let pick):
            guard !held.isEmpty else { return recorder.log(.op, "\(name) → nothing held", client: client) }
            let entry = held.remove(at: pick % held.count)
            for (resource, ticket) in entry.tickets { checkers[resource].released(ticket) }
            do {
                let count = try await redlock.release(entry.lock)
                recorder.log(
                    .op, "\(name) [\(short(entry.lock.value))] → released on \(count)", client: client)
            } catch {
                recorder.log(.op, "\(name) [\(short(entry.lock.value))] → \(describe(error))", client: client)
            }
            bound(nodeTimeout)
        case .unlock(let pick):
            guard !held.isEmpty else { return recorder.log(.op, "\(name) → nothing held", client: client) }
            let entry = held.remove(at: pick % held.count)
            for (resource, ticket) in entry.tickets { checkers[resource].released(ticket) }
            if entry.lock.resources.count == 1 {
                redlock.unlock(entry.lock.resource, value: entry.lock.value)
                recorder.log(.op, "\(name) [\(short(entry.lock.value))] → unlocked", client: client)
                bound(0)
            } else {
                _ = try? await redlock.release(entry.lock)
                recorder.log(.op, "\(name) [\(short(entry.lock.value))] → released (multi)", client: client)
                bound(nodeTimeout)
            }
        case .close:
            await redlock.close()
            recorder.log(.op, "\(name) → closed (\(held.count) lock(s) left to expire)", client: client)
            bound(nodeTimeout + 50)
            // Nothing of the client may outlive its longest ttl, counted from the last write that
            // can still land: a hung write applied on resume, a slow one after its latency.
            let waitMs = (config.ttls.max() ?? 0) + plan.longestFaultMs + 3 * nodeTimeout + slackMs
            try? await Task.sleep(for: .milliseconds(waitMs))
            let prefix = "\(config.name)_"
            for server in servers {
                for key in server.node.keys {
                    guard let value = server.node.value(of: key), value.hasPrefix(prefix) else { continue }
                    violation(
                        Violation(
                            kind: .afterClose,
                            text:
                                "\(server.node.name) still holds \(key) = \(short(value)) \(waitMs)ms after c\(client) closed",
                            time: recorder.elapsedMs, clients: [client], values: [value]))
                }
            }
        }
    }

    /// Records a grant: a hold per resource, its fencing token.
    private func granted(
        _ lock: Lock, client: Int, _ name: String, renewal: Bool = false
    ) -> [(Int, MutualExclusionChecker.Ticket)] {
        let tickets = lock.resources.map { resourceName in
            let resource = Int(resourceName.dropFirst())!
            let checker = checkers[resource]
            return (resource, checker.acquired(lock, client: "c\(client)"))
        }
        stats.withLock { stats in
            guard !renewal else { return }
            stats.outcome.grants += 1
            if let token = lock.fencingToken {
                stats.fences.append(
                    Fence(
                        resource: Int(lock.resource.dropFirst())!, value: lock.value, token: token,
                        client: client))
            }
        }
        let token = lock.fencingToken.map { ", token \($0)" } ?? ""
        recorder.log(
            .op,
            "\(name) → GRANTED \(short(lock.value)) valid \(Int(Recorder.ms(lock.validity)))ms\(token) by \(lock.nodes.joined(separator: ","))",
            client: client, value: lock.value)
        return tickets
    }

    private func withLock(
        _ redlock: Redlock, client: Int, _ resources: [String], ttl: Int, bodyMs: Int, name: String
    ) async {
        do {
            let ending = try await redlock.withLock(resources, ttl: .milliseconds(ttl)) { held in
                let tickets = self.granted(held.lock, client: client, name)
                let end = ContinuousClock.now + .milliseconds(bodyMs)
                while ContinuousClock.now < end && !Task.isCancelled {
                    try? await Task.sleep(for: min(.milliseconds(5), end - .now))
                    for (resource, ticket) in tickets {
                        self.checkers[resource].renewed(ticket, to: held.lock)
                    }
                }
                for (resource, ticket) in tickets {
                    self.checkers[resource].renewed(ticket, to: held.lock)
                    self.checkers[resource].released(ticket)
                }
                return Task.isCancelled ? "body cancelled" : "body done"
            }
            recorder.log(.op, "\(name) → \(ending)", client: client)
        } catch {
            recorder.log(.op, "\(name) → \(describe(error))", client: client)
        }
    }

    // MARK: Faults

    private func runFaults(_ steps: [Step]) async {
        await withTaskGroup(of: Void.self) { group in
            for step in steps {
                guard case .fault(let fault) = step.action else { continue }
                await sleep(untilMs: Double(step.time))
                started(step)
                recorder.log(.fault, "FAULT \(fault.text)")
                apply(fault)
                guard fault.durationMs > 0 else { continue }
                group.addTask {
                    await self.sleep(untilMs: Double(step.time + fault.durationMs))
                    self.end(fault)
                    self.recorder.log(.fault, "FAULT ends: \(fault.text)")
                }
            }
        }
    }

    private func apply(_ fault: Fault) {
        let server = servers[fault.node]
        let node = server.node
        switch fault {
        case .down: node.isDown = true
        case .hang(_, _, let apply):
            node.hungWritesApply = apply
            node.isHung = true
        case .latency(_, _, let amount): node.latency = .milliseconds(amount)
        case .loseReplies: server.loseReplies = true
        case .errorReply(_, _, let message): node.errorReply = message
        case .failReleases: server.failReleases = true
        case .restart(_, let keepData, let quarantine):
            if keepData && !quarantine && server.quarantine {
                // A server that keeps its data needs no quarantine: the clients see a connection drop.
                if !node.isDown {
                    node.isDown = true
                    node.isDown = false
                }
            } else {
                node.restart(keepingData: keepData)
            }
        case .clockJump(_, let ms): server.clock.advance(by: .milliseconds(ms))
        }
    }

    private func end(_ fault: Fault) {
        let server = servers[fault.node]
        let node = server.node
        switch fault {
        case .down: node.isDown = false
        case .hang: node.isHung = false
        case .latency: node.latency = .zero
        case .loseReplies: server.loseReplies = false
        case .errorReply: node.errorReply = nil
        case .failReleases: server.failReleases = false
        case .restart, .clockJump: break
        }
    }

    private func heal(_ server: Server) {
        server.node.isHung = false
        server.node.isDown = false
        server.node.latency = .zero
        server.node.errorReply = nil
        server.loseReplies = false
        server.failReleases = false
    }

    // MARK: The oracle

    private func check() {
        for (resource, checker) in checkers.enumerated() {
            for (first, second) in checker.violations() {
                let firstClient = Int(first.client.dropFirst()) ?? -1
                let secondClient = Int(second.client.dropFirst()) ?? -1
                violation(
                    Violation(
                        kind: .overlap,
                        text:
                            "r\(resource): \(first.client) [\(short(first.value))] held \(window(first)) and \(second.client) [\(short(second.value))] held \(window(second))",
                        time: recorder.ms(monotonic: second.acquired), clients: [firstClient, secondClient],
                        values: [first.value, second.value]))
            }
        }
        // Fencing tokens are promised only while no node loses data (see RedlockOptions).
        let executedLoss = stats.withLock { stats in
            let ids = Set(stats.outcome.started.map(\.id))
            return steps.contains { step in
                guard ids.contains(step.id), case .fault(let fault) = step.action else { return false }
                return fault.losesData
            }
        }
        guard !executedLoss else { return }
        // One entry per grant: a renewal after expiry records a second hold of the same grant.
        var seen = Set<String>()
        let fences = stats.withLock { $0.fences }.filter { seen.insert($0.value).inserted }
        for resource in 0..<plan.resources {
            let holds = checkers[resource].holds
            let windows: [(fence: Fence, acquired: UInt64, end: UInt64)] = fences.filter {
                $0.resource == resource
            }
            .compactMap { fence in
                let mine = holds.filter { $0.value == fence.value }
                // A grant whose validity ended before the call returned protects nothing.
                guard let first = mine.map(\.acquired).min(), let end = mine.map(\.end).max(), first < end
                else { return nil }
                return (fence, first, end)
            }
            for earlier in windows {
                for later in windows
                where earlier.end <= later.acquired && earlier.fence.token >= later.fence.token {
                    violation(
                        Violation(
                            kind: .fencing,
                            text:
                                "r\(resource): c\(earlier.fence.client) [\(short(earlier.fence.value))] got token \(earlier.fence.token), held until \(ms(earlier.end)), then c\(later.fence.client) [\(short(later.fence.value))] got token \(later.fence.token) from \(ms(later.acquired))",
                            time: recorder.ms(monotonic: later.acquired),
                            clients: [earlier.fence.client, later.fence.client],
                            values: [earlier.fence.value, later.fence.value]))
                }
            }
        }
    }

    private func ms(_ monotonic: UInt64) -> String {
        String(format1: recorder.ms(monotonic: monotonic)) + "ms"
    }

    private func window(_ hold: MutualExclusionChecker.Hold) -> String {
        let released = hold.released.map { $0 < hold.validUntil ? " (released)" : "" } ?? ""
        return "\(ms(hold.acquired))…\(ms(hold.end))\(released)"
    }
}

extension String {
    /// A number with one decimal.
    init(format1 value: Double) {
        let tenths = Int((value * 10).rounded())
        self = "\(tenths / 10).\(abs(tenths % 10))"
    }
}

func result(_ body: () async throws -> Lock) async -> Result<Lock, any Error> {
    do {
        return .success(try await body())
    } catch {
        return .failure(error)
    }
}

func describe(_ error: any Error) -> String {
    guard let error = error as? RedlockError else {
        return error is CancellationError ? "cancelled" : "\(error)"
    }
    let nodes = error.nodes.map(\.description).joined(separator: ", ")
    return "\(error.kind.rawValue)\(nodes.isEmpty ? "" : " [\(nodes)]")"
}
