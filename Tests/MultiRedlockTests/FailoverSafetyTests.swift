import LocalRedis
import MultiRedlock
import MultiRedlockTesting
import TestSupport
import Testing

extension Failover {
    /// Safety edges: a client paused past its validity, expiry, and the quorum arithmetic on real
    /// servers.
    @Suite struct Safety {
        /// Scenario 9 (in process): client A is "paused" past its validity (it sleeps), client B takes
        /// the resource. When A resumes, `renew` fails with `.notHeld` and does not re-acquire, and
        /// `unlock`/`release` with A's value leave B's key alone.
        @Test func clientPausedPastItsValidity() async throws {
            let group = try await RedisServerGroup.start(count: 3)
            defer { group.stopInBackground() }
            let clientA = try await Fault.connectedRedlock(group.ports, Fault.options(id: "A"))
            let clientB = try await Fault.connectedRedlock(group.ports, Fault.options(id: "B"))
            let resource = Fault.resource()
            let checker = MutualExclusionChecker()

            let lockA = try await clientA.lock(resource, ttl: .seconds(1))
            let ticketA = checker.acquired(lockA, client: "A")
            // A's pause: past its validity and past the keys' ttl.
            try await Task.sleep(until: lockA.validUntil + .milliseconds(600), clock: .continuous)
            #expect(!lockA.isValid)
            for server in group.servers {
                #expect(try await Fault.exists(server, resource) == false, "A's keys expired")
            }
            let lockB = try await clientB.lock(resource, ttl: .seconds(10))
            let ticketB = checker.acquired(lockB, client: "B")

            // A wakes up, finishes its "work", and tries to renew and release.
            checker.released(ticketA)
            let renewError = try await #require(throws: RedlockError.self) { try await clientA.renew(lockA) }
            #expect(renewError.kind == .notHeld, "\(renewError)")
            clientA.unlock(resource, value: lockA.value)
            let releaseError = try await #require(throws: RedlockError.self) {
                try await clientA.release(lockA)
            }
            #expect(releaseError.kind == .notHeld, "\(releaseError)")
            try await Task.sleep(for: .milliseconds(300))
            for server in group.servers {
                #expect(try await Fault.get(server, resource) == lockB.value, "B's key is untouched")
                let pttl = Int(try await server.cli("PTTL", resource)) ?? 0
                #expect(pttl > 8_000, "renew did not shorten B's ttl to A's 1 s: \(pttl)")
            }
            #expect(lockB.isValid)
            checker.released(ticketB)
            #expect(try await clientB.release(lockB) == 3)

            #expect(checker.violations().isEmpty, "\(checker.report())")
            // The checker reports that A acted past its validity (Kleppmann's pause).
            #expect(checker.overruns().map(\.client) == ["A"])
            await clientA.close()
            await clientB.close()
        }

        /// Scenario 10: ttl 500 ms, wait 1 s: renew and release report `.notHeld`; a foreign key set on
        /// one node meanwhile is untouched, and no key is re-created elsewhere.
        @Test func expiredLockIsNotHeldAndForeignKeyIsUntouched() async throws {
            let group = try await RedisServerGroup.start(count: 3)
            defer { group.stopInBackground() }
            let redlock = try await Fault.connectedRedlock(group.ports)
            let resource = Fault.resource()
            let lock = try await redlock.lock(resource, ttl: .milliseconds(500))
            try await Task.sleep(for: .seconds(1))
            for server in group.servers {
                #expect(try await Fault.exists(server, resource) == false)
            }
            _ = try await group[0].cli("SET", resource, "foreign", "PX", "30000")

            let renewError = try await #require(throws: RedlockError.self) { try await redlock.renew(lock) }
            #expect(renewError.kind == .notHeld, "\(renewError)")
            let releaseError = try await #require(throws: RedlockError.self) {
                try await redlock.release(lock)
            }
            #expect(releaseError.kind == .notHeld, "\(releaseError)")
            redlock.unlock(resource, value: lock.value)
            try await Task.sleep(for: .milliseconds(300))

            #expect(try await Fault.get(group[0], resource) == "foreign")
            let pttl = Int(try await group[0].cli("PTTL", resource)) ?? 0
            #expect(pttl > 25_000, "the foreign key's ttl was not touched: \(pttl)")
            #expect(try await Fault.exists(group[1], resource) == false, "renew must not re-create the key")
            #expect(try await Fault.exists(group[2], resource) == false)
            await redlock.close()
        }

        /// Scenario 11: five servers; a foreign value on every subset of them (32 masks). `lock` succeeds
        /// exactly when at least 3 are free, and fails as `.taken` exactly when more than 2 are taken;
        /// foreign values are never touched and ours never stay behind.
        @Test func quorumMasksOnFiveServers() async throws {
            let group = try await RedisServerGroup.start(count: 5)
            defer { group.stopInBackground() }
            let redlock = try await Fault.connectedRedlock(group.ports, Fault.options(retries: 0))
            #expect(redlock.quorum == 3)
            let names = group.ports.map { Fault.address($0).description }
            var granted = 0
            var taken = 0
            for mask in 0..<32 {
                let resource = Fault.resource() + "-mask\(mask)"
                let takenNodes = (0..<5).filter { mask & (1 << $0) != 0 }
                for index in takenNodes {
                    _ = try await Fault.command(
                        group[index].port, ["SET", resource, "foreign-\(mask)", "PX", "30000"])
                }
                let free = 5 - takenNodes.count
                do {
                    let lock = try await redlock.lock(resource, ttl: .seconds(10))
                    granted += 1
                    #expect(free >= 3, "mask \(mask): granted with only \(free) free nodes")
                    #expect(lock.nodes.count >= 3)
                    #expect(Set(lock.nodes).isDisjoint(with: takenNodes.map { names[$0] }), "mask \(mask)")
                    #expect(try await redlock.release(lock) == free, "mask \(mask)")
                } catch let error as RedlockError {
                    taken += error.kind == .taken ? 1 : 0
                    #expect(free < 3, "mask \(mask): refused with \(free) free nodes: \(error)")
                    #expect(error.kind == .taken, "mask \(mask): \(error)")
                }
                for (index, server) in group.servers.enumerated() {
                    if takenNodes.contains(index) {
                        #expect(try await Fault.get(server, resource) == "foreign-\(mask)")
                    } else {
                        try await waitUntil(timeout: .seconds(3), "mask \(mask) node \(index) free") {
                            try await Fault.exists(server, resource) == false
                        }
                    }
                }
            }
            // Masks with at most 2 taken: C(5,0)+C(5,1)+C(5,2) = 16; the other 16 are taken.
            #expect(granted == 16)
            #expect(taken == 16)
            print(
                "scenario 11: 32 masks on 5 servers: \(granted) granted, \(taken) taken, as the quorum says")
            await redlock.close()
        }
    }
}
