import InMemoryLogging
import InMemoryTracing
import LocalRedis
import Logging
import MetricsTestKit
import MultiRedlock
import MultiRedlockTesting
import TestSupport
import Testing
import Tracing

/// Spans (swift-distributed-tracing), metrics (swift-metrics) and connection logs, checked with the
/// test doubles of those packages: `InMemoryTracer`, `TestMetrics`, `InMemoryLogHandler`. Each test
/// gives its own tracer and factory through the options, so nothing global is bootstrapped.
@Suite(.serialized)
struct ObservabilityTests {
    static func options(
        tracer: InMemoryTracer? = nil, metrics: TestMetrics? = nil, retries: Int = 0
    ) -> RedlockOptions {
        RedlockOptions(
            id: "obs", drift: .milliseconds(10), retries: retries, retryWait: .milliseconds(2),
            nodeTimeout: .milliseconds(200), metricsFactory: metrics, tracer: tracer)
    }

    static func nodes(_ count: Int = 3) -> [MockRedlockNode] {
        (0..<count).map { MockRedlockNode(name: "node\($0)") }
    }

    static func span(_ tracer: InMemoryTracer, _ name: String) throws -> FinishedInMemorySpan {
        let spans = tracer.finishedSpans.filter { $0.operationName == name }
        #expect(spans.count == 1, "\(tracer.finishedSpans.map(\.operationName))")
        return try #require(spans.last)
    }

    static func attribute(_ span: FinishedInMemorySpan, _ key: String) -> SpanAttribute? {
        span.attributes[key]?.toSpanAttribute()
    }

    static func count(_ span: FinishedInMemorySpan, _ key: String) -> Int64 {
        guard case .int64(let value) = attribute(span, key) else { return -1 }
        return value
    }

    @Test func lockRenewAndReleaseHaveSpansWithTheirOutcome() async throws {
        let tracer = InMemoryTracer()
        let redlock = try Redlock(nodes: Self.nodes(), options: Self.options(tracer: tracer))
        let lock = try await redlock.lock("traced", ttl: .seconds(10))
        let locked = try Self.span(tracer, "multiredlock.lock")
        #expect(Self.attribute(locked, "multiredlock.resource") == .string("traced"))
        #expect(Self.attribute(locked, "multiredlock.attempts") == .int64(1))
        #expect(Self.attribute(locked, "multiredlock.outcome") == .string("granted"))
        // The nodes that had granted when the quorum decided: 2 or 3 of 3.
        #expect((2...3).contains(Self.count(locked, "multiredlock.nodes_granted")))
        #expect(locked.status?.code != .error)

        _ = try await redlock.renew(lock)
        let renewed = try Self.span(tracer, "multiredlock.renew")
        #expect(Self.attribute(renewed, "multiredlock.outcome") == .string("renewed"))
        #expect((2...3).contains(Self.count(renewed, "multiredlock.nodes_granted")))

        #expect(try await redlock.release(lock) == 3)
        let released = try Self.span(tracer, "multiredlock.release")
        #expect(Self.attribute(released, "multiredlock.outcome") == .string("released"))
        #expect(Self.attribute(released, "multiredlock.nodes_granted") == .int64(3))
        await redlock.close()
    }

    /// With no tracer in the options, the one bound by `withTracer` (a task-local instrument) is
    /// used; outside its scope the default instrument makes no span.
    @Test func aTaskLocalTracerIsUsedWhenTheOptionsHaveNone() async throws {
        let tracer = InMemoryTracer()
        let redlock = try Redlock(nodes: Self.nodes(), options: Self.options())
        let lock = try await withTracer(tracer) { try await redlock.lock("task-local", ttl: .seconds(10)) }
        let locked = try Self.span(tracer, "multiredlock.lock")
        #expect(Self.attribute(locked, "multiredlock.resource") == .string("task-local"))
        #expect(Self.attribute(locked, "multiredlock.outcome") == .string("granted"))
        #expect(try await redlock.release(lock) == 3)
        #expect(tracer.finishedSpans.count { $0.operationName == "multiredlock.release" } == 0)
        await redlock.close()
    }

    @Test func aFailedLockSpanCarriesTheErrorKindAndAttempts() async throws {
        let tracer = InMemoryTracer()
        let nodes = Self.nodes()
        for node in nodes.prefix(2) { node.set(key: "busy", value: "someone-else") }
        let redlock = try Redlock(nodes: nodes, options: Self.options(tracer: tracer, retries: 2))
        await #expect(throws: RedlockError.self) { try await redlock.lock("busy", ttl: .seconds(5)) }
        let failed = try Self.span(tracer, "multiredlock.lock")
        #expect(Self.attribute(failed, "multiredlock.outcome") == .string("taken"))
        #expect(Self.attribute(failed, "multiredlock.attempts") == .int64(3))
        // Two refused, so the third had granted or not yet answered when the attempt was decided.
        #expect((0...1).contains(Self.count(failed, "multiredlock.nodes_granted")))
        #expect(failed.status?.code == .error)
        #expect(failed.errors.count == 1)
        // Each failed attempt's release is a child span of the lock's span (the last one's is sent
        // in the background).
        try await waitUntil {
            tracer.finishedSpans.count { $0.operationName == "multiredlock.release" } == 3
        }
        let releases = tracer.finishedSpans.filter { $0.operationName == "multiredlock.release" }
        #expect(releases.allSatisfy { $0.traceID == failed.traceID })
        await redlock.close()
    }

