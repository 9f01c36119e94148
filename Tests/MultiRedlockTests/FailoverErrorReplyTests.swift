import LocalRedis
import MultiRedlock
import MultiRedlockTesting
import TestSupport
import Testing

@testable import MultiRedlock

/// A raw connection kept open across awaits (e.g. to hold the only client slot of a server).
// @unchecked Sendable: the connection is not thread-safe, but each test uses its box from one task,
// one awaited call at a time, so no two calls ever overlap.
final class FaultRawConnection: @unchecked Sendable {
    let connection: RawRedisConnection

    /// Connects, and authenticates when `password` is not nil (LocalRedis's default password unless
    /// said otherwise).
    init(port: Int, password: String? = RedisServerConfiguration.defaultPassword) throws {
        connection = try RawRedisConnection(port: port)
        if let password {
            let reply = try connection.request("AUTH", password, timeout: .seconds(3))
            guard reply == "+OK" else {
                throw FaultError("AUTH on port \(port) failed: \(reply ?? "no reply")")
            }
        }
    }

    func command(_ arguments: String..., timeout: Duration = .seconds(3)) async throws -> String? {
        try await offPool { [self] in
            try connection.send(arguments: arguments, timeout: timeout)
            return try Fault.readReply(connection, timeout: timeout)
        }
    }
}

extension Failover {
    /// Scenario 6: a node that answers with an error (OOM, READONLY, NOAUTH, BUSY, max clients,
    /// NOSCRIPT). Each is a vote against, with the server's message in the evidence, and a quorum
    /// of the other nodes still grants.
    @Suite struct ErrorReplies {
        /// With node 0 broken: (1) a lock succeeds with nodes 1 and 2; (2) with a foreign value on node
        /// 1, node 0's vote is needed, so the lock fails as `.quorumUnavailable` (never `.taken`) with
        /// node 0's failure, carrying `fragment`, in the evidence; nothing is left behind.
        static func expectVoteAgainst(
            _ group: RedisServerGroup, _ redlock: Redlock, fragment: String,
            kinds: Set<NodeFailure.Kind> = [.errorReply],
            password: String? = RedisServerConfiguration.defaultPassword,
            sourceLocation: SourceLocation = #_sourceLocation
        ) async throws {
            let broken = Fault.address(group[0].port, password: password).description
            let resource = Fault.resource()
            let lock = try await redlock.lock(resource, ttl: .seconds(10))
            #expect(
                Set(lock.nodes)
                    == Set(group.ports[1...].map { Fault.address($0, password: password).description }),
                sourceLocation: sourceLocation)
            #expect(try await redlock.release(lock) == 2, sourceLocation: sourceLocation)

