import LocalRedis
import MultiRedlock
import TestSupport
import Testing

/// Issue 12, item 4, against real servers: one redis-server reached under two addresses (its own
/// port and a TCP proxy's) is one vote, recognised by the `run_id` its handshake reads.
@Suite struct DuplicateServerTests {
    @Test func oneServerUnderTwoAddressesVotesOnce() async throws {
        let group = try await RedisServerGroup.start(count: 2)
        defer { group.stopInBackground() }
        let proxy = try TCPProxy(targetPort: group[0].port)
        defer { proxy.stop() }
        // Nodes: server A, server A again through the proxy, server B.
        let redlock = try await connected(
            Redlock(
                servers: [group[0].port, proxy.port, group[1].port].map { Fault.address($0) },
                options: Fault.options()))
        #expect(redlock.nodes.compactMap(\.serverID).count == 3)
        #expect(redlock.nodes[0].serverID == redlock.nodes[1].serverID, "the proxy reaches server A")
        #expect(redlock.isConnected, "A and B: two distinct servers of three")

        let resource = Fault.resource()
        let lock = try await redlock.lock(resource, ttl: .seconds(30))
        #expect(lock.nodes == [redlock.nodes[0].name, redlock.nodes[2].name])
        // B loses the key: only A holds the lock now, a minority of three, so a renew must fail.
        #expect(try await group[1].cli("DEL", resource) == "1")
        let error = try await #require(throws: RedlockError.self) { try await redlock.renew(lock) }
        #expect(error.kind != .closed)
        let duplicate = try #require(Fault.failure(error, node: redlock.nodes[1].name), "\(error)")
        #expect(duplicate.kind == .duplicate)
        #expect(duplicate.message.contains(redlock.nodes[0].name), "names the other address: \(duplicate)")

        // With B down, A alone (under two addresses) is no quorum.
        #expect(await group[1].kill9())
        #expect(!group[1].isRunning)
        try await waitUntil { !redlock.nodes[2].isConnected }
        #expect(!redlock.isConnected)
        let refused = try await #require(throws: RedlockError.self) {
            try await redlock.lock(Fault.resource(), ttl: .seconds(5))
        }
        #expect(refused.kind == .quorumUnavailable)
        await redlock.close()
    }
}
