import LocalRedis
import MultiRedlock
import MultiRedlockTesting
import TestSupport
import Testing

extension Failover {
    /// Scenario 7: connections killed under the client (CLIENT KILL, idle `timeout`): reconnects are
    /// transparent and leak nothing.
    @Suite struct Churn {
        /// 1,000 CLIENT KILLs against one `RedisConnection`, each followed by a successful command:
        /// the process's open file descriptors stay flat.
        @Test func thousandKillsLeakNoDescriptors() async throws {
            let group = try await RedisServerGroup.start(count: 1)
            defer { group.stopInBackground() }
            let server = group[0]
            let connection = try RedisConnection(
                server: Fault.address(server.port),
                options: RedisConnectionOptions(
                    connectTimeout: .seconds(1), reconnectInitialDelay: .milliseconds(1),
                    reconnectMaxDelay: .milliseconds(50)))
            let killer = try FaultRawConnection(port: server.port)
            let connectionsBefore =
                Int(try await Fault.info(server, "total_connections_received") ?? "") ?? -1

            var killed = 0
            var retries = 0
            // A PING that succeeds, retried (bounded) while the connection notices the kill and comes back.
            func successfulCommand(after iteration: Int) async throws {
                for _ in 0..<100 {
                    do {
                        if try await connection.send(["PING"], timeout: .seconds(1)) == .status("PONG") {
                            return
                        }
                    } catch {
                        retries += 1
                        try await Task.sleep(for: .milliseconds(1))
                    }
                }
                Issue.record("no successful command after kill \(iteration)")
                throw FaultError("no successful command after kill \(iteration)")
            }
            var descriptorsAfterWarmUp = 0
            var socketsAfterWarmUp = 0
            let started = ContinuousClock.now
            for iteration in 0..<1_020 {
                // Wait for a working connection, then kill it.
                try await successfulCommand(after: iteration)
                if iteration == 20 {
                    // Taken while the connection is up: its sockets, the killer's, and perhaps those of
                    // the connection killed last, whose descriptors close asynchronously.
                    descriptorsAfterWarmUp = openDescriptorCount()
                    socketsAfterWarmUp = socketsConnected(toPort: server.port)
                }
                let reply = try await killer.command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
                if iteration >= 20 { killed += Int(reply?.dropFirst() ?? "") ?? 0 }
            }
            // One more successful command after the last kill.
            try await successfulCommand(after: 1_020)
            let elapsed = ContinuousClock.now - started
            // This process's descriptors on the server's port (the connection's and the killer's) come
            // back to at most their number after the warm-up once the old sockets are closed: nothing
            // else in the process uses that port, so a leak per reconnect would leave 1,000 more.
            var socketsAfter = socketsConnected(toPort: server.port)
            _ = try await waitUntil(
                timeout: .seconds(10), "sockets to the server back to \(socketsAfterWarmUp)"
            ) {
                socketsAfter = socketsConnected(toPort: server.port)
                return socketsAfter <= socketsAfterWarmUp
            }
            let descriptorsAfter = openDescriptorCount()
            let connectionsAfter = Int(try await Fault.info(server, "total_connections_received") ?? "") ?? -1
            await connection.close()

            #expect(killed == 1_000, "every kill must have hit the connection")
            #expect(connectionsAfter - connectionsBefore >= 1_020, "the server saw the reconnects")
            // All descriptors of the process, a second check beside the exact per-port one above: tests
            // running in parallel move this by dozens (their servers, sockets and pipes), while a leak
            // of one descriptor per reconnect (a pipe, an eventfd, not only a socket) adds 1,000.
            #expect(
                descriptorsAfter - descriptorsAfterWarmUp <= 100,
                "descriptors grew from \(descriptorsAfterWarmUp) to \(descriptorsAfter)")
            print(
                "scenario 7: 1,000 CLIENT KILLs + reconnects in \(elapsed) (\(retries) commands failed "
                    + "and were retried); sockets to the server \(socketsAfterWarmUp) → \(socketsAfter), "
                    + "open fds of the process \(descriptorsAfterWarmUp) → \(descriptorsAfter)")
        }

