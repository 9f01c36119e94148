import Synchronization

/// Counts the operations a ``Redlock`` has under way (acquire attempts, releases of failed
/// attempts and of `unlock`, delayed releases after a failed renew), so that ``Redlock/close()``
/// can wait for them: it is resumed when the last one ends, or when its grace runs out, whichever
/// comes first. No polling.
final class InFlightOperations: Sendable {
    /// How many operations are under way; atomic, so that the lock path takes no lock for it.
    private let count = Atomic<Int>(0)
    /// Whoever waits for the count to reach zero, by id.
    private let waiters = Locked<[UInt64: CheckedContinuation<Void, Never>]>([:])
    private let nextWaiter = Atomic<UInt64>(0)

    /// How many operations are under way now.
    var current: Int { count.load(ordering: .acquiring) }

    func enter() {
        count.add(1, ordering: .relaxed)
    }

    func leave() {
        // The waiter registers before it reads the count; this decrement comes before this read of
        // the waiters (both sequentially consistent), so one of the two sees the other.
        guard count.subtract(1, ordering: .sequentiallyConsistent).newValue == 0 else { return }
        // Usually nobody waits: then no array is made, and the dictionary is left as it is.
        let resumed = waiters.withLock { waiters -> [CheckedContinuation<Void, Never>]? in
            guard !waiters.isEmpty else { return nil }
            defer { waiters = [:] }
            return Array(waiters.values)
        }
        for waiter in resumed ?? [] { waiter.resume() }
    }

    /// Runs `operation` counted as under way.
    func run<T>(_ operation: () async -> T) async -> T {
        enter()
        defer { leave() }
        return await operation()
    }

    /// Returns once no operation is under way, or after `limit`, whichever is first.
    func drained(within limit: Duration) async {
        let id = nextWaiter.add(1, ordering: .relaxed).newValue
        let timer = Locked<Task<Void, Never>?>(nil)
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            waiters.withLock { $0[id] = continuation }
            if count.load(ordering: .sequentiallyConsistent) == 0 { return resume(id) }
            // Started once the waiter is registered, so that it cannot fire before.
            timer.withLock {
                $0 = Task {
                    try? await Task.sleep(for: limit)
                    self.resume(id)
                }
            }
        }
        timer.withLock { $0 }?.cancel()
    }

    /// Resumes waiter `id` unless someone did already.
    private func resume(_ id: UInt64) {
        waiters.withLock { $0.removeValue(forKey: id) }?.resume()
    }
}
