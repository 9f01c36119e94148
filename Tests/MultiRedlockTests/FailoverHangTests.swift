import LocalRedis
import MultiRedlock
import MultiRedlockTesting
import TestSupport
import Testing

extension Failover {
    /// Servers that hang (SIGSTOP): connections are accepted, nothing is answered, and what was sent
    /// is applied after SIGCONT.
    @Suite struct Hang {
        static func median(_ values: [Duration]) -> Duration {
            let sorted = values.sorted()
            return sorted[sorted.count / 2]
        }

        /// Scenario 3: one node hung. `lock` still succeeds, at most about `nodeTimeout` slower; after
        /// `resume()` the late SET lands, and the background release removes it well before its ttl.
        @Test func oneNodeHungLocksAndTheLateSetIsCleanedUp() async throws {
            let group = try await RedisServerGroup.start(count: 3)
            defer { group.stopInBackground() }
            let nodeTimeout = Duration.milliseconds(250)
            let redlock = try await Fault.connectedRedlock(
                group.ports, Fault.options(nodeTimeout: nodeTimeout))
            let hung = group[0]
            let hungName = Fault.address(hung.port).description
            let resource = Fault.resource()
            let ttl = Duration.seconds(10)

            var baseline: [Duration] = []
            for _ in 0..<7 {
                let started = ContinuousClock.now
                let lock = try await redlock.lock(resource, ttl: ttl)
                baseline.append(ContinuousClock.now - started)
                #expect(try await redlock.release(lock) == 3)
            }
            let setsBefore = try await Fault.commandCalls(hung, "set")
            let expiredBefore = try await Fault.info(hung, "expired_keys")

            #expect(await hung.pause())
            #expect(hung.isPaused, "the node must really be stopped")
            #expect(await offPool { hung.rawPing(timeout: .milliseconds(200)) } == nil)

            var paused: [Duration] = []
            var values: [String] = []
            for _ in 0..<5 {
                let started = ContinuousClock.now
                let lock = try await redlock.lock(resource, ttl: ttl)
                paused.append(ContinuousClock.now - started)
                values.append(lock.value)
                #expect(!lock.nodes.contains(hungName), "\(lock.nodes)")
                #expect(lock.nodes.count == 2)
                // The release waits for every node: the hung one fails (and is retried in the background).
                #expect(try await redlock.release(lock) == 2)
            }
            let extra = Self.median(paused) - Self.median(baseline)
            let worst = paused.max()! - Self.median(baseline)
            print(
                "scenario 3: lock latency with one node hung: median \(Self.median(paused)) vs "
                    + "\(Self.median(baseline)) healthy; extra latency median \(extra), worst \(worst) "
                    + "(nodeTimeout \(nodeTimeout))")
            #expect(worst < nodeTimeout + .milliseconds(300), "worst extra latency \(worst)")
            // While hung, the key is still on the two others? No: every release reached them.
            for server in [group[1], group[2]] {
                #expect(try await Fault.exists(server, resource) == false)
            }

            #expect(await hung.resume())
            #expect(!hung.isPaused)
            let resumed = ContinuousClock.now
            // The first SET sent while hung was applied after SIGCONT…
            try await waitUntil(timeout: .seconds(3), "the late SET ran") {
                try await Fault.commandCalls(hung, "set") > setsBefore
            }
            // …and the background release deleted it: gone long before its 10 s ttl, not expired.
            let took = try await waitUntil(timeout: .seconds(7), "the late key was released") {
                try await Fault.exists(hung, resource) == false
            }
            #expect(ContinuousClock.now - resumed < ttl - .seconds(2))
            #expect(try await Fault.info(hung, "expired_keys") == expiredBefore, "deleted, not expired")
            for server in group.servers {
                #expect(try await Fault.dbsize(server) == 0)
            }
            print("scenario 3: late SET on the resumed node released \(took) after the check began")
            await redlock.close()
        }

