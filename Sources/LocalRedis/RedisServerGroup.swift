/// N independent redis-servers with the same configuration, e.g. the nodes of a Redlock quorum.
/// Each gets its own port and directory. The servers stop when the group (and every other
/// reference to them) goes away, or with `stopAll()`.
public final class RedisServerGroup: Sendable {
    public let servers: [RedisServerProcess]

    /// The servers' ports, in order.
    public var ports: [Int] { servers.map(\.port) }

    public var count: Int { servers.count }

    public subscript(index: Int) -> RedisServerProcess { servers[index] }

    public init(servers: [RedisServerProcess]) {
        self.servers = servers
    }

    /// Starts `count` servers one after the other. If one fails, those already started are stopped
    /// and the error is rethrown.
    public static func start(
        count: Int,
        _ configuration: RedisServerConfiguration = .init()
    ) throws -> RedisServerGroup {
        guard count >= 0 else {
            throw LocalRedisError(.invalidConfiguration, "a group cannot have \(count) servers")
        }
        var started: [RedisServerProcess] = []
        do {
            for _ in 0..<count {
                started.append(try RedisServerProcess.start(configuration))
            }
        } catch {
            for server in started { server.stop() }
            throw error
        }
        return RedisServerGroup(servers: started)
    }

    /// Stops every server (see `RedisServerProcess.stop()`). Idempotent.
    public func stopAll() {
        for server in servers { server.stop() }
    }
}
