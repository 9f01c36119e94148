import Foundation
import LocalRedis
import Logging
import MultiRedlock
import MultiRedlockTesting
import ServiceLifecycle
import Synchronization
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// `Redlock` as a swift-service-lifecycle `Service`: in a real `ServiceGroup`, its `run()` returns on
/// graceful shutdown once the releases in flight have finished.
@Suite(.serialized)
struct ServiceLifecycleTests {
    /// An application service that holds `lock` and releases it (fire and forget) when the group
    /// shuts down gracefully, as an HTTP server finishing its last request would.
    struct Holder: Service {
        let redlock: Redlock
        let lock: Lock
        let started: Flag

        func run() async throws {
            started.set()
            try? await gracefulShutdown()
            redlock.unlock(lock)
        }
    }

    /// Three in-memory nodes that take 200 ms to answer: the release issued at shutdown is still in
    /// flight when the Redlock is asked to stop, and `run()` must wait for it.
    @Test func gracefulShutdownWaitsForTheReleaseInFlight() async throws {
        let nodes = (1...3).map { MockRedlockNode(name: "n\($0)") }
        let redlock = try Redlock(
            nodes: nodes, options: RedlockOptions(id: "svc", retries: 0, nodeTimeout: .seconds(2)))
        let lock = try await redlock.lock("svc-resource", ttl: .seconds(30))
        for node in nodes {
            #expect(node.value(of: "svc-resource") == lock.value)
            node.latency = .milliseconds(200)
        }
        let started = Flag()
        let holder = Holder(redlock: redlock, lock: lock, started: started)
        let group = ServiceGroup(
            services: [redlock, holder], gracefulShutdownSignals: [], cancellationSignals: [],
            logger: Logger(label: "test"))
        let running = Task { try await group.run() }
        try #require(await eventually(every: .milliseconds(2)) { started.isSet }, "the holder never started")
        await group.triggerGracefulShutdown()
        try await running.value
        // The group returned, so the Redlock's run() did: the release reached every node first.
        for node in nodes {
            #expect(node.value(of: "svc-resource") == nil, "\(node.name) still holds the lock")
            #expect(node.calls.contains { $0.isRelease && $0.value == lock.value })
            #expect(node.isClosed)
        }
        let error = try await #require(throws: RedlockError.self) {
            try await redlock.lock("svc-other", ttl: .seconds(5))
        }
        #expect(error.kind == .closed)
    }

    /// A cancelled `run()` (the group cancelled, not shut down gracefully) still closes the Redlock
    /// after its releases in flight.
    @Test func cancelledRunStillClosesAfterReleases() async throws {
        let nodes = (1...3).map { MockRedlockNode(name: "n\($0)") }
        let redlock = try Redlock(
            nodes: nodes, options: RedlockOptions(id: "svc", retries: 0, nodeTimeout: .seconds(2)))
        let lock = try await redlock.lock("svc-cancel", ttl: .seconds(30))
        for node in nodes { node.latency = .milliseconds(200) }
        let running = Task { try await redlock.run() }
        redlock.unlock(lock)
        running.cancel()
        try await running.value
        for node in nodes {
            #expect(node.value(of: "svc-cancel") == nil, "\(node.name) still holds the lock")
            #expect(node.isClosed)
        }
    }

    /// The signal path, in a child process (a test process must not trap SIGTERM: ServiceLifecycle
    /// leaves it ignored afterwards): `multiredlock-service-example` holds a lock on three real
    /// redis-servers; SIGTERM shuts its ServiceGroup down, the application releases the lock, and the
    /// process exits once the release has reached the servers.
    @Test func sigtermShutsTheGroupDownAfterTheRelease() async throws {
        let executable = try BuiltExecutable.require("multiredlock-service-example")
        let group = try await RedisServerGroup.start(count: 3)
        defer { group.stopInBackground() }
        let resource = RedlockIntegrationTests.uniqueResource()
        let child = try Subprocess(
            executable, [group.ports.map(String.init).joined(separator: ","), resource],
            environment: childEnvironment(["REDLOCK_PASSWORD": RedisServerConfiguration.defaultPassword]))
        // Wait for "locked VALUE".
        var value: String?
        _ = await eventually(timeout: .seconds(30)) {
            value = child.stdout.split(separator: "\n").first { $0.hasPrefix("locked ") }
                .map { String($0.dropFirst("locked ".count)) }
            return value != nil || child.hasExited
        }
        guard let held = value else {
            let result = await child.outcome(timeout: .seconds(5))
            Issue.record("the child did not lock: \(result)")
            return
        }
        // The lock really is on every server before the signal (`lock` returns once a quorum granted;
        // the last SET may land a moment later).
        try await waitUntil {
            try await group.servers.asyncMap { try await $0.cli("GET", resource) }.allSatisfy { $0 == held }
        }
        #expect(kill(child.pid, SIGTERM) == 0)
        let result = await child.outcome(timeout: .seconds(20))
        #expect(result.status == 0 && !result.signaled, "\(result)")
        #expect(result.stdout.contains("stopped"), "\(result)")
        for server in group.servers {
            #expect(try await server.cli("EXISTS", resource) == "0", "port \(server.port) still holds it")
        }
    }

    final class Flag: Sendable {
        private let value = Atomic<Bool>(false)
        var isSet: Bool { value.load(ordering: .acquiring) }
        func set() { value.store(true, ordering: .releasing) }
    }

}
