import Foundation
import LocalRedis
import MultiRedlock
import TestSupport
import Testing

/// The Redis ACL that README's "Operating it" gives a lock user, checked against real servers: a
/// user with exactly these rights locks, renews, releases and fences (one and several resources),
/// and no command the library sends is denied (the servers' ACL LOG stays empty). Each right is
/// needed: without it the server logs a denial of that command.
@Suite(.serialized)
struct ACLRightsTests {
    /// The commands the library sends (SET, EVALSHA, EVAL; AUTH, SELECT, PING and INFO in the
    /// handshake) and those its Lua scripts call (GET, DEL, PEXPIRE, EXISTS, SET). AUTH needs no
    /// right. The same list is in README.md, "Operating it".
    static let commands = [
        "set", "get", "del", "pexpire", "exists", "eval", "evalsha", "ping", "info", "select",
    ]

    /// The ACL rule, limited to keys under `locks:` and their fencing counters
    /// (`multiredlock:fence:<resource>`).
    static func rule(without missing: String? = nil) -> String {
        let rights = commands.filter { $0 != missing }.map { "+" + $0 }.joined(separator: " ")
        return
            "user locker on >locker-secret resetkeys ~locks:* ~multiredlock:fence:locks:* resetchannels -@all \(rights)"
    }

    /// Servers whose default user has a password the application does not know, and the `locker` user.
    static func configuration(without missing: String? = nil) -> RedisServerConfiguration {
        RedisServerConfiguration(password: "admin-secret", extraConfig: [rule(without: missing)])
    }

    static func redlock(_ ports: [Int], fencing: Bool = false) throws -> Redlock {
        try Redlock(
            servers: ports.map {
                RedisServer(
                    host: "127.0.0.1", port: $0, password: "locker-secret", username: "locker", database: 0)
            },
            options: RedlockOptions(
                id: "acl", retries: 0, retryWait: .milliseconds(10), nodeTimeout: .milliseconds(500),
                fencingTokens: fencing))
    }

    /// What each server's ACL LOG recorded: the denied commands (its `object` fields).
    static func denials(_ server: RedisServerProcess) async throws -> [String] {
        let lines = try await server.cli("ACL", "LOG").split(separator: "\n").map(String.init)
        return zip(lines, lines.dropFirst()).filter { $0.0 == "object" }.map(\.1)
    }

    /// README.md and the DocC article give the same rule as this test checks.
    @Test(arguments: ["README.md", "Sources/MultiRedlock/MultiRedlock.docc/OperatingIt.md"])
    func theDocumentedRuleIsTheTestedOne(file: String) throws {
        // <package>/Tests/MultiRedlockTests/this file → <package>
        let package = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let text = try String(contentsOf: package.appendingPathComponent(file), encoding: .utf8)
        let line = try #require(
            text.split(separator: "\n").first { $0.hasPrefix("ACL SETUSER locker on >") },
            "no ACL line in \(file)")
        // Everything after the password must be the tested rule's.
        let documented = line.split(separator: " ").dropFirst(5).joined(separator: " ")
        let tested = Self.rule().split(separator: " ").dropFirst(4).joined(separator: " ")
        #expect(documented == tested, "\(file) documents \(documented)")
    }

    @Test func aUserWithExactlyTheDocumentedRightsLocksRenewsReleasesAndFences() async throws {
        let group = try await RedisServerGroup.start(count: 3, Self.configuration())
        defer { group.stopInBackground() }
        // The rule is in force: the user cannot touch keys outside locks:* nor run other commands.
        let admin = group[0]
        #expect(try await admin.cli("ACL", "GETUSER", "locker").contains("~locks:*"))
        #expect(try await admin.cli("ACL", "DRYRUN", "locker", "SET", "other", "x").contains("permission"))
        #expect(try await admin.cli("ACL", "DRYRUN", "locker", "FLUSHALL").contains("permission"))

        let redlock = try Self.redlock(group.ports)
        try await connected(redlock)

        // One resource: SET NX PX, then the extend and release scripts (EVALSHA, NOSCRIPT, EVAL).
        let lock = try await redlock.lock("locks:job", ttl: .seconds(10))
        let renewed = try await redlock.renew(lock, ttl: .seconds(60))
        for server in group.servers {
            try await waitUntil { try await server.cli("PTTL", "locks:job").count == 5 }  // > 9999 ms
            #expect(try await server.cli("GET", "locks:job") == lock.value)
        }
        #expect(try await redlock.release(renewed) == 3)
        for server in group.servers {
            #expect(try await server.cli("EXISTS", "locks:job") == "0")
        }

        // Several resources: the all-or-none scripts (EXISTS, SET, GET, PEXPIRE, DEL).
        let pair = try await redlock.lock(["locks:a", "locks:b"], ttl: .seconds(10))
        _ = try await redlock.renew(pair)
        #expect(try await redlock.release(pair) == 3)
        // A lock outside the user's keys is refused by every node: nothing else could have made it fail.
        let outside = await #expect(throws: RedlockError.self) {
            try await redlock.lock("elsewhere", ttl: .seconds(10))
        }
        #expect(outside?.kind == .quorumUnavailable)
        await redlock.close()

        // Fencing: the fenced acquire and the write-back of the counter.
        let fencing = try Self.redlock(group.ports, fencing: true)
        try await connected(fencing)
        let first = try await fencing.lock("locks:ledger", ttl: .seconds(10))
        try await fencing.release(first)
        let second = try await fencing.lock("locks:ledger", ttl: .seconds(10))
        try await fencing.release(second)
        let (token1, token2) = (try #require(first.fencingToken), try #require(second.fencingToken))
        #expect(token2 > token1)
        await fencing.close()

        // Nothing the library sent was denied, apart from the deliberate lock outside locks:*.
        for server in group.servers {
            let denied = try await Self.denials(server)
            #expect(denied.allSatisfy { $0 == "elsewhere" }, "\(server.port) denied \(denied)")
        }
    }

    /// Each right is needed: a user without it gets that command denied by the server, in the
    /// handshake (PING, SELECT, INFO: INFO's denial is otherwise silent, and the node then cannot
    /// tell a restart) or in lock, renew, release or fencing.
    @Test(arguments: commands)
    func everyRightIsNeeded(missing: String) async throws {
        let server = try await RedisServerProcess.start(Self.configuration(without: missing))
        defer { server.stopInBackground() }
        let redlock = try Self.redlock([server.port])
        let fencing = try Self.redlock([server.port], fencing: true)
        // Without PING or SELECT the handshake fails and the node never connects: wait for that try.
        _ = await eventually(timeout: .seconds(3), every: .milliseconds(20)) {
            redlock.nodes.allSatisfy(\.isConnected) && fencing.nodes.allSatisfy(\.isConnected)
        }
        if let lock = try? await redlock.lock("locks:job", ttl: .seconds(10)) {
            _ = try? await redlock.renew(lock)
            _ = try? await redlock.release(lock)
        }
        if let pair = try? await redlock.lock(["locks:a", "locks:b"], ttl: .seconds(10)) {
            _ = try? await redlock.renew(pair)
            _ = try? await redlock.release(pair)
        }
        if let fenced = try? await fencing.lock("locks:ledger", ttl: .seconds(10)) {
            _ = try? await fencing.release(fenced)
        }
        await redlock.close()
        await fencing.close()
        let denied = try await Self.denials(server)
        #expect(denied.contains(missing), "without +\(missing) the server denied only \(denied)")
    }
}
