import CEpoll
import Dispatch
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Tells connections when their sockets are readable or writable: one epoll instance and one thread
/// for the whole process. The thread waits, then hands each queue's events to it in one batch, run
/// on the connection's own serial queue, where all its other work runs too: queued there, or, for
/// a queue where nothing blocks (`RedisConnection.handleEventsOnWatcherThread(of:)`, which Redlock
/// uses) and nothing of the hot paths is queued, run on this thread with `DispatchQueue.sync`,
/// which saves waking a Dispatch worker. Nothing on a connection's queue waits for this thread, so
/// that wait is short and cannot deadlock.
///
/// Why not `DispatchSource` read and write sources, which this package used first: libdispatch's
/// epoll backend on Linux (as shipped with Swift 6.3.1) crashed under it, three different ways.
/// - CI, ThreadSanitizer run: the manager thread died in `_dispatch_source_merge_evt` →
///   `_dispatch_source_refs_finalize_unregistration` ("Source finalized twice").
/// - AddressSanitizer run: SEGV in `_dispatch_unote_unregister_muxed`.
/// - Refused connects whose event never came (about 1 in 3 with only a write source armed).
///
/// What is known: all three are in libdispatch's epoll bookkeeping (`event_epoll.c`, its
/// "muxnotes": one per descriptor, shared by the read and the write source), and they came with
/// sockets that were reset or refused (EPOLLHUP: crashed servers, CLIENT KILL) while sources were
/// being cancelled and created again. Two open swift-corelibs-libdispatch issues report the same
/// family: #949, a use-after-free of a muxnote under concurrent source set-up and teardown (the
/// manager thread crashes on a freed muxnote), and #833, a muxnote reused for a re-added socket
/// whose epoll update fails (ENOENT, sometimes after EPOLLHUP), so its events are lost. Neither
/// names the root cause, and we did not find it either. Watching the socket ourselves takes that
/// code out of the path.
///
/// Lifetimes: a `Watch` is in `table` from `watch(...)` until `Watch.cancel()`, which also removes
/// it from epoll, synchronously. An event the thread had already collected for a cancelled watch
/// finds nothing in the table (ids are never reused), or reaches a cancelled watch and is
/// dropped; so hiredis may close the socket right after `cancel()`.
// @unchecked Sendable: `epollFD` is immutable; `table` is behind its lock.
final class SocketWatcher: @unchecked Sendable {
    /// Started on first use; a failure (no epoll instance, no thread) is kept, and every attach
    /// reports it.
    static let shared: Result<SocketWatcher, WatchFailure> = start()

    struct WatchFailure: Error {
        let message: String
    }

    private struct Table {
        var nextID: UInt64 = 1
        var watches: [UInt64: Watch] = [:]
    }

    /// The watcher thread's name (15 characters: Linux's limit).
    static let threadName = "multiredlock-io"

    private let epollFD: Int32
    private let table = Locked(Table())

    private init(epollFD: Int32) {
        self.epollFD = epollFD
    }

    private static func start() -> Result<SocketWatcher, WatchFailure> {
        ForkDetector.install()
        let epollFD = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard epollFD >= 0 else {
            return .failure(
                WatchFailure(message: "epoll_create1 failed: \(String(cString: strerror(errno)))"))
        }
        let watcher = SocketWatcher(epollFD: epollFD)
        // The thread runs for the life of the process and owns this reference.
        let context = Unmanaged.passRetained(watcher).toOpaque()
        var thread = pthread_t()
        let created = pthread_create(
            &thread, nil,
            { context in
                guard let context else { return nil }
                Unmanaged<SocketWatcher>.fromOpaque(context).takeRetainedValue().run()
            }, context)
        guard created == 0 else {
            Unmanaged<SocketWatcher>.fromOpaque(context).release()
            return .failure(
                WatchFailure(
                    message: "cannot start the socket watcher thread: \(String(cString: strerror(created)))"))
        }
        pthread_detach(thread)
        return .success(watcher)
    }