    /// An attempt every node refused holds nothing anywhere: it starts no release round (no span,
    /// no background task), whether another attempt follows or not. `close()` waits for background
    /// releases, so none can come after the check.
    @Test func attemptsEveryNodeRefusedStartNoRelease() async throws {
        let tracer = InMemoryTracer()
        let nodes = Self.nodes()
        for node in nodes { node.set(key: "busy", value: "someone-else") }
        let redlock = try Redlock(nodes: nodes, options: Self.options(tracer: tracer, retries: 2))
        await #expect(throws: RedlockError.self) { try await redlock.lock("busy", ttl: .seconds(5)) }
        await redlock.close()
        let failed = try Self.span(tracer, "multiredlock.lock")
        #expect(Self.attribute(failed, "multiredlock.attempts") == .int64(3))
        #expect(!tracer.finishedSpans.contains { $0.operationName == "multiredlock.release" })
        #expect(nodes.allSatisfy { node in !node.calls.contains { $0.isRelease } })
    }

    @Test func renewHasItsOwnMetricsAndAcquireCountsOnlyAcquires() async throws {
        let metrics = TestMetrics()
        let nodes = Self.nodes()
        let redlock = try Redlock(nodes: nodes, options: Self.options(metrics: metrics))
        let lock = try await redlock.lock("metered", ttl: .seconds(10))
        _ = try await redlock.renew(lock)
        _ = try await redlock.renew(lock)
        for node in nodes { node.removeAll() }
        await #expect(throws: RedlockError.self) { try await redlock.renew(lock) }
        #expect(try metrics.expectCounter("multiredlock_attempts_total").totalValue == 1)
        #expect(try metrics.expectCounter("multiredlock_grants_total").totalValue == 1)
        #expect(try metrics.expectCounter("multiredlock_renew_attempts_total").totalValue == 3)
        #expect(try metrics.expectCounter("multiredlock_renewals_total").totalValue == 2)
        #expect(try metrics.expectTimer("multiredlock_renew_duration").values.count == 2)
        #expect(
            try metrics.expectCounter("multiredlock_renew_failures_total", [("reason", "notHeld")]).totalValue
                == 1)
        #expect(metrics.counterTotal(label: "multiredlock_failures_total") == 0)
        await redlock.close()
    }

    @Test func aLockLostInsideWithLockIsCounted() async throws {
        let metrics = TestMetrics()
        let nodes = Self.nodes()
        let redlock = try Redlock(nodes: nodes, options: Self.options(metrics: metrics))
        let error = await #expect(throws: RedlockError.self) {
            try await redlock.withLock("kept", ttl: .milliseconds(300)) { _ in
                // Someone deletes the lock everywhere: the first renewal is refused by a quorum.
                for node in nodes { node.removeAll() }
                try await Task.sleep(for: .seconds(10))
            }
        }
        #expect(error?.kind == .lost)
        #expect(try metrics.expectCounter("multiredlock_lost_total").totalValue == 1)
        await redlock.close()
    }

    @Test func connectedNodesGaugeAndTheLogFollowEachChange() async throws {
        let metrics = TestMetrics()
        let log = InMemoryLogHandler()
        var options = Self.options(metrics: metrics)
        options.logger = Logger(label: "test") { _ in log }
        options.logger.logLevel = .debug
        let nodes = Self.nodes()
        let redlock = try Redlock(nodes: nodes, options: options)
        let gauge = try metrics.expectGauge("multiredlock_connected_nodes")
        #expect(gauge.lastValue == 3)
        nodes[1].setConnected(false)
        #expect(gauge.lastValue == 2)
        nodes[2].setConnected(false)
        #expect(gauge.lastValue == 1)
        nodes[1].setConnected(true)
        #expect(gauge.lastValue == 2)
        let lines = log.entries.filter { "\($0.message)".hasPrefix("node ") }
        #expect(
            lines.map { "\($0.message)" }.suffix(3) == [
                "node disconnected", "node disconnected", "node connected",
            ])
        #expect(lines.last?.metadata["node"] == "node1")
        #expect(lines.last?.metadata["connected"] == "2")
        #expect(lines.allSatisfy { $0.level == .debug })
        await redlock.close()
    }

    /// Against real redis-servers: the log says why a node disconnected (the connection's error)
    /// and that it connected again.
    @Test func theLogSaysWhyARealNodeDisconnected() async throws {
        let group = try await RedisServerGroup.start(count: 3)
        defer { group.stopInBackground() }
        let log = InMemoryLogHandler()
        var options = RedlockIntegrationTests.options()
        options.logger = Logger(label: "test") { _ in log }
        options.logger.logLevel = .debug
        let redlock = try await RedlockIntegrationTests.redlock(group, options)
        let name = redlock.nodes[0].name
        func lines(_ message: String) -> [InMemoryLogHandler.Entry] {
            log.entries.filter { "\($0.message)" == message && $0.metadata["node"] == "\(name)" }
        }
        #expect(lines("node connected").count == 1)
        #expect(await group[0].kill9())
        try await waitUntil { !redlock.nodes[0].isConnected }
        try await waitUntil { !lines("node disconnected").isEmpty }
        let reason = try #require(lines("node disconnected").first?.metadata["reason"])
        #expect("\(reason)".contains("connectionLost") || "\(reason)".contains("connect"), "\(reason)")
        #expect("\(reason)" != "no reason given")
        await redlock.close()
    }
}
