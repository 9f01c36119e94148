import Dispatch
import LocalRedis
import Synchronization
import TestSupport
import Testing

@testable import Hiredis

#if canImport(Glibc)
    import Glibc
#endif

/// `RedisConnection.batch(on:_:)`, the fan-out's one hop: commands sent in a batch are written
/// when it returns (not in later queue turns), an idle queue runs it on the caller's thread, and a
/// batch asked for on a connection's queue is queued, never waited for.
@Suite("Write batches")
struct WriteBatchTests {
    /// A SET sent in a batch reaches the server while the same queue turn then holds the queue
    /// for 3 s: it was written when the batch's body returned. Flushed in a later queue turn (as
    /// outside a batch), it would wait behind the hold.
    @Test func aBatchIsWrittenWhenItsBodyReturns() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stopInBackground() }
        let queue = DispatchQueue(label: "write-batch-test")
        let connection = try RedisConnection(server: server.address(), options: .patient, queue: queue)
        #expect(try await connection.send(["PING"]) == .status("PONG"))
        let key = unique("batched")
        let answered = Atomic<Bool>(false)
        queue.async {
            WriteBatch.run {
                connection.send(["SET", key, "1"]) { _ in answered.store(true, ordering: .relaxed) }
            }
            usleep(3_000_000)
        }
        let checker = try RedisConnection(server: server.address(), options: .patient)
        let arrived = await eventually(timeout: .seconds(2)) {
            (try? await checker.send(["GET", key])) == .bulk("1")
        }
        #expect(arrived, "the batch's SET did not reach the server while the queue was held")
        #expect(await eventually(timeout: .seconds(10)) { answered.load(ordering: .relaxed) })
        await checker.close()
        await connection.close()
    }

    /// On an idle queue the batch runs on the caller's thread, before `batch` returns.
    @Test func aBatchOnAnIdleQueueRunsOnTheCallersThread() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stopInBackground() }
        let queue = DispatchQueue(label: "write-batch-test")
        let connection = try RedisConnection(server: server.address(), options: .patient, queue: queue)
        #expect(try await connection.send(["PING"]) == .status("PONG"))
        // Let the PING's socket event finish on the queue.
        queue.sync {}
        let caller = Atomic<UInt>(0)
        let ranInside = Atomic<UInt>(0)
        runOnThread {
            caller.store(UInt(pthread_self()), ordering: .relaxed)
            RedisConnection.batch(on: queue) { ranInside.store(UInt(pthread_self()), ordering: .relaxed) }
        }
        #expect(ranInside.load(ordering: .relaxed) == caller.load(ordering: .relaxed))
        await connection.close()
    }

    /// Asked for on a connection's queue (here, another connection's, held busy), a batch is
    /// queued: waiting for a queue from a queue could deadlock.
    @Test func aBatchAskedForOnAConnectionQueueIsQueued() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stopInBackground() }
        let first = DispatchQueue(label: "write-batch-test-1")
        let second = DispatchQueue(label: "write-batch-test-2")
        let one = try RedisConnection(server: server.address(), options: .patient, queue: first)
        let two = try RedisConnection(server: server.address(), options: .patient, queue: second)
        #expect(try await one.send(["PING"]) == .status("PONG"))
        #expect(try await two.send(["PING"]) == .status("PONG"))
        let finished = Atomic<Int>(0)
        // Each queue asks for a batch on the other while the other is busy: with sync, each would
        // wait for the other forever.
        first.async {
            usleep(100_000)
            RedisConnection.batch(on: second) { finished.add(1, ordering: .relaxed) }
        }
        second.async {
            usleep(100_000)
            RedisConnection.batch(on: first) { finished.add(1, ordering: .relaxed) }
        }
        #expect(await eventually(timeout: .seconds(10)) { finished.load(ordering: .relaxed) == 2 })
        await one.close()
        await two.close()
    }
}