        /// A stream of locks (lock, release, lock, …, retries 0) by one client while CLIENT KILL hits
        /// its connections: first one node at a time, then all three at the same instant. Reconnects
        /// are transparent: the stream goes on, and every failure is one of exactly these:
        /// - `.quorumUnavailable` in which every failed node lost its connection (the kill instant);
        /// - `.taken` while a leftover of this client's own may still be on the servers: after a
        ///   release that did not reach every node (it is retried in the background), or after a
        ///   failed lock (whose release runs in the background).
        /// Nothing else (no timeouts, no error replies). One node at a time removes one vote, so a
        /// lost-connection failure there always comes with a leftover refusal; all at once, there is at
        /// most one lost-connection failure per kill instant. The checker finds no overlap, and nothing is
        /// left on the servers at the end.
        @Test func lockStreamSurvivesClientKills() async throws {
            let group = try await RedisServerGroup.start(count: 3)
            defer { group.stopInBackground() }
            let redlock = try await Fault.connectedRedlock(
                group.ports, Fault.options(retries: 0, nodeTimeout: .milliseconds(600)))
            let resource = Fault.resource()
            let checker = MutualExclusionChecker()

            // Phase 1: one node at a time.
            let phase1 = try await Self.stream(redlock, resource, checker) {
                var killed = 0
                for index in 0..<60 {
                    let reply = try await Fault.command(
                        group[index % 3].port, ["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
                    killed += Int(reply?.dropFirst() ?? "") ?? 0
                    // One node at a time for real: the next kill waits for this reconnect, which a
                    // loaded machine can delay past the pause below.
                    try await Self.awaitReconnect(redlock, group, nodes: [index % 3])
                    try await Task.sleep(for: .milliseconds(Int.random(in: 30...60)))
                }
                return killed
            }
            #expect(phase1.killed >= 40, "only \(phase1.killed) connections were killed")
            // One node at a time removes one vote: a lock fails only if a leftover refusal comes with it.
            #expect(phase1.lostWithoutLeftover == 0, "\(phase1)")
            print("scenario 7, one node at a time: \(phase1)")

            // Phase 2: every node at the same instant.
            let instants = 20
            let phase2 = try await Self.stream(redlock, resource, checker) {
                var killed = 0
                for _ in 0..<instants {
                    killed += await withTaskGroup(of: Int.self) { kills in
                        for server in group.servers {
                            kills.addTask {
                                let reply = try? await Fault.command(
                                    server.port, ["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
                                return Int(reply?.dropFirst() ?? "") ?? 0
                            }
                        }
                        return await kills.reduce(0, +)
                    }
                    // Separate instants: each starts once the last one's reconnects are done.
                    try await Self.awaitReconnect(redlock, group, nodes: Array(group.servers.indices))
                    try await Task.sleep(for: .milliseconds(Int.random(in: 60...120)))
                }
                return killed
            }
            #expect(phase2.killed >= 2 * instants)
            #expect(phase2.lostDuringKill <= instants, "\(phase2)")
            print("scenario 7, all nodes at once (\(instants) instants): \(phase2)")

            #expect(checker.violations().isEmpty)
            try await waitUntil(timeout: .seconds(5), "nothing left behind") {
                var total = 0
                for server in group.servers { total += try await Fault.dbsize(server) }
                return total == 0
            }
            await redlock.close()
        }

        struct StreamSummary: CustomStringConvertible {
            var killed = 0
            var locked = 0
            var lostDuringKill = 0
            /// Lost-connection failures without any refusal in the evidence.
            var lostWithoutLeftover = 0
            var takenAfterPartialRelease = 0
            var takenAfterFailedLock = 0

            var description: String {
                "\(locked) locks while \(killed) connections were killed; failures: \(lostDuringKill) "
                    + "quorumUnavailable (lost connections; \(lostWithoutLeftover) without a leftover refusal), "
                    + "\(takenAfterPartialRelease) taken by the leftover "
                    + "of a partial release, \(takenAfterFailedLock) taken by the leftover of a failed lock"
            }
        }

        /// Waits until `redlock` is back on each of `nodes` after a CLIENT KILL there: the server
        /// lists a client connection besides the one asking (so the client saw the kill and
        /// reconnected), and the client reports the node connected (its handshake is done).
        static func awaitReconnect(_ redlock: Redlock, _ group: RedisServerGroup, nodes: [Int]) async throws {
            for index in nodes {
                _ = try await waitUntil(timeout: .seconds(10), "node \(index) reconnected") {
                    let clients = try await Fault.command(
                        group[index].port, ["CLIENT", "LIST", "TYPE", "normal"])
                    let count = clients?.split(whereSeparator: \.isNewline).count ?? 0
                    return count >= 2 && redlock.nodes[index].isConnected
                }
            }
        }

        /// Runs the lock stream while `kill` runs, then classifies what the stream saw.
        static func stream(
            _ redlock: Redlock, _ resource: String, _ checker: MutualExclusionChecker,
            kill: () async throws -> Int
        ) async throws -> StreamSummary {
            let done = FaultFlag()
            let steps = FaultTally<StreamStep>()
            let nodeCount = redlock.nodes.count
            let stream = Task {
                while !done.isSet {
                    do {
                        let lock = try await redlock.lock(resource, ttl: .seconds(5))
                        let ticket = checker.acquired(lock, client: "stream")
                        steps.append(.locked)
                        checker.released(ticket)
                        do {
                            steps.append(.released(try await redlock.release(lock)))
                        } catch let error as RedlockError {
                            steps.append(.releaseFailed(error))
                        }
                    } catch let error as RedlockError {
                        steps.append(.lockFailed(error))
                    } catch {
                        steps.append(.lockFailed(RedlockError(.closed, message: "\(error)")))
                    }
                }
            }
            var summary = StreamSummary()
            summary.killed = try await kill()
            done.set()
            await stream.value

            enum Leftover { case none, partialRelease, failedLock }
            var leftover = Leftover.none
            for step in steps.entries {
                switch step {
                case .locked:
                    summary.locked += 1
                    leftover = .none
                case .released(let count):
                    if count < nodeCount { leftover = .partialRelease }
                case .releaseFailed:
                    leftover = .partialRelease
                case .lockFailed(let error) where error.kind == .quorumUnavailable:
                    summary.lostDuringKill += 1
                    var lost = 0
                    var refused = 0
                    for evidence in error.nodes {
                        if case .refused = evidence.outcome { refused += 1 }
                        guard case .failed(let failure) = evidence.outcome else { continue }
                        #expect(failure.kind == .connectionLost || failure.kind == .unreachable, "\(error)")
                        lost += 1
                    }
                    #expect(lost >= 1, "a failure must come from lost connections: \(error)")
                    if refused == 0 { summary.lostWithoutLeftover += 1 }
                    if leftover == .none { leftover = .failedLock }
                case .lockFailed(let error) where error.kind == .taken:
                    switch leftover {
                    case .partialRelease: summary.takenAfterPartialRelease += 1
                    case .failedLock: summary.takenAfterFailedLock += 1
                    case .none:
                        Issue.record("taken with no leftover of ours possible (single client): \(error)")
                    }
                case .lockFailed(let error):
                    Issue.record("unexpected failure: \(error)")
                }
            }
            if case .lockFailed(let error)? = steps.entries.last {
                Issue.record("the last lock failed: \(error)")
            }
            #expect(summary.locked >= 20, "\(summary)")
            return summary
        }

        /// `CONFIG SET timeout 1`: the servers close idle connections; after each idle gap the next
        /// lock succeeds on reconnected connections.
        @Test func idleTimeoutReconnects() async throws {
            let group = try await RedisServerGroup.start(count: 3)
            defer { group.stopInBackground() }
            let redlock = try await Fault.connectedRedlock(
                group.ports, Fault.options(retries: 1, nodeTimeout: .milliseconds(600)))
            for server in group.servers {
                _ = try await server.cli("CONFIG", "SET", "timeout", "1")
                #expect(try await server.cli("CONFIG", "GET", "timeout") == "timeout\n1")
            }
            let resource = Fault.resource()
            for gap in 0..<2 {
                var connections: [Int] = []
                for server in group.servers {
                    connections.append(
                        Int(try await Fault.info(server, "total_connections_received") ?? "") ?? -1)
                }
                let lock = try await redlock.lock(resource, ttl: .seconds(5))
                #expect(try await redlock.release(lock) == 3)
                try await Task.sleep(for: .milliseconds(3_200))
                for (index, server) in group.servers.enumerated() {
                    // The server closed the idle connection and the client came back (+1 for INFO's own).
                    let now = Int(try await Fault.info(server, "total_connections_received") ?? "") ?? -1
                    #expect(now - connections[index] >= 2, "gap \(gap), node \(index): no reconnect")
                }
                let after = try await redlock.lock(resource, ttl: .seconds(5))
                #expect(after.attempts <= 2)
                #expect(try await redlock.release(after) >= 2)
                print("scenario 7: idle gap \(gap): lock after the gap took \(after.attempts) attempt(s)")
            }
            await redlock.close()
        }
    }
}

/// One step of the lock stream in `Failover.Churn.lockStreamSurvivesClientKills`.
private enum StreamStep: Sendable {
    case locked
    case lockFailed(RedlockError)
    case released(Int)
    case releaseFailed(RedlockError)
}
