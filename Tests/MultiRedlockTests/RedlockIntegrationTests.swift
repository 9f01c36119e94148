import Foundation
import LocalRedis
import MultiRedlock
import Synchronization
import TestSupport
import Testing

@testable import MultiRedlock

/// The Redlock API against real redis-server processes (3 and 5), including servers killed and
/// restarted under it.
@Suite(.serialized)
struct RedlockIntegrationTests {
    /// Options for tests: a generous node timeout (the machine is small and busy), fast retries.
    static func options(retries: Int = 0, nodeTimeout: Duration = .milliseconds(500)) -> RedlockOptions {
        RedlockOptions(id: "it", retries: retries, retryWait: .milliseconds(20), nodeTimeout: nodeTimeout)
    }

    /// A Redlock on `group`, returned once every node is connected (see `connected`).
    static func redlock(_ group: RedisServerGroup, _ options: RedlockOptions = options()) async throws
        -> Redlock
    {
        try await connected(
            Redlock(
                servers: group.ports.map {
                    RedisServer(
                        host: "127.0.0.1", port: $0, password: RedisServerConfiguration.defaultPassword)
                }, options: options))
    }

    /// Whole milliseconds since `start`, rounded up.
    static func milliseconds(since start: ContinuousClock.Instant) -> Int {
        Int(((ContinuousClock.now - start) / .milliseconds(1)).rounded(.up))
    }

