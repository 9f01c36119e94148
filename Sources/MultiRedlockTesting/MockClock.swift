import Hiredis

/// The clock a ``MockRedlockNode`` measures key expiry on.
///
/// A manual clock (``init()``) starts at zero and moves only when ``advance(by:)`` is called, so
/// tests can expire locks without waiting. A clock that follows the system (``system``) also moves
/// with the real `ContinuousClock`, as a Redis server's does; ``advance(by:)`` still jumps it forward.
///
/// One clock can be shared by several nodes, to expire a key everywhere at once.
public final class MockClock: Sendable {
    /// Whether the clock also moves with the real `ContinuousClock`.
    public let followsSystemClock: Bool
    private let origin: ContinuousClock.Instant
    private let offset: Locked<Duration>

    /// A manual clock at zero that moves only with ``advance(by:)``.
    public convenience init() {
        self.init(followingSystemClock: false)
    }

    /// A clock at zero.
    /// - Parameter followingSystemClock: when true, the clock also moves with the real
    ///   `ContinuousClock` from now on; when false, it moves only with ``advance(by:)``.
    public init(followingSystemClock: Bool) {
        followsSystemClock = followingSystemClock
        origin = ContinuousClock.now
        offset = Locked(.zero)
    }

    /// A new clock, at zero, that follows the real `ContinuousClock`: nodes using it expire keys in
    /// real time. Each access makes a new clock, so advancing one never moves another test's nodes.
    public static var system: MockClock { MockClock(followingSystemClock: true) }

    /// The time now, from the clock's start (zero).
    public var now: Duration {
        let advanced = offset.withLock { $0 }
        return followsSystemClock ? advanced + (ContinuousClock.now - origin) : advanced
    }

    /// Moves the clock forward by `duration` (which must not be negative).
    public func advance(by duration: Duration) {
        precondition(duration >= .zero, "a clock cannot go back (advance by \(duration))")
        offset.withLock { $0 += duration }
    }
}