    /// Starts watching `descriptor`: readability always, writability while `wantsWrite`. Call on
    /// `queue`; the handlers run there, one event at a time.
    /// `onFailure` is called, once, when the watch could not be re-armed (epoll_ctl failed): no
    /// event will come for the socket any more, and the watch is cancelled. It may run inside a
    /// handler (on `queue`).
    func watch(
        _ descriptor: Int32, queue: DispatchQueue, wantsWrite: Bool,
        onReadable: @escaping () -> Void, onWritable: @escaping () -> Void,
        onFailure: @escaping (String) -> Void
    ) -> Result<Watch, WatchFailure> {
        let watch = table.withLock { table in
            let watch = Watch(
                id: table.nextID, descriptor: descriptor, queue: queue, watcher: self, wantsWrite: wantsWrite,
                onReadable: onReadable, onWritable: onWritable, onFailure: onFailure)
            table.nextID += 1
            table.watches[watch.id] = watch
            return watch
        }
        var event = watch.event()
        guard epoll_ctl(epollFD, EPOLL_CTL_ADD, descriptor, &event) == 0 else {
            let message = "cannot watch the socket (epoll_ctl): \(String(cString: strerror(errno)))"
            watch.markCancelled()
            forget(watch)
            return .failure(WatchFailure(message: message))
        }
        return .success(watch)
    }

    /// Re-arms `watch` with its current interest; returns the error text when epoll_ctl fails.
    /// hiredis closes its socket only after the cleanup hook has cancelled the watch, so this fails
    /// only when something else closed or replaced the descriptor (ENOENT, EBADF) or the kernel is
    /// out of memory (ENOMEM): either way no event would ever come.
    fileprivate func modify(_ watch: Watch) -> String? {
        var event = watch.event()
        guard epoll_ctl(epollFD, EPOLL_CTL_MOD, watch.descriptor, &event) != 0 else { return nil }
        return "cannot re-arm the socket watch (epoll_ctl): \(String(cString: strerror(errno)))"
    }

    fileprivate func remove(_ watch: Watch) {
        _ = epoll_ctl(epollFD, EPOLL_CTL_DEL, watch.descriptor, nil)
        forget(watch)
    }

    private func forget(_ watch: Watch) {
        _ = table.withLock { $0.watches.removeValue(forKey: watch.id) }
    }

    /// The thread's loop: wait, look the batch up under one lock, hand each event to its queue.
    private func run() -> Never {
        // Named for debuggers and for the tests that look for it ("multiredlock-io").
        _ = CEpoll_setThreadName(SocketWatcher.threadName)
        let capacity: Int32 = 64
        var events = [epoll_event](repeating: epoll_event(), count: Int(capacity))
        // Reused for every batch: a wake-up allocates nothing here.
        var ready: [(watch: Watch, bits: UInt32)] = []
        ready.reserveCapacity(Int(capacity))
        while true {
            let count = events.withUnsafeMutableBufferPointer {
                epoll_wait(epollFD, $0.baseAddress, capacity, -1)
            }
            if count < 0 {
                let code = errno
                if code == EINTR { continue }
                // Only a closed or invalid epoll descriptor gets here: something in the process
                // closed a descriptor that was not its own.
                fatalError("epoll_wait on the socket watcher failed: \(String(cString: strerror(code)))")
            }
            table.withLock { table in
                for event in events.prefix(Int(count)) {
                    if let watch = table.watches[event.data.u64] { ready.append((watch, event.events)) }
                }
            }
            // Each queue's events of this wake-up in one batch: on this thread when the queue allows
            // it and is idle (no Dispatch worker is woken for them, and a task they resume on the
            // queue's executor runs here too), else queued behind what runs there.
            var start = 0
            while start < ready.count {
                let state = ready[start].watch.batch
                var end = start + 1
                for index in end..<ready.count where ready[index].watch.batch === state {
                    ready.swapAt(index, end)
                    end += 1
                }
                let events = Array(ready[start..<end])
                RedisConnection.deliver(on: state) {
                    for (watch, bits) in events { watch.deliver(bits) }
                }
                start = end
            }
            ready.removeAll(keepingCapacity: true)
        }
    }
}

