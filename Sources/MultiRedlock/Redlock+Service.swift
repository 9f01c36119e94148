import ServiceLifecycle

/// `Redlock` as a swift-service-lifecycle `Service`, to sit in a `ServiceGroup` beside the HTTP
/// server and the other services of an application.
///
/// ```swift
/// let redlock = try Redlock(servers: servers)
/// let group = ServiceGroup(
///     services: [redlock, httpServer],  // shut down in reverse order: the server first
///     gracefulShutdownSignals: [.sigterm],
///     logger: logger)
/// try await group.run()
/// ```
///
/// List the `Redlock` before the services that lock with it: a `ServiceGroup` shuts its services
/// down in reverse order, so theirs end (and issue their last releases) before the `Redlock` closes.
extension Redlock: Service {
    /// Waits until the application shuts down gracefully (or the task is cancelled), then closes
    /// this `Redlock` as ``close()`` does: the releases in flight (also those just issued by
    /// ``unlock(_:)-(Lock)``) and attempts under way get up to three node timeouts and 50 ms to finish, then
    /// the connections close. Returns once closed; later calls fail with ``RedlockError/Kind/closed``.
    public func run() async throws {
        // Returns on graceful shutdown; throws CancellationError when the task is cancelled. Either
        // way the Redlock closes.
        try? await gracefulShutdown()
        // In a task of its own: a cancelled `run()` must still let the releases in flight finish
        // (close() waits with Task.sleep, which a cancelled task would skip).
        await Task { await self.close() }.value
    }
}
