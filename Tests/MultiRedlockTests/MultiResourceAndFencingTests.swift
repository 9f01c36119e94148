import LocalRedis
import MultiRedlock
import TestSupport
import Testing

@testable import MultiRedlock

/// Multi-resource locks and fencing tokens against real redis-servers.
@Suite(.serialized)
struct MultiResourceAndFencingTests {
    /// A Redlock on `group`, returned once every node is connected (a quorum with `quorumOnly`).
    static func redlock(
        _ group: RedisServerGroup, fencing: Bool = false, id: String = "multi", retries: Int = 0,
        quorumOnly: Bool = false
    ) async throws -> Redlock {
        try await connected(
            Redlock(
                servers: group.ports.map {
                    RedisServer(
                        host: "127.0.0.1", port: $0, password: RedisServerConfiguration.defaultPassword)
                },
                options: RedlockOptions(
                    id: id, retries: retries, retryWait: .milliseconds(10), nodeTimeout: .milliseconds(500),
                    fencingTokens: fencing)),
            quorumOnly: quorumOnly)
    }

    /// `count` clients on `group`, each connected (see `redlock`).
    static func clients(
        _ count: Int, on group: RedisServerGroup, id: String, retries: Int
    ) async throws -> [Redlock] {
        var clients: [Redlock] = []
        for index in 0..<count {
            clients.append(try await redlock(group, fencing: true, id: "\(id)-\(index)", retries: retries))
        }
        return clients
    }

