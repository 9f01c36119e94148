import LocalRedis
import MultiRedlock
import MultiRedlockTesting
import TestSupport
import Testing

extension Failover {
    /// Scenario 5: replies lost after the write, through `TCPProxy` (client → server bytes go through,
    /// server → client bytes are dropped).
    @Suite struct Proxy {
        @Test func proxyForwardsAndDrops() async throws {
            // No password: an AUTH first would add a reply for the dropping proxy to swallow.
            let group = try await RedisServerGroup.start(count: 1, RedisServerConfiguration(password: nil))
            defer { group.stopInBackground() }
            let proxy = try TCPProxy(targetPort: group[0].port)
            defer { proxy.stop() }
            #expect(try await Fault.command(proxy.port, ["PING"], password: nil) == "+PONG")
            #expect(try await Fault.command(proxy.port, ["SET", "k", "v"], password: nil) == "+OK")
            proxy.dropReplies = true
            await #expect(throws: (any Error).self) {
                try await Fault.command(
                    proxy.port, ["SET", "k", "w"], password: nil, timeout: .milliseconds(300))
            }
            try await waitUntil(timeout: .seconds(2), "the proxy dropped the reply") {
                proxy.counters.dropped > 0
            }
            // The write went through although its reply was dropped.
            #expect(try await Fault.get(group[0], "k", password: nil) == "w")
            proxy.dropReplies = false
            #expect(try await Fault.command(proxy.port, ["GET", "k"], password: nil) == "w")
            #expect(proxy.counters.accepted == 4)
        }

        /// One node behind a dropping proxy: the lock still succeeds with the other two, the node
        /// counts as not granted (a timeout in the evidence when its vote is needed), and its key, which
        /// did land, is released once replies flow again.
        @Test func oneNodeLosesRepliesAfterTheWrite() async throws {
            let group = try await RedisServerGroup.start(count: 3)
            defer { group.stopInBackground() }
            let proxy = try TCPProxy(targetPort: group[0].port)
            defer { proxy.stop() }
            let proxied = Fault.address(proxy.port).description
            let ttl = Duration.seconds(10)
            let redlock = try await Fault.connectedRedlock(
                [proxy.port, group[1].port, group[2].port], Fault.options(nodeTimeout: .milliseconds(250)))
            let resource = Fault.resource()

            let warmUp = try await redlock.lock(resource, ttl: ttl)
            #expect(try await redlock.release(warmUp) == 3, "the proxy forwards both ways")

            proxy.dropReplies = true
            let lock = try await redlock.lock(resource, ttl: ttl)
            #expect(!lock.nodes.contains(proxied), "\(lock.nodes)")
            #expect(lock.nodes.count == 2)
            // The SET did reach the server behind the proxy; only its reply was lost.
            try await waitUntil(timeout: .seconds(2), "the SET landed behind the proxy") {
                try await Fault.get(group[0], resource) == lock.value
            }
            // The server answered and the proxy dropped that answer (the quorum may decide before the
            // answer reaches the proxy, so wait for it rather than read the counter once).
            try await waitUntil(timeout: .seconds(2), "the proxy dropped the SET's reply") {
                proxy.counters.dropped > 0
            }
            // Release once the SET has timed out (a release sent right behind it on the same connection
            // would reach the server too, and delete the key at once).
            try await Task.sleep(for: .milliseconds(400))
            #expect(try await redlock.release(lock) == 2)
            try await Task.sleep(for: .milliseconds(300))
            #expect(try await Fault.get(group[0], resource) == lock.value, "still there while replies drop")

            let healed = ContinuousClock.now
            proxy.dropReplies = false
            let took = try await waitUntil(timeout: .seconds(8), "the lost-reply key was released") {
                try await Fault.exists(group[0], resource) == false
            }
            #expect(ContinuousClock.now - healed < ttl - .seconds(1), "released, not expired")

            // When its vote is needed, the dropping node is a timeout, not a grant.
            try await waitUntil(timeout: .seconds(5)) { redlock.nodes[0].isConnected }
            let other = Fault.resource()
            _ = try await group[2].cli("SET", other, "someone-else", "PX", "30000")
            proxy.dropReplies = true
            let error = try await #require(throws: RedlockError.self) {
                try await redlock.lock(other, ttl: ttl)
            }
            #expect(error.kind == .quorumUnavailable, "\(error)")
            #expect(Fault.failure(error, node: proxied)?.kind == .timeout, "\(error)")
            try await waitUntil(timeout: .seconds(2), "the SET landed behind the proxy") {
                try await Fault.exists(group[0], other)
            }
            proxy.dropReplies = false
            try await waitUntil(timeout: .seconds(8), "the second lost-reply key was released") {
                try await Fault.exists(group[0], other) == false
            }
            #expect(try await Fault.info(group[0], "expired_keys") == "0")
            #expect(try await Fault.get(group[2], other) == "someone-else")
            print("scenario 5: one dropping node: key released \(took) after replies flowed again")
            await redlock.close()
        }

        /// Two of three nodes behind dropping proxies: the lock fails, is released on the healthy node
        /// at once, and on the other two once their replies flow again.
        @Test func twoNodesLoseRepliesAfterTheWrite() async throws {
            let group = try await RedisServerGroup.start(count: 3)
            defer { group.stopInBackground() }
            let proxies = [try TCPProxy(targetPort: group[0].port), try TCPProxy(targetPort: group[1].port)]
            defer { for proxy in proxies { proxy.stop() } }
            let ttl = Duration.seconds(10)
            let redlock = try await Fault.connectedRedlock(
                [proxies[0].port, proxies[1].port, group[2].port],
                Fault.options(retries: 1, nodeTimeout: .milliseconds(250)))
            let resource = Fault.resource()

            for proxy in proxies { proxy.dropReplies = true }
            let started = ContinuousClock.now
            let error = try await #require(throws: RedlockError.self) {
                try await redlock.lock(resource, ttl: ttl)
            }
            let elapsed = ContinuousClock.now - started
            #expect(error.kind == .quorumUnavailable, "\(error)")
            #expect(elapsed < .seconds(2), "\(elapsed)")
            for proxy in proxies {
                let failure = Fault.failure(error, node: Fault.address(proxy.port).description)
                #expect(failure != nil, "\(error)")
            }
            // The SETs landed behind both proxies.
            let landed0 = try await Fault.get(group[0], resource)
            let landed1 = try await Fault.get(group[1], resource)
            #expect(landed0 != nil && landed1 != nil, "the writes went through")
            try await waitUntil(timeout: .seconds(2), "both proxies dropped a reply") {
                proxies.allSatisfy { $0.counters.dropped > 0 }
            }
            try await waitUntil(timeout: .seconds(3), "the healthy node released") {
                try await Fault.exists(group[2], resource) == false
            }

            let healed = ContinuousClock.now
            for proxy in proxies { proxy.dropReplies = false }
            let took = try await waitUntil(timeout: .seconds(8), "released everywhere") {
                var total = 0
                for server in group.servers { total += try await Fault.dbsize(server) }
                return total == 0
            }
            #expect(ContinuousClock.now - healed < ttl - .seconds(1), "released, not expired")
            for server in group.servers {
                #expect(try await Fault.info(server, "expired_keys") == "0")
            }
            print(
                "scenario 5: two dropping nodes: quorumUnavailable after \(elapsed); released everywhere "
                    + "\(took) after replies flowed again")
            await redlock.close()
        }
    }
}