    static func uniqueResource(_ name: String = #function) -> String {
        "it-\(name.prefix { $0 != "(" })-\(UInt64.random(in: 0...UInt64.max))"
    }

    @Test func scriptDigestsMatchTheServers() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stopInBackground() }
        #expect(try await server.cli("SCRIPT", "LOAD", Scripts.release.source) == Scripts.release.sha1)
        #expect(try await server.cli("SCRIPT", "LOAD", Scripts.extend.source) == Scripts.extend.sha1)
    }

    @Test func lockRenewUnlockRoundTrip() async throws {
        let group = try await RedisServerGroup.start(count: 3)
        defer { group.stopInBackground() }
        let redlock = try await Self.redlock(group)
        let resource = Self.uniqueResource()

        // Bounds from the time measured around each call, not fixed margins: exact on a loaded machine.
        // validity = ttl − elapsed − drift allowance (100 ms + 1 % of the ttl).
        let lockStarted = ContinuousClock.now
        let lock = try await redlock.lock(resource, ttl: .seconds(10))
        let lockTook = ContinuousClock.now - lockStarted
        #expect(lock.resource == resource)
        let allowance10 = Duration.milliseconds(200)
        #expect(lock.validity <= .seconds(10) - allowance10)
        #expect(lock.validity >= .seconds(10) - allowance10 - lockTook - .milliseconds(1), "\(lockTook)")
        #expect(lock.isValid)
        // Every node's key: set no earlier than lockStarted with a ttl of exactly 10 s, so its PTTL is
        // at least 10 000 − (ms since lockStarted), at any time. Polled: `lock` returns once a quorum
        // granted, and the last SET may land a moment later.
        for server in group.servers {
            try await waitUntil {
                guard try await server.cli("GET", resource) == lock.value else { return false }
                let pttl = Int(try await server.cli("PTTL", resource)) ?? -1
                return pttl <= 10_000 && pttl >= 10_000 - Self.milliseconds(since: lockStarted)
            }
        }

        let renewStarted = ContinuousClock.now
        let renewed = try await redlock.renew(resource, value: lock.value, ttl: .seconds(30))
        let renewTook = ContinuousClock.now - renewStarted
        #expect(renewed.value == lock.value)
        let allowance30 = Duration.milliseconds(400)
        #expect(renewed.validity <= .seconds(30) - allowance30)
        #expect(renewed.validity >= .seconds(30) - allowance30 - renewTook - .milliseconds(1), "\(renewTook)")
        // Likewise each node's extension (a node still on the old ttl has less than 10 000 ms left).
        for server in group.servers {
            try await waitUntil {
                let pttl = Int(try await server.cli("PTTL", resource)) ?? -1
                return pttl <= 30_000 && pttl >= 30_000 - Self.milliseconds(since: renewStarted)
            }
        }

        #expect(try await redlock.release(renewed) == 3)
        for server in group.servers {
            #expect(try await server.cli("EXISTS", resource) == "0")
        }

        // unlock (best effort, returns at once) on a second lock.
        let second = try await redlock.lock(resource, ttl: .seconds(10))
        redlock.unlock(resource, value: second.value)
        try await waitUntil {
            try await group.servers.asyncAllSatisfy { try await $0.cli("EXISTS", resource) == "0" }
        }
        await redlock.close()
    }

    @Test func heldResourceFailsAsTakenAfterEveryRetry() async throws {
        let group = try await RedisServerGroup.start(count: 3)
        defer { group.stopInBackground() }
        let resource = Self.uniqueResource()
        for server in group.servers {
            _ = try await server.cli("SET", resource, "someone-else", "PX", "30000")
        }
        let redlock = try await Self.redlock(group, Self.options(retries: 2))
        let error = try await #require(throws: RedlockError.self) {
            try await redlock.lock(resource, ttl: .seconds(5))
        }
        #expect(error.kind == .taken)
        #expect(error.attempts == 3)
        #expect(error.nodes.count == 3)
        // The other owner's key is untouched.
        for server in group.servers {
            #expect(try await server.cli("GET", resource) == "someone-else")
        }
        await redlock.close()
    }

    @Test func wrongValueLeavesTheKeyAndRenewAfterExpiryFails() async throws {
        let group = try await RedisServerGroup.start(count: 3)
        defer { group.stopInBackground() }
        let redlock = try await Self.redlock(group)
        let resource = Self.uniqueResource()
        let lock = try await redlock.lock(resource, ttl: .seconds(10))

        redlock.unlock(resource, value: "not-the-value")
        let wrong = Lock(
            resource: resource, value: "not-the-value", validity: .seconds(1), ttl: .seconds(10),
            validUntil: .now + .seconds(1), attempts: 1, nodes: [])
        let notHeld = try await #require(throws: RedlockError.self) { try await redlock.release(wrong) }
        #expect(notHeld.kind == .notHeld)
        for server in group.servers {
            #expect(try await server.cli("GET", resource) == lock.value)
        }
        try await redlock.release(lock)

        // A short lock that expires: renew must fail and must not re-create the key.
        // (1 s rather than less: on a loaded machine under a sanitizer, acquiring alone can take 0.3 s.)
        let short = try await redlock.lock(resource, ttl: .seconds(1))
        try await Task.sleep(for: .milliseconds(1_300))
        for server in group.servers {
            #expect(try await server.cli("EXISTS", resource) == "0")
        }
        let renewError = try await #require(throws: RedlockError.self) {
            try await redlock.renew(short)
        }
        #expect(renewError.kind == .notHeld)
        for server in group.servers {
            #expect(try await server.cli("EXISTS", resource) == "0")
        }
        await redlock.close()
    }

    @Test func oneOfThreeKilledStillLocksTwoKilledFailsThenRecovers() async throws {
        let group = try await RedisServerGroup.start(count: 3)
        defer { group.stopInBackground() }
        let events = EventLog()
        let redlock = try await Self.redlock(group, Self.options(retries: 1, nodeTimeout: .milliseconds(300)))
        redlock.on(.connect) { events.append("connect") }
        redlock.on(.disconnect) { events.append("disconnect") }
        try await waitUntil { redlock.isConnected }
        try await waitUntil { events.entries == ["connect"] }

        // One node down: the quorum (2 of 3) still grants.
        #expect(await group[0].kill9())
        #expect(!group[0].isRunning)
        for index in 0..<5 {
            let lock = try await redlock.lock(Self.uniqueResource() + "-\(index)", ttl: .seconds(1))
            #expect(lock.nodes.count == 2)
            try await redlock.release(lock)
        }
        #expect(redlock.isConnected)

        // Two nodes down: fails fast with quorumUnavailable, and `.disconnect` fires.
        #expect(await group[1].kill9())
        #expect(!group[1].isRunning)
        let started = ContinuousClock.now
        let error = try await #require(throws: RedlockError.self) {
            try await redlock.lock(Self.uniqueResource(), ttl: .seconds(1))
        }
        let elapsed = ContinuousClock.now - started
        #expect(error.kind == .quorumUnavailable)
        #expect(error.attempts == 2)
        // (retries + 1) × (nodeTimeout + retryWait), plus a margin.
        #expect(elapsed < .seconds(2))
        try await waitUntil { events.entries == ["connect", "disconnect"] }
        #expect(!redlock.isConnected)

        // Back up: `.connect` fires again, and locks work again once the restarted nodes' grants
        // count again (they came back empty, so their grants wait out the longest ttl used: 1 s).
        try await group[0].restart()
        try await group[1].restart()
        try await waitUntil(timeout: .seconds(10)) {
            events.entries == ["connect", "disconnect", "connect"]
        }
        // A limit, not a measurement: under AddressSanitizer with the cores otherwise busy, 5 s
        // passed without a grant (each attempt has a 300 ms node timeout).
        var granted: Lock?
        var lastError: (any Error)?
        let deadline = ContinuousClock.now + .seconds(15)
        while granted == nil && ContinuousClock.now < deadline {
            do {
                granted = try await redlock.lock(Self.uniqueResource(), ttl: .seconds(1))
            } catch {
                lastError = error
            }
        }
        let lock = try #require(
            granted, "no lock within 15 s; the last error: \(String(describing: lastError))")
        #expect(lock.nodes.count >= 2)
        try await redlock.release(lock)
        await redlock.close()
    }

    @Test func fiveNodesNeedThree() async throws {
        let group = try await RedisServerGroup.start(count: 5)
        defer { group.stopInBackground() }
        let redlock = try await Self.redlock(group)
        #expect(redlock.quorum == 3)
        #expect(await group[0].kill9())
        #expect(await group[1].kill9())
        let lock = try await redlock.lock(Self.uniqueResource(), ttl: .seconds(5))
        #expect(lock.nodes.count == 3)
        try await redlock.release(lock)
        #expect(await group[2].kill9())
        let error = try await #require(throws: RedlockError.self) {
            try await redlock.lock(Self.uniqueResource(), ttl: .seconds(5))
        }
        #expect(error.kind == .quorumUnavailable)
        await redlock.close()
    }

    @Test func scriptFlushIsRecoveredByEval() async throws {
        let group = try await RedisServerGroup.start(count: 3)
        defer { group.stopInBackground() }
        let redlock = try await Self.redlock(group)
        let resource = Self.uniqueResource()
        let first = try await redlock.lock(resource, ttl: .seconds(10))
        try await redlock.release(first)  // loads the release script
        let lock = try await redlock.lock(resource, ttl: .seconds(10))
        for server in group.servers {
            #expect(try await server.cli("SCRIPT", "FLUSH") == "OK")
            #expect(try await server.cli("SCRIPT", "EXISTS", Scripts.release.sha1) == "0")
        }
        // EVALSHA now gets NOSCRIPT on every node; the fallback to EVAL releases anyway.
        #expect(try await redlock.release(lock) == 3)
        for server in group.servers {
            #expect(try await server.cli("EXISTS", resource) == "0")
            #expect(try await server.cli("SCRIPT", "EXISTS", Scripts.release.sha1) == "1")
        }
        await redlock.close()
    }

    @Test func badInputIsRefusedBeforeAnyIO() async throws {
        let group = try await RedisServerGroup.start(count: 1)
        defer { group.stopInBackground() }
        let redlock = try await Self.redlock(group)
        for ttl in [Duration.zero, .milliseconds(-5), .milliseconds(100)] {
            let error = try await #require(throws: RedlockError.self) {
                try await redlock.lock("r", ttl: ttl)
            }
            #expect(error.kind == .invalidArgument)
            #expect(error.attempts == 0)
        }
        let empty = try await #require(throws: RedlockError.self) {
            try await redlock.lock("", ttl: .seconds(1))
        }
        #expect(empty.kind == .invalidArgument)
        #expect(throws: RedlockError.self) { try Redlock(servers: []) }
        #expect(throws: RedlockError.self) {
            try Redlock(servers: [
                RedisServer(host: "127.0.0.1", port: 7000), RedisServer(host: "127.0.0.1", port: 7000),
            ])
        }
        #expect(throws: RedlockError.self) {
            try Redlock(servers: [RedisServer(host: "127.0.0.1", port: 70000)])
        }
        #expect(throws: RedlockError.self) { try redlock.setRetry(-1, retryWait: .milliseconds(1)) }
        let dbkeys = try await group[0].cli("DBSIZE")
        #expect(dbkeys == "0")
        await redlock.close()
        let closed = try await #require(throws: RedlockError.self) {
            try await redlock.lock("r", ttl: .seconds(1))
        }
        #expect(closed.kind == .closed)
    }
}

