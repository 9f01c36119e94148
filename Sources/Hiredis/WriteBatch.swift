import Dispatch
import Synchronization

/// What the connections on one serial queue share: whether a write batch runs on it, the adapters
/// that buffered commands during the batch, to flush when it ends, and the jobs of tasks that run
/// on the queue's ``ConnectionQueueExecutor``.
///
/// A connection flushes the commands it was given at the end of the queue turn, in a work item of
/// its own (see `EventAdapter.addWrite`). A fan-out to N nodes on one queue then costs N more work
/// items after the one that sent the commands. Inside a batch the adapters are flushed when the
/// batch's body returns instead, on the same thread, still one write(2) per connection.
///
/// Socket events run as batches too (the ``SocketWatcher`` delivers each queue's events of one
/// wake-up in one batch). A task job that a batch makes ready (a reply resumed a task that runs on
/// the queue's executor) runs at the end of the batch, on the same thread, instead of in a queue
/// turn of its own; the commands it sends leave with the batch's.
///
/// The state is the queue's specific value (set once, by the first connection made on the queue);
/// a connection finds it through the queue it runs on, so a batch on one queue never flushes a
/// connection of another.
// @unchecked Sendable: `depth`, `pending`, `jobs` and the contents of `readBuffer` are read and
// written only on the queue the state belongs to (by the batch running there, and by the adapters
// and the executor running there); `executor` is written once, in `init`, before the state is
// published; `queueID` and `queue` are immutable; `outstanding` and `eventsOnWatcherThread` are
// atomic.
final class WriteBatch: @unchecked Sendable {
    let queueID: ObjectIdentifier
    /// Unowned: the queue holds this state (its specific value), not the other way round.
    private unowned(unsafe) let queue: DispatchQueue
    /// Work items the hot paths put on the queue that have not finished: batches, socket events and
    /// task jobs. Zero means the queue is most likely idle, so a batch may run on the caller's
    /// thread.
    let outstanding = Atomic<Int>(0)
    /// Whether the watcher thread may run the queue's socket events itself (see
    /// ``RedisConnection/handleEventsOnWatcherThread(of:)``); otherwise they are always queued.
    let eventsOnWatcherThread = Atomic<Bool>(false)
    private var depth = 0
    private var pending: [EventAdapter] = []
    /// Where the queue's adapters read their sockets (one at a time: they run on the queue). 16 KiB,
    /// as much as hiredis reads per call.
    let readBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 16 * 1024, alignment: 8)
    private var jobs: [UnownedJob] = []

    /// The queue's task executor. Set once, in `init`, before the state is published.
    private(set) var executor: ConnectionQueueExecutor!

    private init(queue: DispatchQueue) {
        queueID = ObjectIdentifier(queue)
        self.queue = queue
        executor = ConnectionQueueExecutor(state: self)
    }

    deinit {
        readBuffer.deallocate()
    }

    fileprivate static let key = DispatchSpecificKey<WriteBatch>()
    /// Serializes the check-and-set of a queue's state by connections created at once; holds how
    /// many states were made (a count, not Void: ThreadSanitizer reports accesses to a zero-sized
    /// value behind a lock as races).
    private static let registration = Locked(0)

    /// The state of `queue`, created on first use.
    static func of(_ queue: DispatchQueue) -> WriteBatch {
        registration.withLock { registered in
            if let existing = queue.getSpecific(key: key) { return existing }
            let state = WriteBatch(queue: queue)
            queue.setSpecific(key: key, value: state)
            registered += 1
            return state
        }
    }

    /// The state of the connection queue the caller runs on, or nil off such queues.
    static var current: WriteBatch? { DispatchQueue.getSpecific(key: key) }

    /// Takes `adapter`'s flush when a batch runs on the caller's queue; false when none runs (the
    /// adapter flushes in a turn of its own). Call on the adapter's queue.
    static func take(_ adapter: EventAdapter) -> Bool {
        guard let state = current, state.depth > 0 else { return false }
        state.pending.append(adapter)
        return true
    }

    /// Runs `body` as a batch when the caller runs on a connection queue, then flushes every
    /// adapter that buffered commands meanwhile and runs the task jobs that became ready (commands
    /// those send are flushed in the same pass). Off such queues it only runs `body`.
    static func run(_ body: () -> Void) {
        guard let state = current else { return body() }
        state.depth += 1
        body()
        if state.depth == 1 { state.finish() }
        state.depth -= 1
    }

    /// The end of the outermost batch: every ready job runs, then every buffered command is written
    /// (jobs first, so that the commands of all of them leave in one write(2) per connection), until
    /// neither is left.
    private func finish() {
        while true {
            var index = 0
            while index < jobs.count {
                // Copied out first: the job may add jobs to the list while it runs.
                let job = jobs[index]
                job.runSynchronously(on: executor.asUnownedTaskExecutor())
                index += 1
            }
            jobs.removeAll(keepingCapacity: true)
            index = 0
            while index < pending.count {
                let adapter = pending[index]
                adapter.flush()
                index += 1
            }
            pending.removeAll(keepingCapacity: true)
            if jobs.isEmpty { return }
        }
    }

    /// Runs `body` on the queue as a batch: on the caller's thread when the queue is idle and the
    /// caller is not on a connection queue (`DispatchQueue.sync` on an idle queue runs there), and
    /// inline when the caller already runs on this queue. Otherwise (two queues must never wait for
    /// each other) in a work item of its own: as a batch when `batchedWhenQueued`, or as a plain
    /// work item, whose commands each connection flushes at the end of the queue.
    fileprivate func perform(batchedWhenQueued: Bool, _ body: @escaping @Sendable () -> Void) {
        let current = WriteBatch.current
        if current === self {
            return WriteBatch.run(body)
        }
        if current == nil,
            outstanding.compareExchange(expected: 0, desired: 1, ordering: .acquiringAndReleasing).exchanged
        {
            queue.sync { WriteBatch.run(body) }
            outstanding.subtract(1, ordering: .releasing)
        } else {
            schedule(batched: batchedWhenQueued, body)
        }
    }

    /// Runs `body` in a work item of its own, counted in `outstanding`.
    fileprivate func schedule(batched: Bool, _ body: @escaping @Sendable () -> Void) {
        outstanding.add(1, ordering: .relaxed)
        queue.async {
            if batched { WriteBatch.run(body) } else { body() }
            self.outstanding.subtract(1, ordering: .releasing)
        }
    }

    /// Takes a job for the queue's executor: run at the end of the batch running on the caller's
    /// thread, or else in a work item of its own. Never runs it before returning: the caller (the
    /// Swift runtime, resuming or starting a task) may hold locks of its own.
    fileprivate func enqueue(_ job: UnownedJob) {
        if WriteBatch.current === self, depth > 0 {
            jobs.append(job)
        } else {
            let executor = executor.asUnownedTaskExecutor()
            schedule(batched: true) { job.runSynchronously(on: executor) }
        }
    }
}

