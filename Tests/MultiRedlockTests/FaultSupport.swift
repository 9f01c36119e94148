import Dispatch
import Foundation
import LocalRedis
import MultiRedlock
import MultiRedlockTesting
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

// Helpers for the failover, safety and soak suites (Failover*.swift, SoakTests.swift). Every wait is
// bounded; every server and socket is on 127.0.0.1.

enum Fault {
    // MARK: Options and clients

    /// Options for fault tests: a node timeout well under the ttls used, quick retries and a quick
    /// reconnect (the default backoff grows to 2 s, longer than these tests want to wait).
    static func options(
        id: String = "fault", retries: Int = 0, nodeTimeout: Duration = .milliseconds(250),
        retryWait: Duration = .milliseconds(20)
    ) -> RedlockOptions {
        RedlockOptions(
            id: id, retries: retries, retryWait: retryWait, nodeTimeout: nodeTimeout,
            connection: RedisConnectionOptions(
                connectTimeout: .milliseconds(500), commandTimeout: .seconds(2),
                reconnectInitialDelay: .milliseconds(10), reconnectMaxDelay: .milliseconds(200)))
    }

    static func address(_ port: Int, password: String? = RedisServerConfiguration.defaultPassword)
        -> RedisServer
    {
        RedisServer(host: "127.0.0.1", port: port, password: password)
    }

    static func redlock(_ ports: [Int], _ options: RedlockOptions = options()) throws -> Redlock {
        try Redlock(servers: ports.map { address($0) }, options: options)
    }

    /// A Redlock whose every node is connected (so a test starts from a known state).
    static func connectedRedlock(
        _ ports: [Int], _ options: RedlockOptions = options(), timeout: Duration = .seconds(10)
    ) async throws -> Redlock {
        try await connected(redlock(ports, options), timeout: timeout)
    }

