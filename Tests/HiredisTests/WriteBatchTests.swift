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
