import CHiredis
import Dispatch

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The hiredis event-loop adapter, shaped like hiredis's own `adapters/libevent.h`: one object
/// holding the context and its socket's ``Watch``, idempotent add/del read/write and cleanup hooks,
/// one handler per direction, and `attach`, which refuses a context that already has an adapter.
///
/// Everything here runs on the connection's serial queue, where the watch delivers its events too,
/// so no two threads ever call into one context. Readability is watched for the adapter's whole
/// life (hiredis's delRead only clears a flag); writability while connecting and while a flush
/// could not write everything.
// @unchecked Sendable: every stored property is touched only on `queue` (the connection's serial queue);
// closures that cross to that queue capture the adapter only to run there.
final class EventAdapter: @unchecked Sendable {
    private let context: UnsafeMutablePointer<redisAsyncContext>
    private let queue: DispatchQueue
    /// The socket's watch, from `attach` until `detach()`: by hiredis's cleanup hook (the context
    /// is being freed) or by the owner (about to free it). No handler touches the context after.
    private var watch: Watch?
    private var flushScheduled = false
    private var inWriteHandler = false
    /// Set by hiredis's cleanup hook: hiredis is freeing, or has freed, the context.
    private(set) var contextFreed = false

    private init(context: UnsafeMutablePointer<redisAsyncContext>, queue: DispatchQueue) {
        self.context = context
        self.queue = queue
    }

    /// Installs the adapter's hooks on `context` and starts watching its socket. Call on `queue`.
    /// Fails when the context already has an adapter or its socket cannot be watched (the message
    /// says which). The caller keeps the adapter alive until hiredis has freed the context
    /// (`contextFreed`); hiredis itself holds only an unretained pointer to it.
    static func attach(
        to context: UnsafeMutablePointer<redisAsyncContext>,
        queue: DispatchQueue
    ) -> Result<EventAdapter, AttachFailure> {
        guard context.pointee.ev.data == nil else {
            return .failure(AttachFailure(message: "the hiredis context already had an event adapter"))
        }
        let watcher: SocketWatcher
        switch SocketWatcher.shared {
        case .success(let shared): watcher = shared
        case .failure(let failure): return .failure(AttachFailure(message: failure.message))
        }
        // Close-on-exec: a child process the application spawns must not inherit the socket (it
        // would keep the connection open after we close it).
        let descriptor = context.pointee.c.fd
        _ = fcntl(descriptor, F_SETFD, fcntl(descriptor, F_GETFD) | FD_CLOEXEC)
        let adapter = EventAdapter(context: context, queue: queue)
        // Writability from the start: it tells when connect(2) completes.
        let watched = watcher.watch(
            descriptor, queue: queue, wantsWrite: true,
            onReadable: { [weak adapter] in adapter?.handleRead() },
            onWritable: { [weak adapter] in adapter?.handleWrite() })
        switch watched {
        case .success(let watch): adapter.watch = watch
        case .failure(let failure): return .failure(AttachFailure(message: failure.message))
        }
        context.pointee.ev.data = Unmanaged.passUnretained(adapter).toOpaque()
        context.pointee.ev.addRead = { adapterFrom($0)?.addRead() }
        context.pointee.ev.delRead = { adapterFrom($0)?.delRead() }
        context.pointee.ev.addWrite = { adapterFrom($0)?.addWrite() }
        context.pointee.ev.delWrite = { adapterFrom($0)?.delWrite() }
        context.pointee.ev.cleanup = { adapterFrom($0)?.cleanup() }
        return .success(adapter)
    }

    struct AttachFailure: Error {
        let message: String
    }

    private func handleRead() {
        guard watch != nil else { return }
        redisAsyncHandleRead(context)
    }

    private func handleWrite() {
        guard watch != nil else { return }
        inWriteHandler = true
        redisAsyncHandleWrite(context)
        inWriteHandler = false
    }

    // MARK: hiredis hooks

    private func addRead() {
        // Readability stays watched for the adapter's whole life.
    }

    private func delRead() {
        // See addRead.
    }

    /// hiredis has buffered a command. Once connected, flush at the end of this queue turn instead
    /// of waiting for writability, so commands issued in one turn leave in one write(2).
    /// While connecting, and when a flush could not write everything, wait for writability.
    private func addWrite() {
        guard let watch else { return }
        if inWriteHandler || CHiredis_REDIS_CONNECTED(context) == 0 {
            watch.setWantsWrite(true)
        } else if !flushScheduled {
            flushScheduled = true
            queue.async { [weak self] in self?.flush() }
        }
    }

    private func delWrite() {
        watch?.setWantsWrite(false)
    }

    /// Called by hiredis while it frees the context, before it closes the socket.
    private func cleanup() {
        contextFreed = true
        detach()
    }

    private func flush() {
        flushScheduled = false
        handleWrite()
    }

    /// Stops watching the socket, synchronously; afterwards no handler calls into the context and
    /// the socket may be closed. Idempotent.
    func detach() {
        watch?.cancel()
        watch = nil
    }
}

private func adapterFrom(_ pointer: UnsafeMutableRawPointer?) -> EventAdapter? {
    guard let pointer else { return nil }
    return Unmanaged<EventAdapter>.fromOpaque(pointer).takeUnretainedValue()
}