    static func resource(_ name: String = #function) -> String {
        "fault-\(name.prefix { $0 != "(" })-\(UInt32.random(in: 0...UInt32.max))"
    }

    // MARK: Looking at servers

    /// `EXISTS key` through a fresh raw connection (so it works whatever the Redlock's connection
    /// does). Throws unless the server answers `:0` or `:1`: an error reply (NOAUTH, LOADING, BUSY)
    /// or no reply says nothing about the key, so it must not pass for "absent".
    static func exists(
        _ server: RedisServerProcess, _ key: String,
        password: String? = RedisServerConfiguration.defaultPassword
    ) async throws
        -> Bool
    {
        let reply = try await command(server.port, ["EXISTS", key], password: password)
        switch reply {
        case ":1": return true
        case ":0": return false
        default: throw FaultError("EXISTS \(key) on port \(server.port) answered \(reply ?? "(nil)")")
        }
    }

    /// `GET key`, nil when the key is absent.
    static func get(
        _ server: RedisServerProcess, _ key: String,
        password: String? = RedisServerConfiguration.defaultPassword
    ) async throws
        -> String?
    {
        try await command(server.port, ["GET", key], password: password)
    }

    /// How many keys the server holds.
    static func dbsize(
        _ server: RedisServerProcess, password: String? = RedisServerConfiguration.defaultPassword
    ) async throws -> Int {
        let reply = try await command(server.port, ["DBSIZE"], password: password)
        return Int(reply?.dropFirst() ?? "") ?? -1
    }

    /// `calls` of `cmdstat_<name>` in `INFO commandstats` (0 when the command never ran).
    static func commandCalls(
        _ server: RedisServerProcess, _ name: String,
        password: String? = RedisServerConfiguration.defaultPassword
    )
        async throws -> Int
    {
        let info = try await command(server.port, ["INFO", "commandstats"], password: password) ?? ""
        let prefix = "cmdstat_\(name.lowercased()):calls="
        guard let line = info.split(whereSeparator: \.isNewline).first(where: { $0.hasPrefix(prefix) }) else {
            return 0
        }
        return Int(line.dropFirst(prefix.count).prefix { $0.isNumber }) ?? -1
    }

    /// A field of `INFO` (e.g. `expired_keys`).
    static func info(
        _ server: RedisServerProcess, _ field: String,
        password: String? = RedisServerConfiguration.defaultPassword
    ) async throws
        -> String?
    {
        let info = try await command(server.port, ["INFO"], password: password) ?? ""
        let prefix = field + ":"
        return info.split(whereSeparator: \.isNewline).first { $0.hasPrefix(prefix) }
            .map { String($0.dropFirst(prefix.count)) }
    }

    /// Sends one command over a fresh raw connection (AUTH first when a password is given) and returns
    /// the reply as text: `+OK`, `-ERR …`, `:1`, the bulk string itself, nil for a null bulk string,
    /// or an array's elements joined by line breaks.
    static func command(
        _ port: Int, _ arguments: [String], password: String? = RedisServerConfiguration.defaultPassword,
        timeout: Duration = .seconds(3)
    )
        async throws -> String?
    {
        try await offPool {
            let connection = try RawRedisConnection(port: port, timeout: timeout)
            defer { connection.close() }
            if let password {
                try connection.send(arguments: ["AUTH", password], timeout: timeout)
                _ = try readReply(connection, timeout: timeout)
            }
            try connection.send(arguments: arguments, timeout: timeout)
            return try readReply(connection, timeout: timeout)
        }
    }

    /// Reads one RESP reply (see `command`).
    static func readReply(_ connection: RawRedisConnection, timeout: Duration) throws -> String? {
        guard let line = try connection.readLine(timeout: timeout) else {
            throw FaultError("no reply within \(timeout)")
        }
        switch line.first {
        case "$":
            guard let length = Int(line.dropFirst()), length >= 0 else { return nil }
            // A bulk string may span lines (INFO): read until `length` bytes are in; the line
            // break that ends it goes with the last line (an empty one for an empty string).
            var parts: [String] = []
            var received = 0
            repeat {
                guard let more = try connection.readLine(timeout: timeout) else {
                    throw FaultError("bulk string cut short")
                }
                if !parts.isEmpty { received += 2 }
                parts.append(more)
                received += more.utf8.count
            } while received < length
            return parts.joined(separator: "\r\n")
        case "*":
            guard let count = Int(line.dropFirst()), count >= 0 else { return nil }
            var elements: [String] = []
            for _ in 0..<count { elements.append(try readReply(connection, timeout: timeout) ?? "(nil)") }
            return elements.joined(separator: "\n")
        default:
            return line
        }
    }

    // MARK: Process state

    /// The failure of the node called `name` in an error's evidence, if it failed.
    static func failure(_ error: RedlockError, node name: String) -> NodeFailure? {
        guard let evidence = error.nodes.first(where: { $0.node == name }),
            case .failed(let failure) = evidence.outcome
        else { return nil }
        return failure
    }

    static func milliseconds(_ duration: Duration) -> Double {
        let (seconds, attoseconds) = duration.components
        return Double(seconds) * 1000 + Double(attoseconds) / 1e15
    }
}

struct FaultError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

// MARK: - A userspace TCP proxy

/// Forwards 127.0.0.1:`port` to 127.0.0.1:`targetPort`, byte for byte, on a thread of its own, with a
/// switch that drops every byte the server sends (``dropReplies``) while still forwarding what the
/// client sends: "the reply was lost after the write". Stands in for an iptables rule, which this
/// sandbox may not have.
final class TCPProxy: Sendable {
    struct Counters: Sendable, Equatable {
        var accepted = 0
        var toServer = 0
        var toClient = 0
        var dropped = 0
        var open = 0
    }

    /// The port clients connect to.
    let port: Int
    /// The server's port.
    let targetPort: Int
    private let listener: Int32
    private let state = Locked<(dropReplies: Bool, stop: Bool, counters: Counters)>(
        (false, false, Counters()))
    private let finished = DispatchSemaphore(value: 0)

    init(targetPort: Int) throws {
        self.targetPort = targetPort
        (listener, port) = try bindLoopbackSocket(listening: 64)
        let thread = Thread { [self] in run() }
        thread.name = "TCPProxy \(port)->\(targetPort)"
        thread.start()
    }

    deinit {
        stop()
    }

    /// While true, bytes from the server are read and thrown away; bytes from clients still go through.
    var dropReplies: Bool {
        get { state.withLock { $0.dropReplies } }
        set { state.withLock { $0.dropReplies = newValue } }
    }

    var counters: Counters { state.withLock { $0.counters } }

    /// Stops forwarding, closes every connection and the listener, and waits (at most 2 s) for the
    /// proxy's thread to end. Idempotent.
    func stop() {
        let first = state.withLock { state in
            defer { state.stop = true }
            return !state.stop
        }
        if first { _ = finished.wait(timeout: .now() + 2) }
    }

