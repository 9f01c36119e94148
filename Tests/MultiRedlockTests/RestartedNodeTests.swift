import LocalRedis
import MultiRedlock
import TestSupport
import Testing

/// A node that restarts without persistence loses the locks it held. A client that saw the restart
/// (its run_id changed) does not count that node's grants for the longest ttl it has used.
@Suite(.serialized)
struct RestartedNodeTests {
    @Test func restartInsideTheTTLIsNotCountedByAClientThatSawIt() async throws {
        let group = try await RedisServerGroup.start(count: 3)
        defer { group.stopInBackground() }
        let servers = group.ports.map {
            RedisServer(host: "127.0.0.1", port: $0, password: RedisServerConfiguration.defaultPassword)
        }
        let options = RedlockOptions(id: "restart", retries: 0, nodeTimeout: .milliseconds(300))
        let holder = try await connected(Redlock(servers: servers, options: options))
        let watcher = try await connected(Redlock(servers: servers, options: options))
        let resource = RedlockIntegrationTests.uniqueResource()

        // The watcher has used a 60 s ttl before, so it quarantines restarted nodes for 60 s. The ttls
        // are long so that `held` outlives the restarts even on a slow machine (5 s did not, under TSan
        // with four busy loops beside it).
        try await watcher.release(try await watcher.lock(resource + "-warm", ttl: .seconds(60)))
        let held = try await holder.lock(resource, ttl: .seconds(60))

        // Two of three nodes crash and come back empty, inside the ttl.
        let oldIDs = try await group.servers.prefix(2).asyncMap { try await runID(of: $0) }
        for server in group.servers.prefix(2) {
            #expect(await server.kill9())
            #expect(!server.isRunning)
            try await server.restart()
        }
        let newIDs = try await group.servers.prefix(2).asyncMap { try await runID(of: $0) }
        #expect(oldIDs != newIDs)
        for server in group.servers.prefix(2) { #expect(try await server.cli("EXISTS", resource) == "0") }

        // The watcher reconnects and notices the new run_ids.
        let watched = watcher.nodes.compactMap { $0 as? RedisNode }
        try await waitUntil {
            watched.prefix(2).allSatisfy { $0.connection.serverRestartDetectedAt != nil && $0.isConnected }
        }
        #expect(watched[2].connection.serverRestartDetectedAt == nil)

        // The two empty nodes would grant, but their grants do not count: no second holder.
        let error = try await #require(throws: RedlockError.self) {
            try await watcher.lock(resource, ttl: .seconds(60))
        }
        #expect(error.kind == .quorumUnavailable)
        let restarted = error.nodes.filter {
            if case .failed(let failure) = $0.outcome { failure.kind == .restarted } else { false }
        }
        // Decided as soon as a quorum was out of reach: at least one restarted node answered by then,
        // and no grant was counted.
        #expect(restarted.count >= 1)
        #expect(!error.nodes.contains { $0.outcome == .granted })
        // And the failed attempt was released everywhere: only the holder's key remains.
        try await waitUntil {
            try await group.servers.prefix(2).asyncAllSatisfy { try await $0.cli("EXISTS", resource) == "0" }
        }
        #expect(try await group[2].cli("GET", resource) == held.value)

        // Negative control: a client that first connects after the restart cannot know, and the
        // empty nodes grant it the lock while `holder` still holds it. This is the danger the
        // quarantine closes (and that `appendfsync always` closes for every client).
        let newcomer = try await connected(Redlock(servers: servers, options: options))
        let second = try await newcomer.lock(resource, ttl: .seconds(5))
        #expect(held.isValid && second.isValid)
        try await newcomer.release(second)
        try await holder.release(held)
        await holder.close()
        await watcher.close()
        await newcomer.close()
    }

    private func runID(of server: RedisServerProcess) async throws -> String {
        let info = try await server.cli("INFO", "server")
        let line = info.split(whereSeparator: \.isNewline).first { $0.hasPrefix("run_id:") }
        return String(line?.dropFirst("run_id:".count) ?? "").filter { !$0.isWhitespace }
    }
}
