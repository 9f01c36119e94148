import Foundation
import LocalRedis
import MultiRedlock
import MultiRedlockTesting
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Every count and duration the public API takes, at its extremes (zero, negative, one nanosecond,
/// `Int.max`, `.seconds(Int64.max)`, just past a documented limit): each call either works or fails
/// with a typed ``RedlockError`` (`invalidArgument` naming the option; for an accepted but tiny
/// timeout against a real server, the typed failure the timeout causes), never a trap (issue 12,
/// item 2).
///
/// Each case runs in a child process (an exit test), so a trap fails that case alone and the run
/// names every value that traps. The Redlock options run on in-memory nodes (the algorithm's
/// arithmetic); the connection options on a real redis-server this process started (the
/// connection's arithmetic: deadlines, backoff).
@Suite struct ExtremeValueTests {
    /// What a case must end in.
    enum Outcome: Equatable, CustomStringConvertible {
        /// The call returned (a lock, a renewed lock, the body's value).
        case works
        /// `invalidArgument` whose message names the option.
        case refused(String)
        /// A typed error of this kind (e.g. `taken` when the resource was held all along).
        case fails(RedlockError.Kind)
        /// A typed ``RedisConnectionError`` (the Hiredis layer's own API).
        case connectionError

        var description: String {
            switch self {
            case .works: "works"
            case .refused(let option): "invalidArgument naming \(option)"
            case .fails(let kind): "fails with \(kind.rawValue)"
            case .connectionError: "a RedisConnectionError"
            }
        }
    }

    typealias Body = @Sendable (_ port: Int) async throws -> Void

    /// The password of the server a case runs against. The cases run in a child process, which has a
    /// `RedisServerConfiguration.defaultPassword` of its own: the test passes the parent's in.
    @TaskLocal static var serverPassword: String?

    struct Case: Sendable {
        /// The outcomes that count as handled; more than one only where timing decides between them
        /// (an accepted one-nanosecond timeout against a real server).
        var expected: [Outcome]
        /// Whether the case needs a real server (its port is the body's argument).
        var needsServer: Bool
        var body: Body
    }

    static let defaults = RedlockOptions(id: "extreme", retries: 0, retryWait: .milliseconds(1))

    static func options(_ change: (inout RedlockOptions) -> Void) -> RedlockOptions {
        var options = defaults
        change(&options)
        return options
    }

    static func connectionOptions(_ change: (inout RedisConnectionOptions) -> Void) -> RedlockOptions {
        options {
            var connection = RedisConnectionOptions(connectTimeout: .seconds(2), commandTimeout: .seconds(2))
            change(&connection)
            $0.connection = connection
            $0.nodeTimeout = .seconds(2)
        }
    }

    /// A Redlock on three in-memory nodes; with `taken`, another owner holds "r" on all of them.
    /// After `operation`, no node holds anything of this client's.
    static func onMocks(
        _ options: RedlockOptions, taken: Bool = false, _ operation: (Redlock) async throws -> Void
    ) async throws {
        let nodes = (0..<3).map { MockRedlockNode(name: "node\($0)") }
        if taken { for node in nodes { node.set(key: "r", value: "someone-else", ttl: .seconds(60)) } }
        let redlock = try Redlock(nodes: nodes, options: options)
        do {
            try await operation(redlock)
        } catch {
            await redlock.close()
            try requireNothingLeft(nodes, taken: taken)
            throw error
        }
        await redlock.close()
        try requireNothingLeft(nodes, taken: taken)
    }

    static func requireNothingLeft(_ nodes: [MockRedlockNode], taken: Bool) throws {
        for node in nodes {
            let left = node.keys.filter { node.value(of: $0) != "someone-else" }
            guard left.isEmpty else { throw Mismatch("\(node.name) still holds \(left)") }
        }
    }

    /// A lock on a free resource, released at once.
    static func lockAndRelease(_ redlock: Redlock, ttl: Duration = .seconds(10)) async throws {
        let lock = try await redlock.lock("r", ttl: ttl)
        _ = try await redlock.release(lock)
    }

    /// A Redlock on the real server at `port` (one node), used for one lock and closed.
    static func onServer(_ port: Int, _ options: RedlockOptions) async throws {
        let redlock = try Redlock(
            servers: [
                RedisServer(host: "127.0.0.1", port: port, password: serverPassword)
            ], options: options)
        do {
            try await lockAndRelease(redlock)
        } catch {
            await redlock.close()
            throw error
        }
        await redlock.close()
    }

    struct Mismatch: Error, CustomStringConvertible {
        var description: String
        init(_ description: String) { self.description = description }
    }

    static let hundredYears = Duration.seconds(100 * 365 * 24 * 3600)
    static let huge = Duration.seconds(Int64.max)
    /// Just past the largest whole-nanosecond count an Int64 holds (the retry wait's random draw).
    static let pastInt64Nanoseconds = Duration.seconds(9_223_372_036) + .milliseconds(999)

    static let cases: [String: Case] = {
        var cases: [String: Case] = [:]
        func add(_ label: String, _ expected: Outcome..., body: @escaping Body) {
            let needsServer = label.hasPrefix("connection.") || label.hasPrefix("RedisConnection")
            cases[label] = Case(expected: expected, needsServer: needsServer, body: body)
        }
        // retries: Int, counted as retries + 1 attempts.
        for (label, retries) in [
            ("Int.max", Int.max), ("1_000_001", 1_000_001), ("Int.min", Int.min), ("-1", -1),
        ] {
            add("options.retries \(label)", .refused("retries")) { _ in
                try await onMocks(options { $0.retries = retries }) { try await lockAndRelease($0) }
            }
        }
        add("options.retries 1_000_000", .works) { _ in
            try await onMocks(options { $0.retries = 1_000_000 }) { try await lockAndRelease($0) }
        }
        add("setRetry Int.max", .refused("retries")) { _ in
            try await onMocks(defaults) { redlock in
                try redlock.setRetry(Int.max, retryWait: .zero)
                try await lockAndRelease(redlock)
            }
        }
        add("setRetry 1_000_000 then withLock", .works) { _ in
            try await onMocks(defaults) { redlock in
                try redlock.setRetry(1_000_000, retryWait: .zero)
                _ = try await redlock.withLock("r", ttl: .seconds(10)) { _ in 1 }
            }
        }
        for (label, wait) in [("Int64.max s", huge), ("past Int64.max ns", pastInt64Nanoseconds)] {
            add("setRetry retryWait \(label)", .refused("retryWait")) { _ in
                try await onMocks(defaults, taken: true) { redlock in
                    try redlock.setRetry(1, retryWait: wait)
                    _ = try await redlock.lock("r", ttl: .seconds(10), waitingUpTo: .milliseconds(20))
                }
            }
        }
        // retryWait: drawn at random in 0...retryWait between attempts (here: on a taken resource).
        for (label, wait) in [
            ("Int64.max s", huge), ("past Int64.max ns", pastInt64Nanoseconds), ("-1 ns", .nanoseconds(-1)),
        ] {
            add("options.retryWait \(label)", .refused("retryWait")) { _ in
                try await onMocks(options { $0.retryWait = wait }, taken: true) {
                    _ = try await $0.lock("r", ttl: .seconds(10), waitingUpTo: .milliseconds(20))
                }
            }
        }
        for (label, wait) in [("100 years", hundredYears), ("1 ns", .nanoseconds(1)), ("zero", .zero)] {
            add("options.retryWait \(label)", .fails(.taken)) { _ in
                try await onMocks(options { $0.retryWait = wait }, taken: true) {
                    _ = try await $0.lock("r", ttl: .seconds(10), waitingUpTo: .milliseconds(20))
                }
            }
        }
        // drift and driftFactor: subtracted from every validity.
        for (label, drift) in [
            ("Int64.max s", huge), ("-1 ns", .nanoseconds(-1)), ("Int64.min s", .seconds(Int64.min)),
        ] {
            add("options.drift \(label)", .refused("drift")) { _ in
                try await onMocks(options { $0.drift = drift }) { try await lockAndRelease($0) }
            }
        }
        for (label, drift) in [("zero", Duration.zero), ("1 ns", .nanoseconds(1))] {
            add("options.drift \(label)", .works) { _ in
                try await onMocks(options { $0.drift = drift }) { try await lockAndRelease($0) }
            }
        }
        for (label, factor) in [
            ("nan", Double.nan), ("infinity", .infinity), ("-infinity", -.infinity),
            ("greatestFiniteMagnitude", .greatestFiniteMagnitude), ("1", 1),
            ("-tiny", -.leastNonzeroMagnitude),
        ] {
            add("options.driftFactor \(label)", .refused("driftFactor")) { _ in
                try await onMocks(options { $0.driftFactor = factor }) { try await lockAndRelease($0) }
            }
        }
        add("options.driftFactor 0.999", .works) { _ in
            // A ttl of 10 s keeps 10 ms − 100 ms … refused by the ttl check; 1000 s keeps ~900 ms.
            try await onMocks(options { $0.driftFactor = 0.999 }) {
                try await lockAndRelease($0, ttl: .seconds(1000))
            }
        }
        // nodeTimeout: each node command's deadline.
        for (label, timeout) in [
            ("Int64.max s", huge), ("zero", .zero), ("-1 ns", .nanoseconds(-1)), ("1 ns", .nanoseconds(1)),
        ] {
            add("options.nodeTimeout \(label)", .refused("nodeTimeout")) { _ in
                try await onMocks(options { $0.nodeTimeout = timeout }) { try await lockAndRelease($0) }
            }
        }
        add("options.nodeTimeout 100 years", .works) { _ in
            try await onMocks(options { $0.nodeTimeout = hundredYears }) { try await lockAndRelease($0) }
        }
        // 1 ms is accepted; whether the answers come within it is timing (the timeout is strict, and
        // one answer in a loaded `make test` took longer): granted, or a typed timeout.
        add("options.nodeTimeout 1 ms", .works, .fails(.quorumUnavailable)) { _ in
            try await onMocks(options { $0.nodeTimeout = .milliseconds(1) }) { try await lockAndRelease($0) }
        }
        // maxHold: how long withLock keeps renewing.
        for (label, hold) in [("Int64.max s", huge), ("zero", .zero), ("-1 ns", .nanoseconds(-1))] {
            add("options.maxHold \(label)", .refused("maxHold")) { _ in
                try await onMocks(options { $0.maxHold = hold }) {
                    _ = try await $0.withLock("r", ttl: .seconds(10)) { _ in 1 }
                }
            }
        }
        for (label, hold) in [("100 years", hundredYears), ("1 ns", .nanoseconds(1))] {
            add("options.maxHold \(label)", .works) { _ in
                try await onMocks(options { $0.maxHold = hold }) {
                    _ = try await $0.withLock("r", ttl: .seconds(10)) { _ in 1 }
                }
            }
        }
        // ttl of lock, withLock and renew; the wait of lock(_:ttl:waitingUpTo:).
        let badTTLs: [(String, Duration)] = [
            ("Int64.max s", huge), ("Int64.max ms", .milliseconds(Int64.max)), ("zero", .zero),
            ("1 ns", .nanoseconds(1)), ("-1 ns", .nanoseconds(-1)), ("Int64.min s", .seconds(Int64.min)),
        ]
        for (label, ttl) in badTTLs {
            add("lock ttl \(label)", .refused("ttl")) { _ in
                try await onMocks(defaults) { try await lockAndRelease($0, ttl: ttl) }
            }
            add("withLock ttl \(label)", .refused("ttl")) { _ in
                try await onMocks(defaults) { _ = try await $0.withLock("r", ttl: ttl) { _ in 1 } }
            }
            add("renew ttl \(label)", .refused("ttl")) { _ in
                try await onMocks(defaults) { redlock in
                    let lock = try await redlock.lock("r", ttl: .seconds(10))
                    defer { redlock.unlock(lock.resource, value: lock.value) }
                    _ = try await redlock.renew(lock, ttl: ttl)
                }
            }
        }
        add("lock ttl 100 years", .works) { _ in
            try await onMocks(defaults) { try await lockAndRelease($0, ttl: hundredYears) }
        }
        add("renew ttl 100 years", .works) { _ in
            try await onMocks(defaults) { redlock in
                let lock = try await redlock.lock("r", ttl: .seconds(10))
                _ = try await redlock.release(try await redlock.renew(lock, ttl: hundredYears))
            }
        }
        add("lock waitingUpTo Int64.max s", .works) { _ in
            try await onMocks(defaults) { redlock in
                _ = try await redlock.release(
                    try await redlock.lock("r", ttl: .seconds(10), waitingUpTo: huge))
            }
        }
        add("lock waitingUpTo Int64.min s", .refused("wait")) { _ in
            try await onMocks(defaults) { redlock in
                _ = try await redlock.lock("r", ttl: .seconds(10), waitingUpTo: .seconds(Int64.min))
            }
        }
        add("lock waitingUpTo 1 ns, taken", .fails(.taken)) { _ in
            try await onMocks(defaults, taken: true) { redlock in
                _ = try await redlock.lock("r", ttl: .seconds(10), waitingUpTo: .nanoseconds(1))
            }
        }
        // The connection options, on a real server.
        let connectionCases: [(String, @Sendable (inout RedisConnectionOptions, Duration) -> Void)] = [
            ("connectTimeout", { $0.connectTimeout = $1 }), ("commandTimeout", { $0.commandTimeout = $1 }),
            ("reconnectInitialDelay", { $0.reconnectInitialDelay = $1 }),
            ("reconnectMaxDelay", { $0.reconnectMaxDelay = $1 }),
        ]
        for (name, set) in connectionCases {
            for (label, value) in [
                ("Int64.max s", huge), ("zero", .zero), ("-1 ms", .milliseconds(-1)),
                ("Int64.min s", .seconds(Int64.min)),
            ] {
                add("connection.\(name) \(label)", .refused(name)) { port in
                    try await onServer(port, connectionOptions { set(&$0, value) })
                }
            }
            add("connection.\(name) 100 years", .works) { port in
                try await onServer(port, connectionOptions { set(&$0, hundredYears) })
            }
        }
        // A tiny connect timeout may or may not let the handshake through: either way, typed.
        add("connection.connectTimeout 1 ns", .works, .fails(.quorumUnavailable)) { port in
            try await onServer(port, connectionOptions { $0.connectTimeout = .nanoseconds(1) })
        }
        add("connection.reconnectInitialDelay 1 ns", .works) { port in
            try await onServer(port, connectionOptions { $0.reconnectInitialDelay = .nanoseconds(1) })
        }
        // The Hiredis layer's own API: a connection's per-command timeout, given directly.
        for (label, timeout) in [
            ("-1 ms", Duration.milliseconds(-1)), ("Int64.min s", .seconds(Int64.min)), ("zero", .zero),
        ] {
            add("RedisConnection.send timeout \(label)", .connectionError) { port in
                let connection = try RedisConnection(
                    server: RedisServer(
                        host: "127.0.0.1", port: port, password: serverPassword),
                    options: RedisConnectionOptions(connectTimeout: .seconds(2)))
                defer { Task { await connection.close() } }
                _ = try await connection.send(["PING"], timeout: timeout)
            }
        }
        add("RedisConnection commandTimeout -1 ms", .connectionError) { port in
            let connection = try RedisConnection(
                server: RedisServer(
                    host: "127.0.0.1", port: port, password: serverPassword),
                options: RedisConnectionOptions(
                    connectTimeout: .seconds(2), commandTimeout: .milliseconds(-1)))
            defer { Task { await connection.close() } }
            _ = try await connection.send(["PING"])
        }
        return cases
    }()

    /// Runs the case named `label` and exits 0 when it ended as expected, 3 otherwise (a trap ends
    /// the process with a signal).
    static func runInChild(_ label: String, port: Int, password: String) async {
        guard let entry = cases[label] else {
            FileHandle.standardError.write(Data("no case \(label)\n".utf8))
            exit(3)
        }
        let outcome: Outcome
        let detail: String
        do {
            try await $serverPassword.withValue(password) { try await entry.body(port) }
            (outcome, detail) = (.works, "")
        } catch let error as RedlockError {
            if error.kind == .invalidArgument,
                case .refused(let option) = entry.expected.first, error.message.contains(option)
            {
                outcome = .refused(option)
            } else {
                outcome = error.kind == .invalidArgument ? .refused("?") : .fails(error.kind)
            }
            detail = "\(error)"
        } catch is RedisConnectionError {
            (outcome, detail) = (.connectionError, "")
        } catch {
            FileHandle.standardError.write(Data("\(label): untyped error \(error)\n".utf8))
            exit(3)
        }
        guard entry.expected.contains(outcome) else {
            FileHandle.standardError.write(
                Data("\(label): expected \(entry.expected), got \(outcome) \(detail)\n".utf8))
            exit(3)
        }
        FileHandle.standardError.write(Data("\(label): \(outcome) \(detail)\n".utf8))
        exit(0)
    }

    @Test(arguments: cases.keys.sorted())
    func extremeValueWorksOrIsRefused(_ label: String) async throws {
        // Only the connection cases get a server (the others ignore the port).
        let server = Self.cases[label]?.needsServer == true ? try await RedisServerProcess.start() : nil
        defer { server?.stopInBackground() }
        let port = server?.port ?? 0
        let result = await #expect(
            processExitsWith: .success, observing: [\.standardErrorContent], "\(label)"
        ) {
            [label, port = port as Int, password = RedisServerConfiguration.defaultPassword as String] in
            await ExtremeValueTests.runInChild(label, port: port, password: password)
        }
        let output = result.map { String(decoding: $0.standardErrorContent, as: UTF8.self) } ?? ""
        print(
            "extreme value: \(label): \(result.map { "\($0.exitStatus)" } ?? "no result") \(output.suffix(400))"
        )
    }
}
