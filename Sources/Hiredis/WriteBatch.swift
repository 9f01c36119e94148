import Dispatch
import Synchronization

/// What the connections on one serial queue share: whether a write batch runs on it, and the
/// adapters that buffered commands during the batch, to flush when it ends.
///
/// A connection flushes the commands it was given at the end of the queue turn, in a work item of
/// its own (see `EventAdapter.addWrite`). A fan-out to N nodes on one queue then costs N more work
/// items after the one that sent the commands. Inside a batch the adapters are flushed when the
/// batch's body returns instead, on the same thread, still one write(2) per connection.
///
/// The state is the queue's specific value (set once, by the first connection made on the queue);
/// a connection finds it through the queue it runs on, so a batch on one queue never flushes a
/// connection of another.
// @unchecked Sendable: `depth` and `pending` are read and written only on the queue the state
// belongs to (by the batch running there, and by adapters running there); `queueID` is immutable;
// `outstanding` is atomic.
final class WriteBatch: @unchecked Sendable {
    let queueID: ObjectIdentifier
    /// Work items the hot paths put on the queue that have not finished: batches and socket
    /// events. Zero means the queue is most likely idle, so a batch may run on the caller's thread.
    let outstanding = Atomic<Int>(0)
    private var depth = 0
    private var pending: [EventAdapter] = []

    private init(queueID: ObjectIdentifier) {
        self.queueID = queueID
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
            let state = WriteBatch(queueID: ObjectIdentifier(queue))
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
    /// adapter that buffered commands meanwhile (commands sent by what a flush calls back are
    /// flushed in the same pass). Off such queues it only runs `body`.
    static func run(_ body: () -> Void) {
        guard let state = current else { return body() }
        state.depth += 1
        body()
        if state.depth == 1 {
            var index = 0
            while index < state.pending.count {
                state.pending[index].flush()
                index += 1
            }
            state.pending.removeAll(keepingCapacity: true)
        }
        state.depth -= 1
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
        if WriteBatch.current == nil,
            state.outstanding.compareExchange(expected: 0, desired: 1, ordering: .acquiringAndReleasing)
                .exchanged
        {
            queue.sync { WriteBatch.run(body) }
            state.outstanding.subtract(1, ordering: .releasing)
        } else {
            state.outstanding.add(1, ordering: .relaxed)
            queue.async {
                body()
                state.outstanding.subtract(1, ordering: .releasing)
            }
        }
    }
}