/// Records events from any thread.
final class EventLog: Sendable {
    private let storage = Locked<[String]>([])
    func append(_ entry: String) { storage.withLock { $0.append(entry) } }
    var entries: [String] { storage.withLock { $0 } }
}

/// Returns `redlock` once every node is connected (with `quorumOnly`, once a quorum is), and fails
/// the test if that takes longer than `timeout`. A test's first lock then does not also wait for the
/// handshakes, which under a sanitizer can outlast a short ttl or node timeout.
@discardableResult
func connected(
    _ redlock: Redlock, quorumOnly: Bool = false, timeout: Duration = .seconds(10),
    sourceLocation: SourceLocation = #_sourceLocation
) async throws -> Redlock {
    // The library's own wait (the CLI and the benchmark use it too); with `all`, it returns with a
    // quorum when the time is up, so the test checks that every node made it. It goes by the
    // Redlock's record of each node, which follows the connection a moment later: a connection
    // that just dropped (a command to a node that was paused timed out) may still count there, so
    // the check waits out the rest of the time for every connection to be up.
    let deadline = ContinuousClock.now + timeout
    do {
        try await redlock.waitUntilConnected(timeout: timeout, all: !quorumOnly)
    } catch {
        Issue.record("not connected within \(timeout): \(error)", sourceLocation: sourceLocation)
    }
    if !quorumOnly {
        let allUp = await eventually(timeout: max(deadline - ContinuousClock.now, .zero)) {
            redlock.nodes.allSatisfy(\.isConnected)
        }
        let down = redlock.nodes.filter { !$0.isConnected }.map(\.name)
        #expect(allUp, "not connected within \(timeout): \(down)", sourceLocation: sourceLocation)
    }
    return redlock
}

