import Dispatch
import Testing

/// A task executor of a test's own: a serial Dispatch queue. Such a queue gets a thread when it has
/// work (Dispatch's overcommit threads), so a task that prefers it never waits in the cooperative
/// pool's queue.
///
/// When the whole suite starts, hundreds of tests queue their first jobs on the pool's threads (one
/// per core, two here), and a job queued behind them can wait for seconds: 7 s under
/// AddressSanitizer in CI, where a lock's renewal, a task like any other, came after the lock's
/// validity had run out. A test of what a background task does on time (renewals, node timeouts,
/// the loss of a lock) runs its tasks here (the `.ownExecutor` trait), so that it fails for the
/// code's timing, never for the pool's backlog.
package final class QueueTaskExecutor: TaskExecutor {
    private let queue: DispatchQueue
    private static let key = DispatchSpecificKey<ObjectIdentifier>()

    package init(label: String) {
        queue = DispatchQueue(label: label)
        queue.setSpecific(key: Self.key, value: ObjectIdentifier(self))
    }

    /// Whether the calling code runs on this executor's queue.
    package var isCurrent: Bool { DispatchQueue.getSpecific(key: Self.key) == ObjectIdentifier(self) }

    package func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        queue.async { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}

/// Runs each test and its child tasks on a ``QueueTaskExecutor`` of its own; on a suite, each of its
/// tests. A `Task {}` does not inherit the preference: start it with
/// `Task(executorPreference: OwnExecutorTrait.executor)`.
package struct OwnExecutorTrait: TestTrait, SuiteTrait, TestScoping {
    /// The executor of the test running (nil outside the trait).
    @TaskLocal package static var executor: QueueTaskExecutor?

    package var isRecursive: Bool { true }

    package func provideScope(
        for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void
    ) async throws {
        let executor = QueueTaskExecutor(label: "test: \(test.name)")
        try await Self.$executor.withValue(executor) {
            try await withTaskExecutorPreference(executor) { try await function() }
        }
    }
}

extension Trait where Self == OwnExecutorTrait {
    /// Runs each test on a task executor of its own: see ``QueueTaskExecutor``.
    package static var ownExecutor: Self { Self() }
}