    @Test func newScriptDigestsMatchTheServers() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stopInBackground() }
        for script in [
            Scripts.acquireAll, Scripts.extendAll, Scripts.releaseAll, Scripts.acquireFenced,
            Scripts.raiseFence,
        ] {
            #expect(try await server.cli("SCRIPT", "LOAD", script.source) == script.sha1)
        }
    }

    @Test func allKeysOrNone() async throws {
        let group = try await RedisServerGroup.start(count: 3)
        defer { group.stopInBackground() }
        let redlock = try await Self.redlock(group)
        let base = RedlockIntegrationTests.uniqueResource()
        let keys = ["\(base)-a", "\(base)-b", "\(base)-c"]

        let lock = try await redlock.lock(keys, ttl: .seconds(10))
        #expect(lock.resources == keys)
        #expect(lock.resource == keys.joined(separator: ","))
        // Polled: `lock` and `renew` return once a quorum answered; the last node may follow a moment later.
        for server in group.servers {
            try await waitUntil {
                try await keys.asyncAllSatisfy { try await server.cli("GET", $0) == lock.value }
            }
        }
        let renewStarted = ContinuousClock.now
        let renewed = try await redlock.renew(lock, ttl: .seconds(30))
        // Each key's ttl is exactly 30 s from a moment after renewStarted (time-invariant on a slow machine).
        for server in group.servers {
            try await waitUntil {
                try await keys.asyncAllSatisfy { key in
                    let pttl = Int(try await server.cli("PTTL", key)) ?? -1
                    return pttl <= 30_000
                        && pttl >= 30_000 - RedlockIntegrationTests.milliseconds(since: renewStarted)
                }
            }
        }
        #expect(try await redlock.release(renewed) == 3)
        for server in group.servers {
            for key in keys { #expect(try await server.cli("EXISTS", key) == "0") }
        }

        // One key held elsewhere on one node: that node sets none of them, the other two grant.
        try await group[0].cli("SET", keys[1], "someone-else", "PX", "30000")
        let partial = try await redlock.lock(keys, ttl: .seconds(10))
        #expect(partial.nodes.count == 2)
        #expect(try await group[0].cli("EXISTS", keys[0], keys[2]) == "0")
        try await redlock.release(partial)

        // Held on two nodes: no quorum, and nothing of ours is left anywhere.
        try await group[1].cli("SET", keys[1], "someone-else", "PX", "30000")
        let error = try await #require(throws: RedlockError.self) {
            try await redlock.lock(keys, ttl: .seconds(10))
        }
        #expect(error.kind == .taken)
        try await waitUntil {
            try await group.servers.asyncAllSatisfy { try await $0.cli("EXISTS", keys[0], keys[2]) == "0" }
        }
        #expect(try await group[0].cli("GET", keys[1]) == "someone-else")

        // Renew fails once one key is gone on a majority: all or none.
        for server in group.servers { try await server.cli("DEL", keys[1]) }
        let held = try await redlock.lock(keys, ttl: .seconds(10))
        for server in group.servers.prefix(2) { try await server.cli("DEL", keys[2]) }
        let renewError = try await #require(throws: RedlockError.self) { try await redlock.renew(held) }
        #expect(renewError.kind == .notHeld)
        try await redlock.release(held)

        for bad in [[String](), [keys[0], keys[0]], [keys[0], ""]] {
            let invalid = try await #require(throws: RedlockError.self) {
                try await redlock.lock(bad, ttl: .seconds(1))
            }
            #expect(invalid.kind == .invalidArgument)
        }
        await redlock.close()
    }

    @Test func fencingTokensStrictlyIncreaseAcrossClients() async throws {
        let group = try await RedisServerGroup.start(count: 3, .init(appendOnly: true))
        defer { group.stopInBackground() }
        let clients = try await Self.clients(3, on: group, id: "fence", retries: 50)
        let resource = RedlockIntegrationTests.uniqueResource()
        var tokens: [Int64] = []
        for round in 0..<300 {
            let lock = try await clients[round % clients.count].lock(resource, ttl: .seconds(5))
            tokens.append(try #require(lock.fencingToken))
            try await clients[round % clients.count].release(lock)
            // A minority node crashes and comes back with its data (appendfsync always).
            if round == 100 {
                #expect(await group[0].kill9())
                #expect(!group[0].isRunning)
            }
            if round == 150 { try await group[0].restart() }
        }
        #expect(zip(tokens, tokens.dropFirst()).allSatisfy { $0 < $1 })
        #expect(tokens.first == 1)
        // The counter is on the nodes, never lowered.
        #expect(try await group[1].cli("GET", Lock.fencingKey(for: resource)) == String(tokens.last!))
        for client in clients { await client.close() }
    }

    @Test func concurrentFencedGrantsAreOrdered() async throws {
        let group = try await RedisServerGroup.start(count: 3)
        defer { group.stopInBackground() }
        let resource = RedlockIntegrationTests.uniqueResource()
        let clients = try await Self.clients(4, on: group, id: "race", retries: 1000)
        // Each holder records (token, start, end); holds never overlap, so tokens must follow time.
        let holds = try await withThrowingTaskGroup(of: [(Int64, ContinuousClock.Instant)].self) { tasks in
            for client in clients {
                tasks.addTask {
                    var mine: [(Int64, ContinuousClock.Instant)] = []
                    for _ in 0..<25 {
                        let lock = try await client.lock(resource, ttl: .seconds(5))
                        mine.append((try #require(lock.fencingToken), .now))
                        try await client.release(lock)
                    }
                    return mine
                }
            }
            return try await tasks.reduce(into: []) { $0 += $1 }
        }
        let ordered = holds.sorted { $0.1 < $1.1 }
        #expect(ordered.count == 100)
        #expect(zip(ordered, ordered.dropFirst()).allSatisfy { $0.0 < $1.0 })
        for client in clients { await client.close() }
    }

    @Test func aMajorityThatLosesItsDataBreaksTheTokens() async throws {
        // Negative test: the assumption is that nodes keep their counters. Without persistence, a
        // majority restarted empty hands out a token that goes backwards.
        let group = try await RedisServerGroup.start(count: 3)
        defer { group.stopInBackground() }
        let resource = RedlockIntegrationTests.uniqueResource()
        let before = try await Self.redlock(group, fencing: true, id: "before")
        var last: Int64 = 0
        for _ in 0..<5 {
            let lock = try await before.lock(resource, ttl: .seconds(2))
            last = try #require(lock.fencingToken)
            try await before.release(lock)
        }
        await before.close()
        #expect(last == 5)
        for server in group.servers.prefix(2) {
            #expect(await server.kill9())
            try await server.restart()
        }
        // The one node that kept its counter is out of reach (the group's stop resumes it).
        #expect(await group[2].pause())
        let after = try await Self.redlock(group, fencing: true, id: "after", quorumOnly: true)
        let lock = try await after.lock(resource, ttl: .seconds(2))
        #expect(try #require(lock.fencingToken) <= last)
        try await after.release(lock)
        await after.close()
    }

    /// A node restarted empty (its counter lost) is quarantined for the longest ttl used, then takes
    /// part again: its grants count, the write-back raises its counter to the token, and a majority
    /// with it in carries the tokens on (each old node stopped in turn).
    @Test func aRestartedNodeTakesPartAgainAfterItsQuarantine() async throws {
        let group = try await RedisServerGroup.start(count: 3)
        defer { group.stopInBackground() }  // stopping resumes a paused server first
        let resource = RedlockIntegrationTests.uniqueResource()
        let counterKey = Lock.fencingKey(for: resource)
        let redlock = try await Self.redlock(group, fencing: true, id: "rejoin", retries: 0)
        let names = group.ports.map {
            RedisServer(host: "127.0.0.1", port: $0, password: RedisServerConfiguration.defaultPassword)
                .description
        }
        let ttl = Duration.seconds(1)
        var tokens: [Int64] = []
        func lockOnce() async throws -> Lock {
            let lock = try await redlock.lock(resource, ttl: ttl)
            tokens.append(try #require(lock.fencingToken))
            try await redlock.release(lock)
            return lock
        }
        for _ in 0..<3 { _ = try await lockOnce() }

        #expect(await group[0].kill9())
        #expect(!group[0].isRunning)
        try await group[0].restart()
        #expect(try await group[0].cli("EXISTS", counterKey) == "0", "no persistence: the counter is gone")
        let node0 = try #require(redlock.nodes[0] as? RedisNode)
        try await waitUntil { node0.connection.serverRestartDetectedAt != nil && node0.isConnected }
        let detected = try #require(node0.connection.serverRestartDetectedAt)

        // Quarantined: granted by the two others only.
        let quarantined = try await lockOnce()
        #expect(quarantined.nodes == [names[1], names[2]], "\(quarantined.nodes)")

        // Past the longest ttl used (1 s) since the restart was seen: it takes part again.
        try await Task.sleep(until: detected + ttl + .milliseconds(100), clock: .continuous)
        let back = try await lockOnce()
        // It granted (its grant need not be among the first two counted, so `back.nodes` may omit
        // it): the write-back, which only lands where the key holds the lock's value, raised its
        // counter.
        try await waitUntil {
            try await group[0].cli("GET", counterKey) == String(back.fencingToken ?? -1)
        }
        // With either old node out of reach, the restarted one makes the majority, and tokens go on.
        for stopped in [1, 2] {
            #expect(await group[stopped].pause())
            let lock = try await lockOnce()
            #expect(lock.nodes.contains(names[0]) && !lock.nodes.contains(names[stopped]), "\(lock.nodes)")
            #expect(await group[stopped].resume())
            try await connected(redlock)
        }
        #expect(zip(tokens, tokens.dropFirst()).allSatisfy { $0 < $1 }, "\(tokens)")
        #expect(tokens.count == 7)
        await redlock.close()
    }

    @Test func fencingIsForSingleResources() async throws {
        let group = try await RedisServerGroup.start(count: 1)
        defer { group.stopInBackground() }
        let redlock = try await Self.redlock(group, fencing: true)
        let error = try await #require(throws: RedlockError.self) {
            try await redlock.lock(["a", "b"], ttl: .seconds(1))
        }
        #expect(error.kind == .invalidArgument)
        await redlock.close()
    }
}