/// A short-lived client (a CLI, a cron job) that fails to lock, or unlocks, and closes at once must
/// leave nothing locked: `close()` lets the releases under way reach the nodes first.
@Suite(.serialized)
struct CloseReleasesFirstTests {
    @Test(arguments: 1...3)
    func aFailedAttemptIsReleasedEvenWhenTheClientClosesAtOnce(round: Int) async throws {
        let group = try await RedisServerGroup.start(count: 3)
        defer { group.stopInBackground() }
        // Someone else holds "job" on nodes 1 and 2; node 3 is free, so the attempt sets it there.
        for index in 0..<2 { try await group[index].cli("SET", "job", "someone-else", "PX", "60000") }
        let redlock = try await RedlockIntegrationTests.redlock(group)
        try await waitUntil { redlock.isConnected }
        await #expect(throws: RedlockError.self) { try await redlock.lock("job", ttl: .seconds(60)) }
        await redlock.close()
        #expect(try await group[2].cli("EXISTS", "job") == "0")
    }

    @Test func unlockThenCloseReleases() async throws {
        let group = try await RedisServerGroup.start(count: 3)
        defer { group.stopInBackground() }
        let redlock = try await RedlockIntegrationTests.redlock(group)
        let lock = try await redlock.lock("job", ttl: .seconds(60))
        redlock.unlock(lock.resource, value: lock.value)
        await redlock.close()
        for server in group.servers { #expect(try await server.cli("EXISTS", "job") == "0") }
    }
}