        /// Scenario 4, attempt by attempt: with two of three nodes hung, each single attempt (retries 0)
        /// fails after about `nodeTimeout`, whatever state the hung nodes' connections are in (first
        /// timeout, reconnecting to a server that accepts but never answers, backing off).
        @Test func eachAttemptAgainstAHungMajorityTakesAboutTheNodeTimeout() async throws {
            let group = try await RedisServerGroup.start(count: 3)
            defer { group.stopInBackground() }
            let nodeTimeout = Duration.milliseconds(250)
            let redlock = try await Fault.connectedRedlock(
                group.ports, Fault.options(retries: 0, nodeTimeout: nodeTimeout))
            for server in [group[0], group[1]] {
                #expect(await server.pause())
                #expect(server.isPaused)
            }
            var durations: [Duration] = []
            for _ in 0..<12 {
                let started = ContinuousClock.now
                let error = try await #require(throws: RedlockError.self) {
                    try await redlock.lock(Fault.resource(), ttl: .seconds(10))
                }
                durations.append(ContinuousClock.now - started)
                #expect(error.kind == .quorumUnavailable)
            }
            for server in [group[0], group[1]] { #expect(await server.resume()) }
            let text = durations.map { "\(Int(Fault.milliseconds($0)))" }.joined(separator: ", ")
            print(
                "scenario 4: single attempts against a hung majority took [\(text)] ms (nodeTimeout 250 ms)")
            // At most about the node timeout. Attempts that meet the hung nodes' connections still up
            // wait for them (the first few); later ones fail at once while those connections are down
            // (reconnecting, backing off). Medians, so that one attempt slowed by a loaded machine does
            // not fail this, while a wait added to every attempt (twice the node timeout, a handshake
            // or release awaited on the hung nodes) does; and no attempt near a hang.
            let waited = durations.filter { $0 >= nodeTimeout / 2 }
            #expect(!waited.isEmpty, "no attempt waited for the hung nodes: [\(text)] ms")
            for sample in [durations, waited] where !sample.isEmpty {
                #expect(
                    Self.median(sample) < nodeTimeout + .milliseconds(150),
                    "median \(Self.median(sample)): [\(text)] ms")
            }
            #expect(
                durations.max()! < nodeTimeout * 2 + .seconds(1), "slowest \(durations.max()!): [\(text)] ms")
            await redlock.close()
        }

        /// Scenario 4: two of three nodes hung. `lock` fails within (retries + 1) × (nodeTimeout +
        /// retryWait) + retries × nodeTimeout (the release awaited between attempts waits for the hung
        /// nodes too) + margin; after `resume()` the late SETs land and are released everywhere.
        @Test func majorityHungFailsWithinTheBoundAndLeavesNothing() async throws {
            let group = try await RedisServerGroup.start(count: 3)
            defer { group.stopInBackground() }
            let retries = 2
            let nodeTimeout = Duration.milliseconds(250)
            let retryWait = Duration.milliseconds(20)
            let redlock = try await Fault.connectedRedlock(
                group.ports, Fault.options(retries: retries, nodeTimeout: nodeTimeout, retryWait: retryWait))
            let resource = Fault.resource()
            let hung = [group[0], group[1]]
            var setsBefore: [Int] = []
            for server in hung { setsBefore.append(try await Fault.commandCalls(server, "set")) }

            for server in hung {
                #expect(await server.pause())
                #expect(server.isPaused)
            }
            let started = ContinuousClock.now
            let error = try await #require(throws: RedlockError.self) {
                try await redlock.lock(resource, ttl: .seconds(10))
            }
            let elapsed = ContinuousClock.now - started
            // Each attempt waits at most nodeTimeout for the hung nodes; between attempts the library
            // awaits the failed attempt's release, which waits for them once more (at most nodeTimeout).
            let bound = (nodeTimeout + retryWait) * (retries + 1) + nodeTimeout * retries
            #expect(error.kind == .quorumUnavailable, "\(error)")
            #expect(error.attempts == retries + 1)
            #expect(elapsed < bound + .milliseconds(500), "took \(elapsed), bound \(bound) + 0.5 s")
            print("scenario 4: majority hung: quorumUnavailable after \(elapsed) (bound \(bound) + 0.5 s)")
            // The third node was released at once.
            try await waitUntil(timeout: .seconds(3), "the healthy node released") {
                try await Fault.exists(group[2], resource) == false
            }

            for server in hung {
                #expect(await server.resume())
                #expect(!server.isPaused)
            }
            let resumed = ContinuousClock.now
            for (index, server) in hung.enumerated() {
                try await waitUntil(timeout: .seconds(3), "the late SET ran on node \(index)") {
                    try await Fault.commandCalls(server, "set") > setsBefore[index]
                }
            }
            let took = try await waitUntil(timeout: .seconds(7), "nothing left locked") {
                var total = 0
                for server in group.servers { total += try await Fault.dbsize(server) }
                return total == 0
            }
            #expect(ContinuousClock.now - resumed < .seconds(8), "released, not expired (ttl 10 s)")
            for server in hung {
                #expect(try await Fault.info(server, "expired_keys") == "0")
            }
            print("scenario 4: late SETs released on every node \(took) after resume")
            await redlock.close()
        }
    }
}