            let contested = Fault.resource()
            _ = try await group[1].cli("SET", contested, "someone-else", "PX", "30000")
            let error = try await #require(throws: RedlockError.self, sourceLocation: sourceLocation) {
                try await redlock.lock(contested, ttl: .seconds(10))
            }
            #expect(error.kind == .quorumUnavailable, "\(error)", sourceLocation: sourceLocation)
            let failure = try #require(
                Fault.failure(error, node: broken), "\(error)", sourceLocation: sourceLocation)
            #expect(kinds.contains(failure.kind), "\(failure)", sourceLocation: sourceLocation)
            #expect(failure.message.contains(fragment), "\(failure)", sourceLocation: sourceLocation)
            #expect(error.description.contains(fragment), sourceLocation: sourceLocation)
            print("scenario 6: \(fragment): \(failure)")
            try await waitUntil(
                timeout: .seconds(3), "released on node 2", sourceLocation: sourceLocation
            ) {
                let contestedLeft = try await Fault.exists(group[2], contested)
                let resourceLeft = try await Fault.exists(group[2], resource)
                return !contestedLeft && !resourceLeft
            }
            #expect(
                try await Fault.get(group[1], contested) == "someone-else", sourceLocation: sourceLocation)
        }

        @Test func outOfMemory() async throws {
            let group = try await RedisServerGroup.start(count: 3)
            defer { group.stopInBackground() }
            let redlock = try await Fault.connectedRedlock(group.ports)
            let node = group[0]
            _ = try await node.cli("SET", "filler", String(repeating: "x", count: 10_000))
            _ = try await node.cli("CONFIG", "SET", "maxmemory-policy", "noeviction")
            _ = try await node.cli("CONFIG", "SET", "maxmemory", "1")
            #expect(try await node.cli("CONFIG", "GET", "maxmemory") == "maxmemory\n1")
            #expect(try await Fault.command(node.port, ["SET", "probe", "1"])?.hasPrefix("-OOM") == true)
            try await Self.expectVoteAgainst(group, redlock, fragment: "OOM")
            await redlock.close()
        }

        @Test func readOnlyReplica() async throws {
            let group = try await RedisServerGroup.start(count: 3)
            defer { group.stopInBackground() }
            let master = try await RedisServerGroup.start(count: 1)
            defer { master.stopInBackground() }
            let redlock = try await Fault.connectedRedlock(group.ports)
            let node = group[0]
            // The master requires the default password too (through a socket: never on an argv).
            let masterauth = ["CONFIG", "SET", "masterauth", RedisServerConfiguration.defaultPassword]
            #expect(try await Fault.command(node.port, masterauth) == "+OK")
            _ = try await node.cli("REPLICAOF", "127.0.0.1", String(master[0].port))
            try await waitUntil(timeout: .seconds(10), "the replica is in sync") {
                try await Fault.info(node, "master_link_status") == "up"
            }
            #expect(try await Fault.info(node, "role") == "slave")
            #expect(
                try await Fault.command(node.port, ["SET", "probe", "1"])?.hasPrefix("-READONLY") == true)
            try await Self.expectVoteAgainst(group, redlock, fragment: "READONLY")
            await redlock.close()
        }

        /// `requirepass` set live: connections already authenticated go on working (Redis 7), a new
        /// one gets NOAUTH. Forcing a reconnect with CLIENT KILL makes the node refuse the handshake.
        @Test func noAuthAfterRequirepassAndReconnect() async throws {
            // Servers and a Redlock without a password, so that the handshake sends no AUTH.
            let group = try await RedisServerGroup.start(count: 3, RedisServerConfiguration(password: nil))
            defer { group.stopInBackground() }
            let redlock = try await connected(
                Redlock(
                    servers: group.ports.map { Fault.address($0, password: nil) }, options: Fault.options()),
                timeout: .seconds(10))
            let node = group[0]
            let password = "fault-pass-\(UInt32.random(in: 0...UInt32.max))"
            // Through a socket, not redis-cli: a password never goes on an argv.
            let setPassword = ["CONFIG", "SET", "requirepass", password]
            #expect(try await Fault.command(node.port, setPassword, password: nil) == "+OK")
            #expect(try await Fault.command(node.port, ["PING"], password: nil)?.hasPrefix("-NOAUTH") == true)
            #expect(try await Fault.command(node.port, ["PING"], password: password) == "+PONG")

            // Still authenticated: the existing connection locks as before.
            let before = try await redlock.lock(Fault.resource(), ttl: .seconds(10))
            #expect(before.nodes.count >= 2)
            #expect(try await redlock.release(before) == 3, "the old connection stays authenticated")

            let killed = try await Fault.command(
                node.port, ["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"], password: password)
            #expect(killed == ":1", "the Redlock's connection was killed")
            try await waitUntil(timeout: .seconds(3)) { !redlock.nodes[0].isConnected }
            try await Self.expectVoteAgainst(
                group, redlock, fragment: "NOAUTH", kinds: [.unreachable, .errorReply], password: nil)
            #expect(!redlock.nodes[0].isConnected)
            await redlock.close()
        }

        @Test func busyScript() async throws {
            let group = try await RedisServerGroup.start(count: 3)
            defer { group.stopInBackground() }
            let redlock = try await Fault.connectedRedlock(group.ports)
            let node = group[0]
            _ = try await node.cli("CONFIG", "SET", "lua-time-limit", "10")
            #expect(
                try await node.cli("CONFIG", "GET", "busy-reply-threshold")
                    == "busy-reply-threshold\n10")
            let script = try FaultRawConnection(port: node.port)
            let scriptReply = Task {
                try await script.command("EVAL", "while true do end", "0", timeout: .seconds(20))
            }
            try await waitUntil(timeout: .seconds(3), "the server is busy") {
                try await Fault.command(node.port, ["PING"])?.hasPrefix("-BUSY") == true
            }
            try await Self.expectVoteAgainst(group, redlock, fragment: "BUSY")
            #expect(try await Fault.command(node.port, ["SCRIPT", "KILL"]) == "+OK")
            let reply = try await scriptReply.value
            #expect(reply?.contains("killed") == true, "\(reply ?? "nil")")
            #expect(try await Fault.command(node.port, ["PING"]) == "+PONG")
            // Healthy again: the node votes for the next lock.
            try await waitUntil(timeout: .seconds(3)) { redlock.nodes[0].isConnected }
            let lock = try await redlock.lock(Fault.resource(), ttl: .seconds(5))
            #expect(try await redlock.release(lock) == 3)
            await redlock.close()
        }

        /// `maxclients 1` with the slot taken by another client: the Redlock's reconnect is refused
        /// with "max number of clients reached".
        @Test func maxClientsReached() async throws {
            let group = try await RedisServerGroup.start(count: 3)
            defer { group.stopInBackground() }
            let redlock = try await Fault.connectedRedlock(group.ports)
            let node = group[0]
            let holder = try FaultRawConnection(port: node.port)
            #expect(try await holder.command("CONFIG", "SET", "maxclients", "1") == "+OK")
            #expect(try await holder.command("CONFIG", "GET", "maxclients") == "maxclients\n1")
            #expect(try await holder.command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes") == ":1")
            #expect(
                try await Fault.command(node.port, ["PING"], password: nil)?.contains(
                    "max number of clients reached")
                    == true)
            try await waitUntil(timeout: .seconds(3)) { !redlock.nodes[0].isConnected }
            try await Self.expectVoteAgainst(
                group, redlock, fragment: "max number of clients",
                kinds: [.unreachable, .errorReply, .connectionLost])
            #expect(try await holder.command("CONFIG", "SET", "maxclients", "10000") == "+OK")
            try await waitUntil(timeout: .seconds(3)) { redlock.nodes[0].isConnected }
            await redlock.close()
        }

        /// NOSCRIPT: after SCRIPT FLUSH, one release reloads the script exactly once per node (one EVAL
        /// each, counted in INFO commandstats); the next release needs no reload.
        @Test func scriptFlushReloadsOncePerNode() async throws {
            let group = try await RedisServerGroup.start(count: 3)
            defer { group.stopInBackground() }
            let redlock = try await Fault.connectedRedlock(group.ports)
            let resource = Fault.resource()
            try await redlock.release(try await redlock.lock(resource, ttl: .seconds(10)))
            let lock = try await redlock.lock(resource, ttl: .seconds(10))
            var evalBefore: [Int] = []
            var evalshaBefore: [Int] = []
            for server in group.servers {
                #expect(try await server.cli("SCRIPT", "FLUSH") == "OK")
                #expect(try await server.cli("SCRIPT", "EXISTS", Scripts.release.sha1) == "0")
                evalBefore.append(try await Fault.commandCalls(server, "eval"))
                evalshaBefore.append(try await Fault.commandCalls(server, "evalsha"))
            }
            #expect(try await redlock.release(lock) == 3)
            for (index, server) in group.servers.enumerated() {
                #expect(
                    try await Fault.commandCalls(server, "eval") == evalBefore[index] + 1, "node \(index)")
                #expect(try await Fault.commandCalls(server, "evalsha") == evalshaBefore[index] + 1)
                #expect(try await server.cli("SCRIPT", "EXISTS", Scripts.release.sha1) == "1")
                #expect(try await Fault.exists(server, resource) == false)
            }
            // Loaded again: the next release is one EVALSHA per node and no EVAL.
            try await redlock.release(try await redlock.lock(resource, ttl: .seconds(10)))
            for (index, server) in group.servers.enumerated() {
                #expect(try await Fault.commandCalls(server, "eval") == evalBefore[index] + 1)
                #expect(try await Fault.commandCalls(server, "evalsha") == evalshaBefore[index] + 2)
            }
            await redlock.close()
        }
    }
}