/// One socket's registration with the ``SocketWatcher``, edge-triggered: the kernel reports each
/// new arrival of data (and each change to writable while writability is wanted) once, and the
/// read handler reads until the socket is drained. The registration changes only when
/// writability starts or stops being wanted (connecting, a write that could not finish), not per
/// event, which saves an epoll_ctl(2) per event over a one-shot watch. Events run on `queue`, one
/// at a time; one that finds nothing to do (its data was read by the handler of an earlier one) is
/// harmless. Everything below is touched only on `queue`.
// @unchecked Sendable: the mutable state is touched only on `queue` (the connection's serial queue);
// the watcher thread reads only the immutable `id`, `queue` and `batch`.
final class Watch: @unchecked Sendable {
    let id: UInt64
    let descriptor: Int32
    let queue: DispatchQueue
    /// The queue's shared state: its count of outstanding work items.
    let batch: WriteBatch
    private let watcher: SocketWatcher
    private var onReadable: (() -> Void)?
    private var onWritable: (() -> Void)?
    private var onFailure: ((String) -> Void)?
    private var wantsWrite: Bool
    private(set) var isCancelled = false

    fileprivate init(
        id: UInt64, descriptor: Int32, queue: DispatchQueue, watcher: SocketWatcher, wantsWrite: Bool,
        onReadable: @escaping () -> Void, onWritable: @escaping () -> Void,
        onFailure: @escaping (String) -> Void
    ) {
        self.onFailure = onFailure
        self.id = id
        self.descriptor = descriptor
        self.queue = queue
        batch = WriteBatch.of(queue)
        self.watcher = watcher
        self.wantsWrite = wantsWrite
        self.onReadable = onReadable
        self.onWritable = onWritable
    }

    fileprivate func event() -> epoll_event {
        var bits = EPOLLIN.rawValue | EPOLLET.rawValue
        if wantsWrite { bits |= EPOLLOUT.rawValue }
        var event = epoll_event()
        event.events = bits
        event.data.u64 = id
        return event
    }

    /// Turns the writability half on or off (hiredis's addWrite and delWrite).
    func setWantsWrite(_ wanted: Bool) {
        guard !isCancelled, wantsWrite != wanted else { return }
        wantsWrite = wanted
        rearm()
    }

    /// Registers the watch's current interest; when that fails, cancels it and reports the failure.
    private func rearm() {
        guard let failure = watcher.modify(self) else { return }
        let onFailure = onFailure
        cancel()
        onFailure?(failure)
    }

    /// Stops the watch, synchronously: no handler runs after this returns, and the descriptor may
    /// be closed. Idempotent.
    func cancel() {
        guard !isCancelled else { return }
        markCancelled()
        watcher.remove(self)
    }

    fileprivate func markCancelled() {
        isCancelled = true
        onReadable = nil
        onWritable = nil
        onFailure = nil
    }

    /// Runs the handlers for one event. An error or hang-up goes to both handlers (writability
    /// first: that is how hiredis learns that a connect failed), so hiredis reads the error and
    /// drops the connection; a handler that does so cancels the watch.
    fileprivate func deliver(_ bits: UInt32) {
        guard !isCancelled else { return }
        let failed = bits & (EPOLLERR.rawValue | EPOLLHUP.rawValue) != 0
        if wantsWrite, failed || bits & EPOLLOUT.rawValue != 0 {
            onWritable?()
        }
        if !isCancelled, failed || bits & EPOLLIN.rawValue != 0 {
            onReadable?()
        }
    }
}

/// Knows whether this process is a child made by `fork()` (without `exec`) of a process that had
/// started the socket watcher.
///
/// Such a child has the parent's connections, but not the watcher thread, nor Dispatch's worker
/// threads (only the forking thread survives a fork): its connections would wait for events that
/// never come. They fail fast instead: every command fails at once with
/// ``RedisConnectionError/Kind/forkedProcess``, on the caller's thread, and creating a connection
/// throws that error. No fresh watcher is started, because the connections also run on Dispatch
/// queues, which a forked child of a multithreaded process cannot use safely.
enum ForkDetector {
    private static let forked = Atomic<Bool>(false)

    /// Registers the fork handler; runs once, when the watcher starts (a fork before that leaves no
    /// connection behind).
    static func install() {
        pthread_atfork(nil, nil) { ForkDetector.forked.store(true, ordering: .relaxed) }
    }

    static var isForkedChild: Bool { forked.load(ordering: .relaxed) }

    static func error(server: String) -> RedisConnectionError {
        RedisConnectionError(
            .forkedProcess, server: server,
            message:
                "this process was forked (without exec) after connecting: connections cannot be used in the child",
            outcomeUnknown: false)
    }
}
