import CHiredis
import Dispatch

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The hiredis event-loop adapter for Dispatch, shaped like hiredis's own `adapters/libevent.h`:
/// one object holding the context and its two event sources, idempotent add/del read/write and
/// cleanup hooks, one handler per direction, and `attach`, which refuses a context that already has
/// an adapter.
///
/// Everything here runs on the connection's serial queue, which is also the sources' target queue,
/// so no two threads ever call into one context.
///
/// libdispatch on Linux crashes when a suspended or never-activated source is released, or when a
/// source is resumed once too often; and a suspended read source was measured to lose events. So
/// both sources are activated at once, the read source is never suspended (hiredis's delRead only
/// clears a flag), the write source is suspended and resumed behind a flag, and cleanup cancels
/// both and resumes the write source if it is suspended.
// @unchecked Sendable: every stored property is touched only on `queue` (the connection's serial queue);
// closures that cross to that queue capture the adapter only to run there.
final class DispatchEventAdapter: @unchecked Sendable {
    private let context: UnsafeMutablePointer<redisAsyncContext>
    private let queue: DispatchQueue
    private let readSource: any DispatchSourceRead
    private let writeSource: any DispatchSourceWrite
    private var writeArmed = true
    private var flushScheduled = false
    private var inWriteHandler = false

    /// Set once the sources are cancelled: by hiredis's cleanup hook (the context is being freed)
    /// or by `detach()` (the owner is about to free it). No handler touches the context after.
    private(set) var isDetached = false
    /// Set by hiredis's cleanup hook: hiredis is freeing, or has freed, the context.
    private(set) var contextFreed = false

    /// Left by each source's cancel handler, once it has closed its descriptor.
    private let released = DispatchGroup()

    /// Each source watches a duplicate of hiredis's descriptor of its own, closed by its cancel
    /// handler, that is once libdispatch has unregistered it. Two reasons:
    /// - hiredis closes its own descriptor when it frees the context, and libdispatch on Linux
    ///   unregisters cancelled sources later, asynchronously: watching hiredis's descriptor directly,
    ///   a new connection that got the same number attached its sources to the stale registration and
    ///   never heard of its socket again.
    /// - libdispatch's epoll backend keeps one registration per descriptor number for a read and a
    ///   write source, re-armed one-shot for both. That shared state crashed under AddressSanitizer
    ///   (SEGV in `_dispatch_unote_unregister_muxed`) and is the suspect for the rare lost wake-ups
    ///   seen before. With a number each, the two sources never share a registration.
    private init(
        context: UnsafeMutablePointer<redisAsyncContext>, queue: DispatchQueue, readFD: Int32, writeFD: Int32
    ) {
        self.context = context
        self.queue = queue
        readSource = DispatchSource.makeReadSource(fileDescriptor: readFD, queue: queue)
        writeSource = DispatchSource.makeWriteSource(fileDescriptor: writeFD, queue: queue)
        released.enter()
        released.enter()
        let released = released
        readSource.setCancelHandler {
            _ = close(readFD)
            released.leave()
        }
        writeSource.setCancelHandler {
            _ = close(writeFD)
            released.leave()
        }
    }

    /// Runs `work` on the queue once the sources are unregistered and their descriptor is closed.
    func whenReleased(_ work: @escaping @Sendable () -> Void) {
        released.notify(queue: queue, execute: work)
    }

