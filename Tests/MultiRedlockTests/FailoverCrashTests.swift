import LocalRedis
import MultiRedlock
import MultiRedlockTesting
import Synchronization
import TestSupport
import Testing

extension Failover {
    /// Servers that crash (kill -9), with and without a restart, with and without persistence.
    @Suite struct Crash {
        private struct Grant: Sendable {
            var index: Int
            var started: ContinuousClock.Instant
            var returned: ContinuousClock.Instant
            var lock: Lock
        }

        /// Scenario 1: one node killed while a task locks in a loop. Every lock is still granted,
        /// by the two survivors once the kill is done, and no validity reaches past
        /// `call start + ttl − drift allowance`: checked against the keys themselves, on each granting
        /// node, before the release. Its key expires at most PTTL + 1 ms after the PTTL reply (PTTL is
        /// whole milliseconds, truncated), so `time after the reply + PTTL + 1 ms` bounds the expiry
        /// from above, and it must still be at least `validUntil + drift`.
        @Test func oneNodeKilledWhileLocking() async throws {
            let group = try await RedisServerGroup.start(count: 3)
            defer { group.stopInBackground() }
            // This scenario is not about timeouts: a generous node timeout keeps a busy machine from
            // failing a lock for the wrong reason. retries 0, so the validity check below is exact.
            let options = Fault.options(retries: 0, nodeTimeout: .milliseconds(600))
            let redlock = try await Fault.connectedRedlock(group.ports, options)
            let ttl = Duration.seconds(2)
            let drift = options.driftAllowance(for: ttl)
            let resource = Fault.resource()
            let checker = MutualExclusionChecker()
            let grants = FaultTally<Grant>()
            let failures = FaultTally<String>()
            let killedAt = Locked<ContinuousClock.Instant?>(nil)
            let deadNode = Fault.address(group[0].port).description
            let ports = Dictionary(
                uniqueKeysWithValues: group.ports.map { (Fault.address($0).description, $0) })
            // (lock index, node, the latest instant its key can expire)
            let expiries = FaultTally<(index: Int, node: String, latest: ContinuousClock.Instant)>()
            let unreadable = FaultTally<String>()

            let loop = Task {
                for index in 0..<60 {
                    let started = ContinuousClock.now
                    do {
                        let lock = try await redlock.lock(resource, ttl: ttl)
                        let returned = ContinuousClock.now
                        let ticket = checker.acquired(lock, client: "loop")
                        grants.append(Grant(index: index, started: started, returned: returned, lock: lock))
                        for node in lock.nodes {
                            do {
                                let reply = try await Fault.command(
                                    ports[node] ?? 0, ["PTTL", resource], timeout: .seconds(2))
                                let after = ContinuousClock.now
                                guard let reply, reply.first == ":", let pttl = Int64(reply.dropFirst()),
                                    pttl >= 0
                                else {
                                    failures.append(
                                        "lock \(index): PTTL on \(node) answered \(reply ?? "(nil)")")
                                    continue
                                }
                                expiries.append((index, node, after + .milliseconds(pttl + 1)))
                            } catch {
                                // Only the node being killed may fail to answer.
                                if node == deadNode {
                                    unreadable.append("lock \(index): \(error)")
                                } else {
                                    failures.append("lock \(index): PTTL on \(node): \(error)")
                                }
                            }
                        }
                        try await Task.sleep(for: .milliseconds(5))
                        checker.released(ticket)
                        try await redlock.release(lock)
                    } catch {
                        failures.append("lock \(index): \(error)")
                    }
                }
            }
            try await waitUntil(timeout: .seconds(20)) { grants.count >= 15 }
            #expect(await group[0].kill9())
            killedAt.withLock { $0 = .now }
            #expect(!group[0].isRunning, "the node must really be dead")
            await loop.value
            await redlock.close()

            let killInstant = try #require(killedAt.withLock { $0 })
            #expect(failures.entries.isEmpty, "\(failures.entries)")
            #expect(grants.count == 60)
            var afterKill = 0
            var longest = Duration.zero
            for grant in grants.entries {
                let lock = grant.lock
                let elapsed = grant.returned - grant.started
                longest = max(longest, elapsed)
                // The lock's own numbers: validity = ttl − (now − start) − drift, where `start` (taken
                // before the SETs went out) and `now` (when the quorum was in) must both lie within the
                // call. (The bound that matters for safety, against the nodes' keys, is checked below.)
                let impliedStart = lock.validUntil - (ttl - drift)
                let impliedNow = lock.validUntil - lock.validity
                #expect(grant.started <= impliedStart, "lock \(grant.index): clock started before the call")
                #expect(impliedStart <= impliedNow && impliedNow <= grant.returned, "lock \(grant.index)")
                #expect(lock.validUntil - grant.returned >= ttl - elapsed - drift, "lock \(grant.index)")
                #expect(lock.validity > .zero)
                if grant.started > killInstant {
                    afterKill += 1
                    #expect(lock.nodes.count == 2, "lock \(grant.index) after the kill: \(lock.nodes)")
                    #expect(!lock.nodes.contains(deadNode))
                }
            }
            #expect(afterKill >= 30, "only \(afterKill) locks after the kill")
            // Safety against the keys: every granting node keeps the key at least `drift` past the
            // validity's end.
            let validUntil = Dictionary(
                uniqueKeysWithValues: grants.entries.map { ($0.index, $0.lock.validUntil) })
            var tightest = Duration.seconds(1_000)
            for expiry in expiries.entries {
                let end = try #require(validUntil[expiry.index])
                tightest = min(tightest, expiry.latest - (end + drift))
                #expect(
                    expiry.latest >= end + drift,
                    "lock \(expiry.index): the key on \(expiry.node) expires \(end + drift - expiry.latest) before validUntil + drift"
                )
            }
            // Every grant was checked on its granting nodes (the node being killed may have gone first).
            let grantingNodes = grants.entries.reduce(0) { $0 + $1.lock.nodes.count }
            #expect(expiries.count + unreadable.count == grantingNodes)
            #expect(unreadable.count <= 2, "\(unreadable.entries)")
            #expect(expiries.count >= 2 * 60 - unreadable.count, "each lock checked on at least 2 nodes")
            #expect(checker.violations().isEmpty, "\(checker.report())")
            print(
                "scenario 1: \(grants.count) locks granted, \(afterKill) after the kill; slowest lock "
                    + "\(longest); validity = ttl − elapsed − \(drift), elapsed measured within each call; "
                    + "\(expiries.count) keys checked, smallest margin past validUntil + drift \(tightest)")
        }

