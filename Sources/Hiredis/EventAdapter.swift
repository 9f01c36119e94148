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
    /// Bytes read since the last complete reply, and the most one reply may take.
    private var bytesSinceReply = 0
    private let maxReplyBytes: Int
    /// Told (on `queue`, never inside a hiredis callback) when the adapter gives up on the socket.
    private let onFailure: (RedisConnectionError.Kind, String) -> Void
    private var failed = false
    /// Set by hiredis's cleanup hook: hiredis is freeing, or has freed, the context.
    private(set) var contextFreed = false

    private init(
        context: UnsafeMutablePointer<redisAsyncContext>, queue: DispatchQueue, maxReplyBytes: Int,
        onFailure: @escaping (RedisConnectionError.Kind, String) -> Void
    ) {
        self.context = context
        self.queue = queue
        self.maxReplyBytes = maxReplyBytes
        self.onFailure = onFailure
    }

    /// Installs the adapter's hooks on `context` and starts watching its socket. Call on `queue`.
    /// Fails when the context already has an adapter or its socket cannot be watched (the message
    /// says which). The caller keeps the adapter alive until hiredis has freed the context
    /// (`contextFreed`); hiredis itself holds only an unretained pointer to it.
    ///
    /// `onFailure` is called at most once, on `queue` in a turn of its own, when the adapter gives
    /// up on the socket: its watch could not be re-armed, a reply grew past `maxReplyBytes`, or the
    /// server sent a reply no command asked for. The adapter has stopped watching by then; the
    /// caller drops the context.
    static func attach(
        to context: UnsafeMutablePointer<redisAsyncContext>,
        queue: DispatchQueue,
        maxReplyBytes: Int,
        onFailure: @escaping (RedisConnectionError.Kind, String) -> Void
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
        // would keep the connection open after we close it). hiredis 0.14.1 creates the socket
        // without SOCK_CLOEXEC and has no option for it, so a fork+exec on another thread between
        // hiredis's socket(2), inside redisAsyncConnect, and this line still inherits it: a window
        // of microseconds that only the spawning side can close (posix_spawn with
        // posix_spawn_file_actions_addclosefrom_np, as LocalRedis and `redlock run` do).
        let descriptor = context.pointee.c.fd
        _ = fcntl(descriptor, F_SETFD, fcntl(descriptor, F_GETFD) | FD_CLOEXEC)
        let adapter = EventAdapter(
            context: context, queue: queue, maxReplyBytes: maxReplyBytes, onFailure: onFailure)
        // Writability from the start: it tells when connect(2) completes.
        let watched = watcher.watch(
            descriptor, queue: queue, wantsWrite: true,
            onReadable: { [weak adapter] in adapter?.handleRead() },
            onWritable: { [weak adapter] in adapter?.handleWrite() },
            onFailure: { [weak adapter] message in adapter?.fail(.connectionLost, message) })
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

    /// Reads what the socket has and hands it to hiredis, until a read comes back short (the watch
    /// is edge-triggered: no event comes for data already there). Once connected the adapter
    /// reads itself, into its queue's buffer, instead of through `redisAsyncHandleRead`: it then
    /// knows each read's size for `maxReplyBytes` and sees the first byte of data that no command
    /// asked for, without a FIONREAD and a MSG_PEEK call per event.
    private func handleRead() {
        guard let watch, !failed else { return }
        // While connecting hiredis reads itself (it completes the connect first); it reads 16 KiB
        // at most, so once connected the rest is read below.
        if CHiredis_REDIS_CONNECTED(context) == 0 {
            redisAsyncHandleRead(context)
            guard self.watch != nil, !failed, CHiredis_REDIS_CONNECTED(context) != 0 else { return }
        }
        let buffer = watch.batch.readBuffer
        while true {
            let count = read(watch.descriptor, buffer.baseAddress, buffer.count)
            if count < 0 {
                let code = errno
                if code == EINTR { continue }
                if code == EAGAIN || code == EWOULDBLOCK { return }
                return fail(
                    .connectionLost, "cannot read from the server: \(String(cString: strerror(code)))")
            }
            // The end of the stream: hiredis reads it again and drops the connection its own way.
            if count == 0 { return redisAsyncHandleRead(context) }
            // hiredis 0.14.1 is built with assertions (Debian keeps them: libhiredis.so imports
            // __assert_fail), and asserts that a reply with no callback waiting is an error reply:
            // anything else from the server while nothing is in flight would abort the process.
            // Drop the connection instead. (Several replies in one read, more than the commands in
            // flight, still reach that assert: see RedisConnection's notes.)
            if context.pointee.replies.head == nil, buffer.load(as: UInt8.self) != UInt8(ascii: "-") {
                return fail(.connectionLost, "the server sent \(count) bytes no command asked for")
            }
            bytesSinceReply += count
            guard
                redisReaderFeed(
                    context.pointee.c.reader, buffer.baseAddress?.assumingMemoryBound(to: CChar.self), count)
                    == REDIS_OK
            else {
                return fail(.connectionLost, "hiredis could not take the data read from the server")
            }
            redisProcessCallbacks(context)
            guard self.watch != nil, !failed else { return }
            if bytesSinceReply > maxReplyBytes, context.pointee.replies.head != nil {
                return fail(
                    .replyTooLarge,
                    "a reply grew past \(maxReplyBytes) bytes (maxReplyBytes); the connection was dropped")
            }
            if count < buffer.count { return }
        }
    }

    /// A complete reply reached its callback: the next one starts counting from zero.
    func replyArrived() {
        bytesSinceReply = 0
    }

    /// Stops watching the socket at once and tells the owner, in a turn of its own (this may run
    /// inside a hiredis callback, where the context must not be freed). Once only.
    private func fail(_ kind: RedisConnectionError.Kind, _ message: String) {
        guard !failed else { return }
        failed = true
        detach()
        queue.async { self.onFailure(kind, message) }
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

    /// hiredis has buffered a command. Once connected, flush at the end of the write batch running
    /// on this queue (``WriteBatch``), or else at the end of this queue turn, instead of waiting for
    /// writability, so commands issued in one turn leave in one write(2).
    /// While connecting, and when a flush could not write everything, wait for writability.
    private func addWrite() {
        guard let watch else { return }
        if inWriteHandler || CHiredis_REDIS_CONNECTED(context) == 0 {
            watch.setWantsWrite(true)
        } else if !flushScheduled {
            flushScheduled = true
            if !WriteBatch.take(self) {
                queue.async { [weak self] in self?.flush() }
            }
        }
    }

    private func delWrite() {
        watch?.setWantsWrite(false)
    }

    /// Called by hiredis while it frees the context, before it closes the socket.
    private func cleanup() {
        contextFreed = true
        detach()
        closeDescriptorZero(of: context)
    }

    /// Writes what hiredis buffered (a flush scheduled by addWrite). Call on `queue`.
    func flush() {
        guard flushScheduled else { return }
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

/// hiredis 0.14.1 closes a context's socket only when its descriptor is above 0 (`if (c->fd > 0)`
/// in redisFree); in a process started with standard input closed the first socket is descriptor
/// 0, and would leak. Closes it and marks the context as having none, so nothing closes it twice.
/// Call only while hiredis is about to free the context (its cleanup hook, or just before
/// redisAsyncFree).
func closeDescriptorZero(of context: UnsafeMutablePointer<redisAsyncContext>) {
    guard context.pointee.c.fd == 0 else { return }
    close(0)
    context.pointee.c.fd = -1
}
