#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A value behind a pthread mutex: the lock the package's own shared state uses.
///
/// Not `Synchronization.Mutex`, because ThreadSanitizer on Linux cannot see it: `Mutex` locks with
/// futex calls inside the (uninstrumented) standard library, so ThreadSanitizer reports every
/// concurrent access to the state it protects as a race, and would miss a real one. Measured here
/// with ten lines: four threads updating a dictionary under a `Mutex` were reported at once, under
/// this lock not at all. ThreadSanitizer intercepts `pthread_mutex_lock`, so `make tsan` sees this
/// lock's ordering.
// @unchecked Sendable: `value` is read and written only between pthread_mutex_lock and
// pthread_mutex_unlock of `mutex`, and it is Sendable itself.
package final class Locked<Value: Sendable>: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    package init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deinitialize(count: 1)
        mutex.deallocate()
    }

    /// Runs `body` with the value, holding the lock. Not reentrant: `body` must not take it again.
    package func withLock<Result>(_ body: (inout Value) throws -> Result) rethrows -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
