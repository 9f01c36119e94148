/// One attempt of `lock`, `tryLock` or `lock(_:ttl:waitingUpTo:)`, as reported to
/// ``RedlockOptions/onAttempt`` once the attempt is decided.
///
/// ```swift
/// var options = RedlockOptions()
/// options.onAttempt = { attempt in
///     print("\(attempt.resource) attempt \(attempt.number): \(attempt.outcome) in \(attempt.elapsed)")
/// }
/// ```
public struct AcquireAttempt: Sendable {
    /// The resource's name (the names joined with commas for a multi-resource lock).
    public let resource: String
    /// The resources, in the order given.
    public let resources: [String]
    /// Which attempt this is: 1 for the first.
    public let number: Int
    /// How long the attempt took, from its first command to its decision (a fencing write-back
    /// included).
    public let elapsed: Duration
    /// The lock it acquired, or why it failed (``RedlockError/Kind/taken`` when someone else holds
    /// the resource).
    public let result: Result<Lock, RedlockError>
    /// The random wait before the next attempt, or nil when this was the last one.
    public let retryIn: Duration?

    public init(
        resources: [String], number: Int, elapsed: Duration, result: Result<Lock, RedlockError>,
        retryIn: Duration?
    ) {
        self.resource = Lock.name(of: resources)
        self.resources = resources
        self.number = number
        self.elapsed = elapsed
        self.result = result
        self.retryIn = retryIn
    }

    /// `granted`, or the failure's kind (`taken`, `quorumUnavailable`, …), as in the log line.
    public var outcome: String {
        switch result {
        case .success: "granted"
        case .failure(let error): error.kind.rawValue
        }
    }
}
