import MultiRedlock
import MultiRedlockTesting

/// A test node around a ``MockRedlockNode``: every call goes to `inner`. A test node adopts it and
/// writes only the calls it changes (its own implementation wins over these). Identity and restarts
/// (`serverID`, `timeSinceRestart`) are not forwarded: the protocol's nil, unless the node says more.
protocol ForwardingNode: RedlockNode {
    var inner: MockRedlockNode { get }
}

extension ForwardingNode {
    var name: String { inner.name }
    var isConnected: Bool { inner.isConnected }

    func acquire(
        keys: [String], value: String, ttl: Duration, timeout: Duration,
        completion: @escaping @Sendable (NodeResult) -> Void
    ) { inner.acquire(keys: keys, value: value, ttl: ttl, timeout: timeout, completion: completion) }

    func extend(
        keys: [String], value: String, ttl: Duration, timeout: Duration,
        completion: @escaping @Sendable (NodeResult) -> Void
    ) { inner.extend(keys: keys, value: value, ttl: ttl, timeout: timeout, completion: completion) }

    func release(
        keys: [String], value: String, timeout: Duration, completion: @escaping @Sendable (NodeResult) -> Void
    ) { inner.release(keys: keys, value: value, timeout: timeout, completion: completion) }

    func observeConnection(_ handler: @escaping @Sendable (Bool) -> Void) { inner.observeConnection(handler) }

    func close() async { await inner.close() }
}

/// The fencing calls, forwarded too, for a forwarding node that adopts ``FencingRedlockNode``.
extension ForwardingNode where Self: FencingRedlockNode {
    func acquireFenced(
        key: String, counterKey: String, value: String, ttl: Duration, timeout: Duration,
        completion: @escaping @Sendable (NodeResult, Int64) -> Void
    ) {
        inner.acquireFenced(
            key: key, counterKey: counterKey, value: value, ttl: ttl, timeout: timeout, completion: completion
        )
    }

    func raiseFence(
        key: String, counterKey: String, value: String, token: Int64, timeout: Duration,
        completion: @escaping @Sendable (NodeResult) -> Void
    ) {
        inner.raiseFence(
            key: key, counterKey: counterKey, value: value, token: token, timeout: timeout,
            completion: completion)
    }
}