/// Socket events and the queue's task executor: an idle queue's events run on the watcher thread,
/// and a reply resumes a task that prefers the queue's executor there, at the end of the batch.
@Suite("Socket events and the connection queue's executor")
struct ConnectionQueueExecutorTests {
    /// A reply on an idle queue that allows it is handled on the watcher thread (no Dispatch worker
    /// woken); on a queue that does not, on a Dispatch worker.
    @Test(arguments: [true, false])
    func anIdleQueuesRepliesAreHandledOnTheWatcherThreadWhenAllowed(allowed: Bool) async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stopInBackground() }
        let queue = DispatchQueue(label: "watcher-thread-test")
        if allowed { RedisConnection.handleEventsOnWatcherThread(of: queue) }
        let connection = try RedisConnection(server: server.address(), options: .patient, queue: queue)
        #expect(try await connection.send(["PING"]) == .status("PONG"))
        // Nothing else runs on the queue: each reply finds it idle.
        for _ in 0..<5 {
            let thread: String = await withCheckedContinuation { continuation in
                connection.send(["PING"]) { _ in continuation.resume(returning: currentThreadName()) }
            }
            #expect((thread == SocketWatcher.threadName) == allowed, "\(thread)")
        }
        await connection.close()
    }

    /// A task on the executor runs on the connections' queue, after each reply (resumed in the batch
    /// that read it) and after a sleep (resumed in a work item of its own), and what it sends from
    /// there is written. (That the batch runs on the watcher thread when the queue is idle is the
    /// test above; that a task is resumed there is load-dependent, and shows in `make bench`.)
    @Test func aTaskOnTheExecutorRunsOnTheQueue() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stopInBackground() }
        let queue = DispatchQueue(label: "executor-test")
        RedisConnection.handleEventsOnWatcherThread(of: queue)
        let connection = try RedisConnection(server: server.address(), options: .patient, queue: queue)
        #expect(try await connection.send(["PING"]) == .status("PONG"))
        let state = WriteBatch.of(queue)
        let executor = ConnectionQueueExecutor.of(queue)
        #expect(ConnectionQueueExecutor.of(queue) === executor)
        let key = unique("executor")
        let seen = await withTaskExecutorPreference(executor) {
            var seen: [String] = []
            seen.append(WriteBatch.current === state ? "queue" : "elsewhere")
            for index in 0..<5 {
                let reply = try? await connection.send(["SET", key, "\(index)"])
                seen.append(reply == .status("OK") && WriteBatch.current === state ? "queue" : "elsewhere")
            }
            try? await Task.sleep(for: .milliseconds(5))
            seen.append(WriteBatch.current === state ? "queue" : "elsewhere")
            let last = try? await connection.send(["GET", key])
            seen.append(last == .bulk("4") ? "written" : "lost")
            return seen
        }
        #expect(seen == Array(repeating: "queue", count: 7) + ["written"])
        await connection.close()
    }

    /// A task on one queue's executor uses connections of another queue and of its own, many at
    /// once: nothing waits for another queue, so nothing deadlocks.
    @Test func tasksOnOneExecutorUseConnectionsOfTwoQueues() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stopInBackground() }
        let first = DispatchQueue(label: "executor-test-1")
        let second = DispatchQueue(label: "executor-test-2")
        RedisConnection.handleEventsOnWatcherThread(of: first)
        let one = try RedisConnection(server: server.address(), options: .patient, queue: first)
        let two = try RedisConnection(server: server.address(), options: .patient, queue: second)
        let answered = await withTaskExecutorPreference(ConnectionQueueExecutor.of(first)) {
            await withTaskGroup(of: Int.self) { group in
                for _ in 0..<16 {
                    group.addTask {
                        var answered = 0
                        for _ in 0..<50 {
                            if (try? await one.send(["PING"])) == .status("PONG") { answered += 1 }
                            if (try? await two.send(["PING"])) == .status("PONG") { answered += 1 }
                        }
                        return answered
                    }
                }
                return await group.reduce(0, +)
            }
        }
        #expect(answered == 16 * 50 * 2)
        await one.close()
        await two.close()
    }
}

/// The calling thread's name, from /proc (Linux).
private func currentThreadName() -> String {
    let descriptor = open("/proc/thread-self/comm", O_RDONLY)
    guard descriptor >= 0 else { return "?" }
    defer { close(descriptor) }
    var buffer = [UInt8](repeating: 0, count: 32)
    let count = read(descriptor, &buffer, buffer.count)
    guard count > 0 else { return "?" }
    var name = buffer[0..<count]
    while name.last == UInt8(ascii: "\n") { name = name.dropLast() }
    return String(decoding: name, as: UTF8.self)
}

/// Runs `body` on a new thread of its own and waits for it (not on the cooperative pool, not on
/// a Dispatch queue).
private func runOnThread(_ body: @escaping @Sendable () -> Void) {
    // @unchecked Sendable: handed to the new thread once and only read there.
    final class Box: @unchecked Sendable {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
    var thread = pthread_t()
    let box = Unmanaged.passRetained(Box(body)).toOpaque()
    pthread_create(
        &thread, nil,
        { context in
            Unmanaged<Box>.fromOpaque(context!).takeRetainedValue().body()
            return nil
        }, box)
    pthread_join(thread, nil)
}
