import Foundation
import LocalRedis
import MultiRedlock
import Synchronization
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// tryLock, waiting, cancellation and withLock against real redis-servers.
/// Each test on an executor of its own (`.ownExecutor`), the bodies included: these tests time what
/// withLock and the waits do, and on a cooperative pool held for 7 s (make test-pool-held) a
/// cancelled body ran 7.9 s late, a freeing task came after a 3 s wait, and the maximum hold was
/// seen seconds late.
@Suite(.serialized, .ownExecutor)
struct ScopedLockTests {
    static func options(
        retries: Int = 0, nodeTimeout: Duration = .milliseconds(300), maxHold: Duration = .seconds(600)
    ) -> RedlockOptions {
        RedlockOptions(
            id: "scoped", drift: .milliseconds(20), retries: retries, retryWait: .milliseconds(20),
            nodeTimeout: nodeTimeout, maxHold: maxHold)
    }

    static func redlock(_ group: RedisServerGroup, _ options: RedlockOptions = options()) async throws
        -> Redlock
    {
        try await RedlockIntegrationTests.redlock(group, options)
    }

    static func holdForeign(_ resource: String, on group: RedisServerGroup, ms: Int = 30_000) async throws {
        for server in group.servers {
            try await server.cli("SET", resource, "someone-else", "PX", String(ms))
        }
    }