    /// Installs the adapter's hooks on `context`. Fails when the context already has an adapter or
    /// its descriptor cannot be duplicated (the message says which). The caller keeps the adapter
    /// alive until hiredis has freed the context (`contextFreed`); hiredis itself holds only an
    /// unretained pointer to it.
    static func attach(
        to context: UnsafeMutablePointer<redisAsyncContext>,
        queue: DispatchQueue
    ) -> Result<DispatchEventAdapter, AttachFailure> {
        guard context.pointee.ev.data == nil else {
            return .failure(AttachFailure(message: "the hiredis context already had an event adapter"))
        }
        // Close-on-exec, hiredis's socket and the duplicates: a child process the application
        // spawns must not inherit them (it would keep the connection open after we close it).
        let hiredisFD = context.pointee.c.fd
        _ = fcntl(hiredisFD, F_SETFD, fcntl(hiredisFD, F_GETFD) | FD_CLOEXEC)
        let readFD = fcntl(hiredisFD, F_DUPFD_CLOEXEC, 0)
        let readErrno = errno
        let writeFD = readFD >= 0 ? fcntl(hiredisFD, F_DUPFD_CLOEXEC, 0) : -1
        guard readFD >= 0, writeFD >= 0 else {
            let code = readFD < 0 ? readErrno : errno
            if readFD >= 0 { _ = close(readFD) }
            return .failure(
                AttachFailure(
                    message: "cannot duplicate the socket's descriptor: \(String(cString: strerror(code)))"))
        }
        let adapter = DispatchEventAdapter(context: context, queue: queue, readFD: readFD, writeFD: writeFD)
        context.pointee.ev.data = Unmanaged.passUnretained(adapter).toOpaque()
        context.pointee.ev.addRead = { adapterFrom($0)?.addRead() }
        context.pointee.ev.delRead = { adapterFrom($0)?.delRead() }
        context.pointee.ev.addWrite = { adapterFrom($0)?.addWrite() }
        context.pointee.ev.delWrite = { adapterFrom($0)?.delWrite() }
        context.pointee.ev.cleanup = { adapterFrom($0)?.cleanup() }

        adapter.readSource.setEventHandler { [weak adapter] in adapter?.handleRead() }
        adapter.writeSource.setEventHandler { [weak adapter] in adapter?.handleWrite() }
        // Both sources start armed: the write source tells when connect(2) completes, and the read
        // source must be registered from the start too, or a refused connect can go unreported.
        adapter.readSource.activate()
        adapter.writeSource.activate()
        return .success(adapter)
    }

    struct AttachFailure: Error {
        let message: String
    }

    private func handleRead() {
        guard !isDetached else { return }
        redisAsyncHandleRead(context)
    }

    private func handleWrite() {
        guard !isDetached else { return }
        inWriteHandler = true
        redisAsyncHandleWrite(context)
        inWriteHandler = false
    }

    // MARK: hiredis hooks

    private func addRead() {
        // The read source stays armed for the adapter's whole life.
    }

    private func delRead() {
        // Never suspended: see the type's comment.
    }

    /// hiredis has buffered a command. Once connected, flush at the end of this queue turn instead
    /// of waiting for the write source, so commands issued in one turn leave in one write(2).
    /// While connecting, and when a flush could not write everything, wait for writability.
    private func addWrite() {
        guard !isDetached else { return }
        if inWriteHandler || CHiredis_REDIS_CONNECTED(context) == 0 {
            armWrite()
        } else if !flushScheduled {
            flushScheduled = true
            queue.async { [weak self] in self?.flush() }
        }
    }

    private func delWrite() {
        guard !isDetached, writeArmed else { return }
        writeArmed = false
        writeSource.suspend()
    }

    private func cleanup() {
        contextFreed = true
        detach()
    }

    private func armWrite() {
        guard !writeArmed else { return }
        writeArmed = true
        writeSource.resume()
    }

    private func flush() {
        flushScheduled = false
        handleWrite()
    }

    /// Cancels both sources; afterwards no handler calls into the context. Idempotent.
    func detach() {
        guard !isDetached else { return }
        isDetached = true
        readSource.cancel()
        writeSource.cancel()
        if !writeArmed {
            writeArmed = true
            writeSource.resume()
        }
    }
}

private func adapterFrom(_ pointer: UnsafeMutableRawPointer?) -> DispatchEventAdapter? {
    guard let pointer else { return nil }
    return Unmanaged<DispatchEventAdapter>.fromOpaque(pointer).takeUnretainedValue()
}