    private func run() {
        var pairs: [(client: Int32, server: Int32)] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        func closePair(_ index: Int) {
            close(pairs[index].client)
            close(pairs[index].server)
            pairs.remove(at: index)
        }
        while !state.withLock({ $0.stop }) {
            var fds = [pollfd(fd: listener, events: Int16(POLLIN), revents: 0)]
            for pair in pairs {
                fds.append(pollfd(fd: pair.client, events: Int16(POLLIN), revents: 0))
                fds.append(pollfd(fd: pair.server, events: Int16(POLLIN), revents: 0))
            }
            let ready = poll(&fds, nfds_t(fds.count), 20)
            if ready <= 0 { continue }
            if fds[0].revents != 0, let pair = acceptPair() {
                pairs.append(pair)
            }
            // Walk backwards so that closing a pair does not shift the ones still to visit.
            for index in stride(from: fds.count / 2 - 1, through: 0, by: -1) where index < pairs.count {
                let clientEvents = fds[1 + 2 * index].revents
                let serverEvents = fds[2 + 2 * index].revents
                var alive = true
                if clientEvents != 0 {
                    alive = forward(
                        from: pairs[index].client, to: pairs[index].server, &buffer, toServer: true)
                }
                if alive && serverEvents != 0 {
                    alive = forward(
                        from: pairs[index].server, to: pairs[index].client, &buffer, toServer: false)
                }
                if !alive { closePair(index) }
            }
            state.withLock { $0.counters.open = pairs.count }
        }
        while !pairs.isEmpty { closePair(pairs.count - 1) }
        close(listener)
        state.withLock { $0.counters.open = 0 }
        finished.signal()
    }

    private func acceptPair() -> (client: Int32, server: Int32)? {
        let client = accept(listener, nil, nil)
        guard client >= 0 else { return nil }
        _ = fcntl(client, F_SETFD, FD_CLOEXEC)
        let server = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(targetPort)).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(server, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
        guard server >= 0, connected else {
            if server >= 0 { close(server) }
            close(client)
            return nil
        }
        state.withLock { $0.counters.accepted += 1 }
        return (client, server)
    }

    /// Moves what is readable on `source` to `destination` (or drops it); false when either side is gone.
    private func forward(from source: Int32, to destination: Int32, _ buffer: inout [UInt8], toServer: Bool)
        -> Bool
    {
        let count = buffer.withUnsafeMutableBytes {
            recv(source, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT))
        }
        if count < 0 { return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR }
        if count == 0 { return false }
        let drop = !toServer && state.withLock { $0.dropReplies }
        if drop {
            state.withLock { $0.counters.dropped += count }
            return true
        }
        var sent = 0
        while sent < count {
            let written = buffer.withUnsafeBytes {
                send(destination, $0.baseAddress! + sent, count - sent, Int32(MSG_NOSIGNAL))
            }
            if written < 0 {
                if errno == EINTR { continue }
                return false
            }
            sent += written
        }
        state.withLock {
            if toServer { $0.counters.toServer += count } else { $0.counters.toClient += count }
        }
        return true
    }
}

// MARK: - The failover suites

/// Every failover and safety scenario on real redis-servers. The scenarios run one at a time (they
/// kill, pause and time servers; the machine is small and other suites run in parallel), each in a
/// nested suite of its own file: Crash, Hang, Proxy, ErrorReplies, Churn, Safety, BadInput, Contention.
@Suite(.serialized)
struct Failover {}

/// Things that happened during a scenario, recorded from any task (for the final checks and prints).
final class FaultTally<Entry: Sendable>: Sendable {
    private let storage = Locked<[Entry]>([])
    func append(_ entry: Entry) { storage.withLock { $0.append(entry) } }
    var entries: [Entry] { storage.withLock { $0 } }
    var count: Int { storage.withLock { $0.count } }
}

/// A count shared between tasks.
final class FaultCounter: Sendable {
    private let value = Locked(0)
    func increment() { value.withLock { $0 += 1 } }
    var count: Int { value.withLock { $0 } }
}

/// A flag set from one task and read from another.
final class FaultFlag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .releasing) }
    var isSet: Bool { value.load(ordering: .acquiring) }
}

extension Sequence {
    /// `map` with an async transform, one element after the other.
    func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var results: [T] = []
        for element in self { results.append(try await transform(element)) }
        return results
    }

    /// `allSatisfy` with an async predicate, one element after the other.
    func asyncAllSatisfy(_ predicate: (Element) async throws -> Bool) async rethrows -> Bool {
        for element in self where !(try await predicate(element)) { return false }
        return true
    }
}