/// A task executor that runs jobs on a connection queue: a task that prefers it
/// (`withTaskExecutorPreference`) runs its non-isolated code there, serialized with the
/// connections' own work. A reply that resumes such a task resumes it on the thread that read the
/// reply, at the end of that batch, and the commands the task sends then leave with the batch's:
/// no thread is woken for either. Jobs must not block: while one runs, no connection on the queue
/// reads, writes or times out.
// @unchecked Sendable: `state` is immutable, and everything it holds is touched only on its queue
// (or is atomic).
package final class ConnectionQueueExecutor: TaskExecutor, @unchecked Sendable {
    /// Unowned: the state holds the executor, and lives as long as its queue.
    private unowned(unsafe) let state: WriteBatch

    fileprivate init(state: WriteBatch) {
        self.state = state
    }

    /// The executor of `queue`'s connections.
    package static func of(_ queue: DispatchQueue) -> ConnectionQueueExecutor {
        WriteBatch.of(queue).executor
    }

    package func enqueue(_ job: consuming ExecutorJob) {
        state.enqueue(UnownedJob(job))
    }
}

extension RedisConnection {
    /// Runs `body` on `queue`, for a fan-out to the connections that share it: the commands it
    /// sends to them go to hiredis at once (a caller on the connection's queue needs no hop).
    ///
    /// When nothing of the connections' hot paths (batches, socket events) is queued or running
    /// there, `body` runs at once on the caller's thread (`DispatchQueue.sync` on an idle queue
    /// runs there), which saves waking a Dispatch worker for it, and as a write batch: its
    /// commands are written when it returns, one write(2) per connection, on the same thread,
    /// instead of in one more queue turn per connection. The caller may then wait for whatever
    /// else runs on the queue at that moment (a timer, a close), which is short: nothing on a
    /// connection's queue blocks.
    ///
    /// Otherwise (or when called on a connection's queue: two queues must never wait for each
    /// other) it is queued with `async`, as a plain work item: each connection then flushes in a
    /// turn of its own at the end of the queue, so the commands of every fan-out queued meanwhile
    /// leave in one write(2) per connection. Flushing at the end of each queued fan-out instead
    /// wrote each separately: 64 callers went from about 11,000-24,000 to 8,000-12,000 cycles/s.
    package static func batch(on queue: DispatchQueue, _ body: @escaping @Sendable () -> Void) {
        guard let state = queue.getSpecific(key: WriteBatch.key) else {
            return queue.async(execute: body)
        }
        state.perform(batchedWhenQueued: false, body)
    }

    /// Lets the socket watcher thread run the socket events of `queue`'s connections itself when
    /// the queue is idle (with `DispatchQueue.sync`), instead of waking a Dispatch worker for them;
    /// a task on the queue's ``ConnectionQueueExecutor`` that a reply resumes then runs there too.
    ///
    /// Only for a queue where nothing ever blocks, the completions of its commands included: the
    /// watcher thread serves every connection of the process, and while it waits for a busy queue
    /// none of them reads. `Redlock` does it for the queue it makes for its nodes (all of whose
    /// completions are its own); a connection's queue given by an application, whose completions are
    /// the application's, is left alone.
    package static func handleEventsOnWatcherThread(of queue: DispatchQueue) {
        WriteBatch.of(queue).eventsOnWatcherThread.store(true, ordering: .relaxed)
    }

    /// Delivers one wake-up's socket events of `state`'s queue as one batch: run by the calling
    /// watcher thread when the queue allows it and is idle (see ``batch(on:_:)``), else queued.
    static func deliver(on state: WriteBatch, _ body: @escaping @Sendable () -> Void) {
        if state.eventsOnWatcherThread.load(ordering: .relaxed) {
            state.perform(batchedWhenQueued: true, body)
        } else {
            state.schedule(batched: true, body)
        }
    }
}
