/// Completion-handler forms of the lock calls, for callers that are not async (see the Coming from
/// npm article).
extension Redlock {
    /// Acquires a lock as ``lock(_:ttl:)-(String,_)`` does; `completion` runs once, on an arbitrary thread.
    public func lock(
        _ resource: String, ttl: Duration,
        completion: @escaping @Sendable (Result<Lock, RedlockError>) -> Void
    ) {
        Task {
            do {
                completion(.success(try await lock(resource, ttl: ttl)))
            } catch let error as RedlockError {
                completion(.failure(error))
            } catch {
                // Only cancellation can land here, and this task is never cancelled.
                completion(.failure(RedlockError(.closed, resource: resource, message: "\(error)")))
            }
        }
    }

    /// Renews a lock as ``renew(_:value:ttl:)`` does; `completion` runs once, on an arbitrary thread.
    public func renew(
        _ resource: String, value: String, ttl: Duration,
        completion: @escaping @Sendable (Result<Lock, RedlockError>) -> Void
    ) {
        Task {
            do throws(RedlockError) {
                completion(.success(try await renew(resource, value: value, ttl: ttl)))
            } catch {
                completion(.failure(error))
            }
        }
    }
}
