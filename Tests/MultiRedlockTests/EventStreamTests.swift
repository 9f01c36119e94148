import MultiRedlock
import MultiRedlockTesting
import Synchronization
import TestSupport
import Testing

/// `Redlock.events`: the connect and disconnect events as an `AsyncStream`.
@Suite(.serialized)
struct EventStreamTests {
    /// Collects a stream's events in a task of its own.
    final class Collector: Sendable {
        private let box = Box()
        let task: Task<Void, Never>

        final class Box: Sendable {
            let received = Locked<[RedlockEvent]>([])
            let finished = Atomic<Bool>(false)
        }

        init(_ stream: AsyncStream<RedlockEvent>) {
            let box = box
            task = Task {
                for await event in stream { box.received.withLock { $0.append(event) } }
                box.finished.store(true, ordering: .releasing)
            }
        }

        var events: [RedlockEvent] { box.received.withLock { $0 } }
        var isFinished: Bool { box.finished.load(ordering: .acquiring) }
    }

    @Test func theStreamFollowsTheQuorumAndFinishesOnClose() async throws {
        let nodes = (0..<3).map { MockRedlockNode(name: "node\($0)") }
        let redlock = try Redlock(nodes: nodes, options: RedlockOptions(id: "events"))
        // Subscribed while a quorum is connected: `.connect` at once.
        let collector = Collector(redlock.events)
        try await waitUntil { collector.events == [.connect] }
        nodes[0].setConnected(false)  // 2 of 3: still a quorum, no event
        nodes[1].setConnected(false)  // 1 of 3: below
        nodes[1].setConnected(true)  // 2 of 3 again
        try await waitUntil { collector.events == [.connect, .disconnect, .connect] }
        #expect(!collector.isFinished)
        await redlock.close()
        try await waitUntil { collector.isFinished }
        #expect(collector.events == [.connect, .disconnect, .connect])
        // A stream asked for after close() is finished at once.
        let late = Collector(redlock.events)
        try await waitUntil { late.isFinished }
        #expect(late.events.isEmpty)
    }

    @Test func eachAccessIsItsOwnSubscription() async throws {
        let nodes = (0..<3).map { MockRedlockNode(name: "node\($0)") }
        for node in nodes { node.setConnected(false) }
        let redlock = try Redlock(nodes: nodes, options: RedlockOptions(id: "events"))
        let first = Collector(redlock.events)
        let second = Collector(redlock.events)
        first.task.cancel()  // stops iterating: its subscription ends
        try await waitUntil { first.isFinished }
        for node in nodes { node.setConnected(true) }
        try await waitUntil { second.events == [.connect] }
        #expect(first.events.isEmpty)
        await redlock.close()
        try await waitUntil { second.isFinished }
    }
}
