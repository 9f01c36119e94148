/// Something LocalRedis could not do. `description` says what failed and, where it helps, shows the
/// tail of the server's log.
public struct LocalRedisError: Error, Sendable, CustomStringConvertible, Equatable {
    public enum Kind: String, Sendable, Equatable, CaseIterable {
        /// redis-server is not installed (or not executable).
        case serverNotFound
        /// redis-cli is not installed (or not executable).
        case cliNotFound
        /// The configuration cannot be turned into a working redis.conf.
        case invalidConfiguration
        /// A directory or file could not be created, read or written.
        case fileSystem
        /// posix_spawn failed.
        case spawnFailed
        /// redis-server exited before it answered PING.
        case exitedBeforeReady
        /// redis-server kept running but did not answer PING in time.
        case notReady
        /// No usable port: every attempt collided with another listener.
        case portUnavailable
        /// A connection to the server could not be opened (see `errno`, e.g. ECONNREFUSED).
        case connectionFailed
        /// Sending to or reading from a connection failed.
        case connectionIO
        /// redis-cli exited with a non-zero status (including an error reply, thanks to `redis-cli -e`).
        case commandFailed
        /// A bounded wait ran out (e.g. redis-cli against a paused server).
        case timeout
        /// Another system call failed.
        case system
    }

    public var kind: Kind
    public var message: String
    /// The errno behind the failure, when there is one.
    public var errno: Int32?

    public init(_ kind: Kind, _ message: String, errno: Int32? = nil) {
        self.kind = kind
        self.message = message
        self.errno = errno
    }

    public var description: String {
        "LocalRedis: \(message)"
    }
}