    @Test func tryLockMakesOneAttempt() async throws {
        let group = try await RedisServerGroup.start(count: 3)
        defer { group.stopInBackground() }
        let redlock = try await Self.redlock(group, Self.options(retries: 5))
        let resource = RedlockIntegrationTests.uniqueResource()
        try await Self.holdForeign(resource, on: group)
        let error = try await #require(throws: RedlockError.self) {
            try await redlock.tryLock(resource, ttl: .seconds(5))
        }
        #expect(error.kind == .taken)
        #expect(error.attempts == 1)
        let free = try await redlock.tryLock(resource + "-free", ttl: .seconds(5))
        #expect(free.attempts == 1)
        try await redlock.release(free)
        await redlock.close()
    }

    @Test func waitingUpToADeadline() async throws {
        let group = try await RedisServerGroup.start(count: 3)
        defer { group.stopInBackground() }
        let redlock = try await Self.redlock(group)
        let resource = RedlockIntegrationTests.uniqueResource()
        try await Self.holdForeign(resource, on: group)

        // Held throughout: fails once the wait is over, not before, with the last attempt's error.
        let start = ContinuousClock.now
        let error = try await #require(throws: RedlockError.self) {
            try await redlock.lock(resource, ttl: .seconds(5), waitingUpTo: .seconds(1))
        }
        let elapsed = ContinuousClock.now - start
        #expect(error.kind == .taken)
        #expect(error.attempts >= 2)
        // The last wait is cut short at the deadline (never past it), and one more attempt starts there.
        #expect(elapsed >= .seconds(1) && elapsed < .seconds(4), "gave up after \(elapsed)")

        // Freed part-way through the wait: acquired.
        let freer = Task(executorPreference: OwnExecutorTrait.executor) {
            try await Task.sleep(for: .milliseconds(150))
            for server in group.servers { try await server.cli("DEL", resource) }
        }
        let lock = try await redlock.lock(resource, ttl: .seconds(5), waitingUpTo: .seconds(3))
        try await freer.value
        #expect(lock.attempts > 1)
        try await redlock.release(lock)
        await redlock.close()
    }

    @Test func cancellingStopsRetryingAndLeavesNothing() async throws {
        let group = try await RedisServerGroup.start(count: 3)
        defer { group.stopInBackground() }
        let redlock = try await Self.redlock(group, Self.options(retries: 10_000))
        let resource = RedlockIntegrationTests.uniqueResource()
        // Two nodes hold it, one is free: every attempt sets the key on the free node, then releases it.
        for server in group.servers.prefix(2) {
            try await server.cli("SET", resource, "someone-else", "PX", "30000")
        }
        let task = Task { try await redlock.lock(resource, ttl: .seconds(10)) }
        try await Task.sleep(for: .milliseconds(200))
        let cancelled = ContinuousClock.now
        task.cancel()
        let result = await task.result
        let stopped = ContinuousClock.now - cancelled
        #expect(throws: CancellationError.self) { try result.get() }
        // 10,000 retries would take minutes; cancelled, it stops once the attempt in flight has its
        // answers (at most the node timeout, 500 ms) and is released. The margin is for sanitizers.
        #expect(stopped < .seconds(2), "\(stopped)")
        // Nothing of ours is left on the free node (released after the cancelled attempt).
        try await waitUntil { try await group[2].cli("EXISTS", resource) == "0" }
        for server in group.servers.prefix(2) {
            #expect(try await server.cli("GET", resource) == "someone-else")
        }
        await redlock.close()
    }

    @Test func withLockRenewsWhileTheBodyRunsAndReleasesAtTheEnd() async throws {
        let group = try await RedisServerGroup.start(count: 3)
        defer { group.stopInBackground() }
        // A generous node timeout: under ThreadSanitizer everything is several times slower.
        let redlock = try await Self.redlock(group, Self.options(nodeTimeout: .milliseconds(800)))
        let resource = RedlockIntegrationTests.uniqueResource()
        let checks = Locked<[String]>([])
        let result = try await redlock.withLock(resource, ttl: .milliseconds(1200)) { held in
            // Run well past the ttl: the lock must be renewed meanwhile.
            for _ in 0..<6 {
                try await Task.sleep(for: .milliseconds(400))
                let values = try await group.servers.asyncMap { try await $0.cli("GET", resource) }
                checks.withLock { $0.append(values.allSatisfy { $0 == held.value } ? "held" : "\(values)") }
                #expect(held.isValid)
            }
            return 42
        }
        #expect(result == 42)
        #expect(checks.withLock { $0 } == Array(repeating: "held", count: 6))
        for server in group.servers { #expect(try await server.cli("EXISTS", resource) == "0") }
        await redlock.close()
    }

    /// withLock's renewals run on the connections' queue: while every thread of the cooperative pool
    /// is blocked for 4 s (a body, or other work, that blocks), a lock with a 1.5 s ttl is still
    /// renewed, and held when the pool is free again. In a child process (an exit test): blocking the
    /// pool here would stall every other test of the run.
    @Test func withLockKeepsItsLockWhileTheCooperativePoolIsBlocked() async throws {
        let group = try await RedisServerGroup.start(count: 3)
        defer { group.stopInBackground() }
        let resource = RedlockIntegrationTests.uniqueResource()
        let result = await #expect(processExitsWith: .success, observing: [\.standardErrorContent]) {
            [
                ports = group.ports as [Int], resource = resource as String,
                password = RedisServerConfiguration.defaultPassword as String
            ] in
            // On the cooperative pool, whatever executor the test itself has (the suite's trait).
            await withTaskExecutorPreference(globalConcurrentExecutor) {
                await ScopedLockTests.holdWhileThePoolIsBlocked(
                    ports: ports, password: password, resource: resource)
            }
        }
        let output = result.map { String(decoding: $0.standardErrorContent, as: UTF8.self) } ?? ""
        print("withLock with the cooperative pool blocked: \(output)")
        let lines = output.split(separator: "\n")
        // The fault happened: a task queued on the pool meanwhile waited for the blockers.
        #expect(lines.contains("pool blocked: yes"), "\(output)")
        #expect(lines.contains("lock: held"), "\(output)")
        // Released at the end, on every server.
        for server in group.servers { #expect(try await server.cli("EXISTS", resource) == "0") }
    }

    /// The next lock of the same resource, taken by another client the moment withLock returns, is
    /// untouched by the first lock's renewals, which now run on the connections' queue: withLock
    /// returns only once its renewing task has ended (no renewal is sent after it), and nothing of
    /// the first lock extends or deletes the second's keys. The bodies outlive the ttl (so renewals ran) and end at a
    /// different point of the renewal cycle each round.
    @Test func theNextHolderIsUntouchedByTheRenewalsOfTheLockBefore() async throws {
        let group = try await RedisServerGroup.start(count: 3)
        defer { group.stopInBackground() }
        let first = try await Self.redlock(group, Self.options(nodeTimeout: .milliseconds(200)))
        let second = try await Self.redlock(group, Self.options(nodeTimeout: .milliseconds(200)))
        let resource = RedlockIntegrationTests.uniqueResource()
        for round in 0..<6 {
            // ttl 600 ms: a renewal about every 200 ms; the body ends 700 to 800 ms in.
            try await first.withLock(resource, ttl: .milliseconds(600)) { _ in
                try await Task.sleep(for: .milliseconds(700 + 20 * round))
            }
            // Once the release has landed everywhere, the first client sends nothing more: no
            // script call (a renewal is one) reaches any server from here on.
            try await waitUntil("released on every server") {
                try await group.servers.asyncMap { try await $0.cli("EXISTS", resource) } == ["0", "0", "0"]
            }
            let scriptsBefore = try await group.servers.asyncMap {
                try await Fault.commandCalls($0, "evalsha")
            }
            let next = try await second.lock(resource, ttl: .seconds(5))
            // Longer than a renewal cycle of the first lock.
            try await Task.sleep(for: .milliseconds(400))
            let scriptsAfter = try await group.servers.asyncMap {
                try await Fault.commandCalls($0, "evalsha")
            }
            #expect(scriptsAfter == scriptsBefore, "round \(round): script calls after withLock returned")
            for server in group.servers {
                #expect(try await server.cli("GET", resource) == next.value, "round \(round)")
                // Set with 5,000 ms at least 400 ms ago: never extended since.
                let left = Int(try await server.cli("PTTL", resource)) ?? -1
                #expect(left > 0 && left <= 4_600, "round \(round): PTTL \(left)")
            }
            #expect(
                try await second.release(next) == 3,
                "round \(round): all three keys were still the next lock's")
        }
        await first.close()
        await second.close()
    }

    /// In a child process: holds `resource` with withLock (ttl 1.5 s) while every pool thread is
    /// blocked for 4 s, and reports on standard error whether the pool was blocked (a task queued
    /// meanwhile waited 3 s or more) and whether the lock was held afterwards (valid, and its keys
    /// still on every server); exits 0 unless something throws.
    static func holdWhileThePoolIsBlocked(ports: [Int], password: String, resource: String) async {
        let stderr = FileHandle.standardError
        do {
            // The password is this process's own (each test process makes one): the parent's is passed.
            let redlock = try await connected(
                Redlock(
                    servers: ports.map { Fault.address($0, password: password) },
                    options: Fault.options(nodeTimeout: .milliseconds(500))))
            let granted = try await redlock.withLock(resource, ttl: .milliseconds(1500)) { held in
                let start = ContinuousClock.now
                let until = start + .seconds(4)
                let waited = await withTaskGroup(of: Duration?.self) { tasks in
                    // More blockers than the pool has threads, each blocking its thread until
                    // `until`: a thread that takes one is held to the end, whatever the pool's width.
                    for _ in 0..<16 {
                        tasks.addTask(executorPreference: globalConcurrentExecutor) {
                            sleepThread(until - ContinuousClock.now)
                            return nil
                        }
                    }
                    // The fault, shown: a task queued behind the blockers waits for the pool.
                    let queued = ContinuousClock.now
                    tasks.addTask(executorPreference: globalConcurrentExecutor) {
                        ContinuousClock.now - queued
                    }
                    var waited = Duration.zero
                    for await result in tasks { if let result { waited = result } }
                    return waited
                }
                var values: [String] = []
                for port in ports {
                    values.append(
                        try await Fault.command(port, ["GET", resource], password: password) ?? "(nil)")
                }
                let kept = held.isValid && values.allSatisfy { $0 == held.value }
                stderr.write(
                    Data(
                        """
                        a task queued on the pool waited \(waited)
                        pool blocked: \(waited >= .seconds(3) ? "yes" : "no")
                        after the block: valid \(held.isValid), lost \(String(describing: held.lostError)), \
                        keys \(values), ours \(held.value)
                        lock: \(kept ? "held" : "not held")

                        """.utf8))
                return held.value
            }
            stderr.write(Data("released \(granted)\n".utf8))
            await redlock.close()
        } catch {
            stderr.write(Data("error: \(error)\n".utf8))
            exit(3)
        }
    }

    @Test func withLockRethrowsTheBodysErrorAndReleases() async throws {
        struct BodyFailed: Error {}
        let group = try await RedisServerGroup.start(count: 3)
        defer { group.stopInBackground() }
        let redlock = try await Self.redlock(group)
        let resource = RedlockIntegrationTests.uniqueResource()
        await #expect(throws: BodyFailed.self) {
            try await redlock.withLock(resource, ttl: .seconds(5)) { _ in throw BodyFailed() }
        }
        for server in group.servers { #expect(try await server.cli("EXISTS", resource) == "0") }
        await redlock.close()
    }

    @Test func lostLockCancelsTheBody() async throws {
        let group = try await RedisServerGroup.start(count: 3)
        defer { group.stopInBackground() }  // stopping resumes a paused server first
        let redlock = try await Self.redlock(group, Self.options(nodeTimeout: .milliseconds(100)))
        let resource = RedlockIntegrationTests.uniqueResource()
        let bodyCancelled = Atomic<Bool>(false)
        let start = ContinuousClock.now
        let error = try await #require(throws: RedlockError.self) {
            try await redlock.withLock(resource, ttl: .milliseconds(900)) { held in
                // Hang the majority: renewals cannot reach a quorum.
                #expect(await group[0].pause())
                #expect(await group[1].pause())
                #expect(group[0].isPaused && group[1].isPaused)
                do {
                    try await Task.sleep(for: .seconds(10))
                } catch {
                    bodyCancelled.store(true, ordering: .relaxed)
                    #expect(!held.isValid)
                    throw error
                }
            }
        }
        let elapsed = ContinuousClock.now - start
        #expect(error.kind == .lost)
        let wasCancelled = bodyCancelled.load(ordering: .relaxed)
        #expect(wasCancelled)
        // Cancelled once the validity ran out (900 ms − drift), not after the body's 10 s.
        #expect(elapsed < .seconds(3))
        await redlock.close()
    }

    /// Cancelling the task that called `withLock`: the body is cancelled, `withLock` throws
    /// `CancellationError` at once, and the keys are released on every server (not left to expire).
    @Test func cancellingTheCallerCancelsTheBodyAndReleases() async throws {
        let group = try await RedisServerGroup.start(count: 3)
        defer { group.stopInBackground() }
        let redlock = try await Self.redlock(group)
        let resource = RedlockIntegrationTests.uniqueResource()
        let bodyRunning = Atomic<Bool>(false)
        let bodyCancelled = Atomic<Bool>(false)
        let task = Task {
            try await redlock.withLock(resource, ttl: .seconds(30)) { _ in
                bodyRunning.store(true, ordering: .sequentiallyConsistent)
                do {
                    try await Task.sleep(for: .seconds(60))
                } catch {
                    bodyCancelled.store(true, ordering: .sequentiallyConsistent)
                    throw error
                }
            }
        }
        try await waitUntil { bodyRunning.load(ordering: .sequentiallyConsistent) }
        let values = try await group.servers.asyncMap { try await $0.cli("GET", resource) }
        #expect(
            values.allSatisfy { !$0.isEmpty } && Set(values).count == 1, "held on every server: \(values)")
        let cancelled = ContinuousClock.now
        task.cancel()
        let result = await task.result
        #expect(ContinuousClock.now - cancelled < .seconds(2))
        #expect(throws: CancellationError.self) { try result.get() }
        let wasCancelled = bodyCancelled.load(ordering: .sequentiallyConsistent)
        #expect(wasCancelled)
        // Deleted by the release, well within the 30 s ttl, and not expired.
        try await waitUntil(timeout: .seconds(3)) {
            try await group.servers.asyncAllSatisfy { try await $0.cli("EXISTS", resource) == "0" }
        }
        for server in group.servers {
            #expect(try await server.cli("INFO", "stats").contains("expired_keys:0"))
        }
        await redlock.close()
    }

    /// A body that notices the loss itself (it ignores cancellation) and then throws its own error:
    /// `withLock` throws `.lost`, and leaves nothing of its own on the servers.
    @Test func aBodyThatThrowsAfterTheLockWasLostGetsLost() async throws {
        struct BodyFailed: Error {}
        let group = try await RedisServerGroup.start(count: 3)
        defer { group.stopInBackground() }
        let redlock = try await Self.redlock(group)
        let resource = RedlockIntegrationTests.uniqueResource()
        let error = try await #require(throws: RedlockError.self) {
            try await redlock.withLock(resource, ttl: .seconds(3)) { held in
                // Deleted on a majority: the next renewal is refused.
                for server in group.servers.prefix(2) { try await server.cli("DEL", resource) }
                let deadline = ContinuousClock.now + .seconds(10)
                while held.isValid && ContinuousClock.now < deadline {
                    // Not Task.sleep: the body goes on although it is cancelled.
                    _ = await offPool { usleep(10_000) }
                }
                #expect(held.lostError?.kind == .lost)
                throw BodyFailed()
            }
        }
        #expect(error.kind == .lost, "\(error)")
        // The third server's key (ours) is released, not left for its ttl.
        try await waitUntil(timeout: .seconds(3)) { try await group[2].cli("EXISTS", resource) == "0" }
        #expect(try await group[2].cli("INFO", "stats").contains("expired_keys:0"))
        await redlock.close()
    }

    /// withLock over several resources: every key is set on every server, renewed together while the
    /// body outlives the ttl, and all are released at the end.
    @Test func multiResourceWithLockHoldsRenewsAndReleasesEveryKey() async throws {
        let group = try await RedisServerGroup.start(count: 3)
        defer { group.stopInBackground() }
        let redlock = try await Self.redlock(group, Self.options(nodeTimeout: .milliseconds(800)))
        let base = RedlockIntegrationTests.uniqueResource()
        let keys = ["\(base)-a", "\(base)-b"]
        let checks = Locked<[String]>([])
        try await redlock.withLock(keys, ttl: .milliseconds(1200)) { held in
            #expect(held.lock.resources == keys)
            for _ in 0..<6 {
                try await Task.sleep(for: .milliseconds(400))
                var values: [String] = []
                for server in group.servers {
                    for key in keys { values.append(try await server.cli("GET", key)) }
                }
                checks.withLock { $0.append(values.allSatisfy { $0 == held.value } ? "held" : "\(values)") }
            }
        }
        #expect(checks.withLock { $0 } == Array(repeating: "held", count: 6))
        for server in group.servers {
            #expect(try await server.cli("EXISTS", keys[0], keys[1]) == "0")
        }
        await redlock.close()
    }

    @Test func lockDeletedUnderneathIsLostAtTheNextRenewal() async throws {
        let group = try await RedisServerGroup.start(count: 3)
        defer { group.stopInBackground() }
        let redlock = try await Self.redlock(group)
        let resource = RedlockIntegrationTests.uniqueResource()
        let error = try await #require(throws: RedlockError.self) {
            try await redlock.withLock(resource, ttl: .seconds(1)) { _ in
                for server in group.servers.prefix(2) { try await server.cli("DEL", resource) }
                try await Task.sleep(for: .seconds(10))
            }
        }
        #expect(error.kind == .lost)
        #expect(error.nodes.contains { $0.outcome == .refused })
        await redlock.close()
    }

    @Test func maximumHoldStopsRenewing() async throws {
        let group = try await RedisServerGroup.start(count: 3)
        defer { group.stopInBackground() }
        let redlock = try await Self.redlock(group, Self.options(maxHold: .milliseconds(800)))
        let resource = RedlockIntegrationTests.uniqueResource()
        let start = ContinuousClock.now
        let error = try await #require(throws: RedlockError.self) {
            try await redlock.withLock(resource, ttl: .milliseconds(400)) { _ in
                try await Task.sleep(for: .seconds(10))
            }
        }
        let elapsed = ContinuousClock.now - start
        #expect(error.kind == .lost)
        #expect(error.message.contains("maximum hold"))
        #expect(elapsed >= .milliseconds(500) && elapsed < .seconds(3))
        await redlock.close()
    }
}
