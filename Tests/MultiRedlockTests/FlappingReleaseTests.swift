import LocalRedis
import Logging
import Synchronization
import Testing

@testable import MultiRedlock

/// Issue 12, item 1, against real servers: a failed attempt's release fails on two nodes and is
/// retried in the background; the next attempt of the same `lock` call is granted everywhere; then
/// the retries start to succeed. They must not delete the granted lock's keys.
///
/// The failures come from the servers' ACL, not from timing. On two of the three servers the lock
/// user may, at first, neither SET nor run scripts: attempt 1 fails there (NOPERM, a node failure)
/// and so does its compare-and-delete, which is then retried in the background. When attempt 1's
/// log line is written, SET is allowed (before attempt 1's release), so attempt 2 is granted by all
/// three; then the scripts are allowed, and the pending retries succeed.
@Suite(.serialized)
struct FlappingReleaseTests {
    static let flapping =
        "user locker on >locker-secret ~* resetchannels -@all +get +del +pexpire +exists +ping +info +select"

    @Test func retriesOfAFailedAttemptSpareTheGrantedAttemptOnRealServers() async throws {
        let group = try await RedisServerGroup.start(
            count: 3, RedisServerConfiguration(password: "admin-secret", extraConfig: [Self.flapping]))
        defer { group.stopInBackground() }
        let resource = "flap-\(UInt32.random(in: 0...UInt32.max))"
        // The first server works from the start.
        #expect(try await group[0].cli("ACL", "SETUSER", "locker", "+set", "+evalsha", "+eval") == "OK")
        // When attempt 1 has been decided (its log line, before its release), SET works everywhere.
        let flapping = Array(group.servers.dropFirst())
        let firstAttemptSeen = Atomic<Bool>(false)
        var logger = Logger(label: "flap") { _ in
            AttemptHook { attempt in
                guard attempt == "1", !firstAttemptSeen.exchange(true, ordering: .relaxed) else { return }
                for server in flapping { _ = try? server.cli("ACL", "SETUSER", "locker", "+set") }
            }
        }
        logger.logLevel = .trace
        var options = RedlockOptions(
            id: "flap", retries: 3, retryWait: .milliseconds(300), nodeTimeout: .milliseconds(500),
            logger: logger)
        options.tuning.releaseRetryDelay = (.milliseconds(100), .milliseconds(200))
        let client = try await connected(
            Redlock(
                servers: group.ports.map {
                    RedisServer(host: "127.0.0.1", port: $0, password: "locker-secret", username: "locker")
                }, options: options))
        let lock = try await client.lock(resource, ttl: .seconds(30))
        let sawAttempt1 = firstAttemptSeen.load(ordering: .relaxed)
        #expect(sawAttempt1)
        #expect(lock.attempts >= 2, "attempt 1 failed on the two flapping servers")
        // The faults really happened: those servers refused attempt 1's SET and its release.
        for server in flapping {
            let log = try await server.cli("ACL", "LOG")
            #expect(log.contains("set"), "no refused SET on \(server.port): \(log)")
            #expect(log.contains("evalsha"), "no refused compare-and-delete on \(server.port): \(log)")
        }

        // Scripts are allowed from now on: any release retry still pending succeeds now.
        for server in flapping {
            #expect(try await server.cli("ACL", "SETUSER", "locker", "+evalsha", "+eval") == "OK")
        }
        try await Task.sleep(for: .seconds(1))  // several retry periods (100 ms doubling to 200 ms)
        var holding = 0
        for server in group.servers where try await server.cli("GET", resource) == lock.value {
            holding += 1
        }
        #expect(holding == 3, "the lock's keys were deleted behind it: held on \(holding) of 3")
        let other = try await connected(
            Redlock(
                servers: group.ports.map {
                    RedisServer(host: "127.0.0.1", port: $0, password: "locker-secret", username: "locker")
                }, options: RedlockOptions(id: "other", retries: 0)))
        let error = try await #require(throws: RedlockError.self) {
            try await other.lock(resource, ttl: .seconds(5))
        }
        #expect(error.kind == .taken, "\(error)")
        #expect(lock.isValid)
        try await client.release(lock)
        await client.close()
        await other.close()
    }
}

/// Calls `hook` with the `attempt` of each `acquire attempt` line, on the logging thread.
private struct AttemptHook: LogHandler {
    let hook: @Sendable (String) -> Void
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    init(_ hook: @escaping @Sendable (String) -> Void) {
        self.hook = hook
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        guard event.message.description == "acquire attempt", let attempt = event.metadata?["attempt"] else {
            return
        }
        hook("\(attempt)")
    }

}
