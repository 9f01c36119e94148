import Foundation

// Async forms of the blocking calls, for async code (tests, the demo). Each runs the blocking call on
// a thread of its own. The cooperative pool has only as many threads as cores (two here), and every
// task in the process shares it: a test that started servers or ran redis-cli on it held up every
// other test's continuations. A run of the concurrency suites with a task that sleeps 2 ms in a loop
// measured pauses of up to 0.52 s in the first seconds, when many tests start their servers at once.
//
// In an async context Swift picks these over the blocking forms of the same name, so `try await
// server.cli("GET", key)` is the async form and a call without `await` does not compile there. A
// synchronous closure inside async code (an `#expect` argument, a `map` body) still gets the blocking
// form without a word: write `await` there (`#expect(await server.pause())`).
// `stop()` and `stopAll()` have no async form (a `defer` cannot await): use `stopInBackground()`.

/// Runs blocking `body` on a new thread and returns its result.
public func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try body() }) }.start()
    }
}

/// `offPool` for work that cannot throw.
public func offPool<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        Thread { continuation.resume(returning: body()) }.start()
    }
}

extension RedisServerProcess {
    /// The async form of `start(_:)`.
    public static func start(_ configuration: RedisServerConfiguration = .init()) async throws
        -> RedisServerProcess
    {
        try await offPool { try RedisServerProcess.start(configuration) }
    }

    /// The async form of `cli(_:)`.
    @discardableResult
    public func cli(_ arguments: String...) async throws -> String {
        try await offPool { [self] in try cli(arguments: arguments) }
    }

    /// The async form of `cli(arguments:timeout:)`.
    @discardableResult
    public func cli(arguments: [String], timeout: Duration = .seconds(10)) async throws -> String {
        try await offPool { [self] in try cli(arguments: arguments, timeout: timeout) }
    }

    /// The async form of `kill9()`.
    public func kill9() async -> Bool {
        await offPool { [self] in kill9() }
    }

    /// The async form of `pause()`.
    public func pause() async -> Bool {
        await offPool { [self] in pause() }
    }

    /// The async form of `resume()`.
    public func resume() async -> Bool {
        await offPool { [self] in resume() }
    }

    /// The async form of `restart(after:)`.
    public func restart(after delay: Duration = .zero) async throws {
        try await offPool { [self] in try restart(after: delay) }
    }

    /// Starts `stop()` on a thread of its own and returns at once (for a `defer` in async code).
    public func stopInBackground() {
        Thread { [self] in stop() }.start()
    }
}

extension RedisServerGroup {
    /// The async form of `start(count:_:)`.
    public static func start(count: Int, _ configuration: RedisServerConfiguration = .init()) async throws
        -> RedisServerGroup
    {
        try await offPool { try RedisServerGroup.start(count: count, configuration) }
    }

    /// Starts `stopAll()` on a thread of its own and returns at once (for a `defer` in async code).
    public func stopInBackground() {
        Thread { [self] in stopAll() }.start()
    }
}