        /// Scenario 2: two of three nodes down. `lock` fails with `.quorumUnavailable` within
        /// (retries + 1) × (nodeTimeout + retryWait) + margin, and the surviving node is left with no key.
        @Test func majorityDownFailsFastAndLeavesNothing() async throws {
            let group = try await RedisServerGroup.start(count: 3)
            defer { group.stopInBackground() }
            let retries = 2
            let nodeTimeout = Duration.milliseconds(250)
            let retryWait = Duration.milliseconds(20)
            let options = Fault.options(retries: retries, nodeTimeout: nodeTimeout, retryWait: retryWait)
            let redlock = try await Fault.connectedRedlock(group.ports, options)
            let survivor = group[2]
            let setsBefore = try await Fault.commandCalls(survivor, "set")

            #expect(await group[0].kill9())
            #expect(await group[1].kill9())
            #expect(!group[0].isRunning && !group[1].isRunning)

            let resource = Fault.resource()
            let started = ContinuousClock.now
            let error = try await #require(throws: RedlockError.self) {
                try await redlock.lock(resource, ttl: .seconds(10))
            }
            let elapsed = ContinuousClock.now - started
            let bound = (nodeTimeout + retryWait) * (retries + 1)
            #expect(error.kind == .quorumUnavailable, "\(error)")
            #expect(error.attempts == retries + 1)
            #expect(elapsed < bound + .seconds(1), "took \(elapsed), bound \(bound) + 1 s")
            for server in [group[0], group[1]] {
                let failure = Fault.failure(error, node: Fault.address(server.port).description)
                #expect(failure != nil, "the dead node must count as failed: \(error)")
            }
            // Each attempt's SET reached the survivor (the last one maybe after `lock` returned: the dead
            // nodes decided the attempt at once); each was released there.
            try await waitUntil(timeout: .seconds(3), "every attempt's SET reached the survivor") {
                try await Fault.commandCalls(survivor, "set") - setsBefore >= retries + 1
            }
            #expect(try await Fault.commandCalls(survivor, "set") - setsBefore == retries + 1)
            try await waitUntil(timeout: .seconds(3), "the survivor released") {
                try await Fault.exists(survivor, resource) == false
            }
            #expect(try await Fault.dbsize(survivor) == 0)
            await redlock.close()
            print("scenario 2: quorumUnavailable after \(elapsed) (bound \(bound) + margin), survivor empty")
        }

        /// One node down and another holding a foreign value: no one holds the resource on a majority,
        /// so every attempt fails for want of answers, and `lock` must say `.quorumUnavailable`. The
        /// retries reuse the lock's value, and the failed attempt's release runs in the background:
        /// when the next attempt reaches the third node first, its own leftover must not count as
        /// someone else's refusal (the "connection errors reported as taken" bug of redlock-rb).
        @Test func ownLeftoverOfAFailedAttemptIsNotReportedAsTaken() async throws {
            let group = try await RedisServerGroup.start(count: 3)
            defer { group.stopInBackground() }
            let redlock = try await Fault.connectedRedlock(
                group.ports, Fault.options(retries: 3, nodeTimeout: .milliseconds(300), retryWait: .zero))
            #expect(await group[1].kill9())
            #expect(!group[1].isRunning)
            var kinds: [RedlockError.Kind] = []
            var example: RedlockError?
            for round in 0..<20 {
                let resource = Fault.resource() + "-\(round)"
                _ = try await group[2].cli("SET", resource, "someone-else", "PX", "30000")
                let error = try await #require(throws: RedlockError.self) {
                    try await redlock.lock(resource, ttl: .seconds(5))
                }
                kinds.append(error.kind)
                if error.kind != .quorumUnavailable && example == nil { example = error }
                try await waitUntil(timeout: .seconds(3), "round \(round): released") {
                    try await Fault.exists(group[0], resource) == false
                }
            }
            let taken = kinds.count { $0 == .taken }
            print(
                "own leftover: \(taken) of \(kinds.count) locks reported .taken; e.g. \(example.map { "\($0)" } ?? "-")"
            )
            #expect(
                kinds.allSatisfy { $0 == .quorumUnavailable }, "\(taken) of 20 reported taken: \(example!)")
            await redlock.close()
        }

        /// Scenario 8, negative control: two nodes restarted without persistence inside the ttl lose
        /// client A's lock. Client C, a process that starts after the restart (so it cannot know), gets
        /// the same resource, and the checker must find the overlap. Client B, connected before the
        /// crash, sees the servers' new run_id and does not count their grants until the ttl is over.
        @Test func restartWithoutPersistenceBreaksMutualExclusion() async throws {
            let group = try await RedisServerGroup.start(count: 3)
            defer { group.stopInBackground() }
            let clientA = try await Fault.connectedRedlock(group.ports, Fault.options(id: "A"))
            let clientB = try await Fault.connectedRedlock(group.ports, Fault.options(id: "B", retries: 1))
            let resource = Fault.resource()
            let checker = MutualExclusionChecker()

            let lockA = try await clientA.lock(resource, ttl: .seconds(5))
            checker.acquired(lockA, client: "A")
            // B has locked through these nodes before (its own resource), so it knows their ttls.
            try await clientB.release(try await clientB.lock(Fault.resource(), ttl: .seconds(5)))
            for index in 0..<2 {
                let oldPID = group[index].pid
                #expect(await group[index].kill9())
                #expect(!group[index].isRunning)
                try await group[index].restart()
                #expect(group[index].isRunning && group[index].pid != oldPID)
                #expect(try await Fault.exists(group[index], resource) == false, "no AOF: the key is gone")
            }
            #expect(try await Fault.get(group[2], resource) == lockA.value)

            // B (an old client) is refused: the restarted nodes' grants do not count yet.
            try await connected(clientB, timeout: .seconds(5))
            do {
                let lockB = try await clientB.lock(resource, ttl: .seconds(5))
                checker.acquired(lockB, client: "B")
                Issue.record("an old client got the lock from restarted nodes: \(lockB)")
                try await clientB.release(lockB)
            } catch let error as RedlockError {
                #expect(error.kind == .quorumUnavailable, "\(error)")
                print("scenario 8: old client B refused: \(error)")
            }

            // C (a new client) cannot know: it gets the lock, and the checker sees the overlap.
            let clientC = try await Fault.connectedRedlock(group.ports, Fault.options(id: "C", retries: 3))
            let lockC = try await clientC.lock(resource, ttl: .seconds(5))
            checker.acquired(lockC, client: "C")
            #expect(lockA.isValid, "C must have got the lock while A's was still valid")
            let violations = checker.violations()
            #expect(violations.count == 1, "the checker must see the overlap: \(checker.holds)")
            #expect(violations.first.map { [$0.0.client, $0.1.client] } == ["A", "C"])
            print(
                "scenario 8 (negative control): checker found \(violations.count) overlap: \(checker.report())"
            )
            try await clientC.release(lockC)
            _ = try? await clientA.release(lockA)
            await clientA.close()
            await clientB.close()
            await clientC.close()
        }

        /// Scenario 8: the restart delayed by the ttl. While A's lock is valid B cannot get it (two
        /// nodes down, the third holds A's key); B gets it only after, and no windows overlap.
        @Test func restartDelayedByTheTTLKeepsMutualExclusion() async throws {
            let group = try await RedisServerGroup.start(count: 3)
            defer { group.stopInBackground() }
            let ttl = Duration.seconds(3)
            let clientA = try await Fault.connectedRedlock(group.ports, Fault.options(id: "A"))
            let clientB = try await Fault.connectedRedlock(group.ports, Fault.options(id: "B"))
            let resource = Fault.resource()
            let checker = MutualExclusionChecker()

            let lockA = try await clientA.lock(resource, ttl: ttl)
            checker.acquired(lockA, client: "A")
            #expect(await group[0].kill9())
            #expect(await group[1].kill9())
            #expect(!group[0].isRunning && !group[1].isRunning)
            let restarts = Task {
                try await group[0].restart(after: ttl)
                try await group[1].restart()
            }

            var refusals: [RedlockError.Kind] = []
            var lockB: Lock?
            let deadline = ContinuousClock.now + ttl + .seconds(10)
            while lockB == nil && ContinuousClock.now < deadline {
                do {
                    let lock = try await clientB.lock(resource, ttl: ttl)
                    checker.acquired(lock, client: "B")
                    lockB = lock
                } catch let error as RedlockError {
                    refusals.append(error.kind)
                    try await Task.sleep(for: .milliseconds(100))
                }
            }
            try await restarts.value
            let granted = try #require(lockB, "B never got the lock after the restart")
            #expect(!refusals.isEmpty)
            #expect(refusals.allSatisfy { $0 == .quorumUnavailable || $0 == .taken }, "\(refusals)")
            #expect(granted.validUntil > lockA.validUntil)
            #expect(checker.violations().isEmpty, "\(checker.report())")
            print(
                "scenario 8 (delayed restart): B refused \(refusals.count)× while A was valid, then granted")
            try await clientB.release(granted)
            await clientA.close()
            await clientB.close()
        }

        /// Scenario 8 with `appendonly yes` + `appendfsync always`: the restarted nodes still hold A's
        /// key, so B is refused with `.taken`, and nothing overlaps.
        @Test func restartWithAppendOnlyKeepsMutualExclusion() async throws {
            let group = try await RedisServerGroup.start(count: 3, RedisServerConfiguration(appendOnly: true))
            defer { group.stopInBackground() }
            #expect(try await group[0].cli("CONFIG", "GET", "appendfsync").hasSuffix("always"))
            let clientA = try await Fault.connectedRedlock(group.ports, Fault.options(id: "A"))
            let clientB = try await Fault.connectedRedlock(group.ports, Fault.options(id: "B", retries: 1))
            let resource = Fault.resource()
            let checker = MutualExclusionChecker()

            let lockA = try await clientA.lock(resource, ttl: .seconds(5))
            checker.acquired(lockA, client: "A")
            // `lock` returns once a quorum granted: wait until every node has A's key (and so its AOF).
            _ = try await waitUntil("A's key on every node") {
                for server in group.servers where try await Fault.get(server, resource) != lockA.value {
                    return false
                }
                return true
            }
            for index in 0..<2 {
                let oldPID = group[index].pid
                #expect(await group[index].kill9())
                #expect(!group[index].isRunning)
                try await group[index].restart()
                #expect(group[index].isRunning && group[index].pid != oldPID)
                #expect(try await Fault.get(group[index], resource) == lockA.value, "the AOF kept A's key")
            }
            // Both clients are back on every node: B's attempt meets every node, and A's release too.
            try await waitUntil(timeout: .seconds(5)) {
                [clientA, clientB].allSatisfy { $0.nodes.allSatisfy(\.isConnected) }
            }

            let error = try await #require(throws: RedlockError.self) {
                try await clientB.lock(resource, ttl: .seconds(5))
            }
            #expect(error.kind == .taken, "\(error)")
            #expect(lockA.isValid)
            #expect(checker.violations().isEmpty)
            #expect(try await clientA.release(lockA) == 3)
            await clientA.close()
            await clientB.close()
        }
    }
}
