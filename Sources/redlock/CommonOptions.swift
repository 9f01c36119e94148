import ArgumentParser
import Foundation
import JSONText
import MultiRedlock

/// The options every subcommand takes.
struct CommonOptions: ParsableArguments {
    @Option(
        name: .long,
        help: ArgumentHelp(
            "Comma-separated Redis masters: host, host:port, [::1]:port, redis://[user:password@]host[:port][/db],"
                + " unix:/path/to.sock. (env: REDLOCK_SERVERS; default: 127.0.0.1:6379)",
            valueName: "list"))
    var servers: String?

    @Option(
        help: ArgumentHelp(
            "How long the servers keep the lock. (env: REDLOCK_TTL; default: 10s)", valueName: "duration"),
        transform: DurationParsing.option)
    var ttl: Int?

    @Option(
        help: ArgumentHelp(
            "Retries after a failed attempt (0: one attempt only). (env: REDLOCK_RETRIES; default: 3)"))
    var retries: Int?

    @Option(
        name: .customLong("retry-wait"),
        help: ArgumentHelp(
            "Longest wait between attempts; each wait is random in 0...duration."
                + " (env: REDLOCK_RETRY_WAIT; default: 100ms)",
            valueName: "duration"),
        transform: DurationParsing.option)
    var retryWait: Int?

    @Option(
        help: ArgumentHelp(
            "Clock-drift allowance subtracted from the validity (plus 1% of the ttl)."
                + " (env: REDLOCK_DRIFT; default: 100ms)",
            valueName: "duration"),
        transform: DurationParsing.option)
    var drift: Int?

    @Option(
        name: .customLong("node-timeout"),
        help: ArgumentHelp(
            "How long one server may take to answer. (env: REDLOCK_NODE_TIMEOUT; default: 100ms)",
            valueName: "duration"),
        transform: DurationParsing.option)
    var nodeTimeout: Int?

    @Option(
        help: ArgumentHelp(
            "Identifies this client in lock values (<id>_<ms since epoch>_<32 hex>)."
                + " (env: REDLOCK_ID; default: the host name)"))
    var id: String?

    @Option(
        help: ArgumentHelp(
            "Keep retrying until this much time has passed, instead of --retries. (env: REDLOCK_WAIT)",
            valueName: "duration"),
        transform: DurationParsing.option)
    var wait: Int?

    @Flag(help: "Report each attempt (and each renewal) on standard error. (env: REDLOCK_VERBOSE)")
    var verbose = false

    @Flag(
        help: ArgumentHelp(
            "Issue a fencing token with the lock: \"fencing_token\" in the JSON, $REDLOCK_FENCING_TOKEN"
                + " for run's COMMAND. Strictly increases with each grant of the resource. (env: REDLOCK_FENCING)"
        ))
    var fencing = false

    func validate() throws {
        _ = try resolve(environment: Environment.current)
    }

    /// The options checked and turned into what the tool works with.
    /// - Throws: `ValidationError` naming the problem.
    func resolve(environment: [String: String]) throws -> Settings {
        // The command line, else the REDLOCK_* variable, else the default (EnvironmentOptions).
        typealias Variable = EnvironmentOptions
        let ttl = try Variable.duration(self.ttl, Variable.ttl, in: environment) ?? 10_000
        var retries = self.retries
        var wait = self.wait
        if retries == nil && wait == nil {
            retries = try Variable.count(nil, Variable.retries, in: environment)
            wait = try Variable.duration(nil, Variable.wait, in: environment)
        }
        let retryWait = try Variable.duration(self.retryWait, Variable.retryWait, in: environment)
        let drift = try Variable.duration(self.drift, Variable.drift, in: environment)
        let nodeTimeout = try Variable.duration(self.nodeTimeout, Variable.nodeTimeout, in: environment)
        let id = Variable.string(self.id, Variable.id, in: environment)
        let verbose = try Variable.flag(self.verbose, Variable.verbose, in: environment)
        let fencing = try Variable.flag(self.fencing, Variable.fencing, in: environment)
        func positive(_ value: Int?, _ name: String, allowZero: Bool) throws {
            guard let value else { return }
            if value < 0 || (!allowZero && value == 0) {
                throw ValidationError(
                    "\(name) must be \(allowZero ? "zero or more" : "positive") (got \(value))")
            }
        }
        try positive(ttl, "--ttl", allowZero: false)
        try positive(retries, "--retries", allowZero: true)
        try positive(retryWait, "--retry-wait", allowZero: true)
        try positive(drift, "--drift", allowZero: true)
        try positive(nodeTimeout, "--node-timeout", allowZero: false)
        try positive(wait, "--wait", allowZero: true)
        if retries != nil && wait != nil {
            throw ValidationError(
                "--retries and --wait exclude each other: give one of them (or one of $REDLOCK_RETRIES and"
                    + " $REDLOCK_WAIT)")
        }
        if let id, id.isEmpty || id.contains(where: { $0.isWhitespace }) {
            throw ValidationError("--id must be non-empty, without whitespace (got \(JSON.quoted(id)))")
        }
        // Every value is at most ten years, so that no duration arithmetic can overflow.
        let limit = 315_360_000_000
        for (name, value) in [
            ("--ttl", ttl), ("--retry-wait", retryWait), ("--drift", drift), ("--node-timeout", nodeTimeout),
            ("--wait", wait),
        ] {
            if let value, value > limit {
                throw ValidationError("\(name) \(value) is too large (at most \(limit) ms)")
            }
        }

        var options = RedlockOptions(id: id)
        options.retries = retries ?? 3
        if verbose {
            // A line per acquire attempt, on standard error.
            options.onAttempt = { AttemptLog.print($0) }
        }
        if let retryWait { options.retryWait = .milliseconds(retryWait) }
        if let drift { options.drift = .milliseconds(drift) }
        if let nodeTimeout { options.nodeTimeout = .milliseconds(nodeTimeout) }
        options.fencingTokens = fencing
        let ttlDuration = Duration.milliseconds(ttl)
        let allowance = options.driftAllowance(for: ttlDuration)
        guard ttlDuration > allowance else {
            throw ValidationError(
                "--ttl \(ttl) ms must be greater than the drift allowance \(allowance.millisecondsText)"
                    + " (--drift \(options.drift.millisecondsText) + 1% of the ttl): no validity would be left"
            )
        }
        let servers = try ServerList.parse(
            option: self.servers, environment: environment)
        return Settings(
            servers: servers, options: options, ttl: ttlDuration, wait: wait.map { .milliseconds($0) },
            verbose: verbose)
    }
}

/// The checked options.
struct Settings: Sendable {
    var servers: [RedisServer]
    /// Options for `Redlock`: retries (ignored with `wait`), retry wait, drift, node timeout, fencing.
    var options: RedlockOptions
    var ttl: Duration
    /// Keep trying until this much time has passed, instead of `retries`.
    var wait: Duration?
    var verbose: Bool
}

enum ServerList {
    static let defaultList = "127.0.0.1:6379"

    /// The servers from `--servers`, else `$REDLOCK_SERVERS`, else 127.0.0.1:6379, with
    /// `$REDLOCK_PASSWORD` given to each that has no password of its own.
    static func parse(option: String?, environment: [String: String]) throws -> [RedisServer] {
        let source: String
        let list: String
        if let option {
            (source, list) = ("--servers", option)
        } else if let variable = environment["REDLOCK_SERVERS"],
            !variable.allSatisfy({ $0.isWhitespace })
        {
            (source, list) = ("$REDLOCK_SERVERS", variable)
        } else {
            (source, list) = ("the default server list", defaultList)
        }
        let password = environment["REDLOCK_PASSWORD"].flatMap { $0.isEmpty ? nil : $0 }
        var servers: [RedisServer] = []
        // A comma inside a password's user info does not split the entry (RedisServer.splitList).
        let entries = RedisServer.splitList(list)
        for (index, entry) in entries.enumerated() {
            guard !entry.allSatisfy({ $0.isWhitespace }) else {
                throw ValidationError(
                    "\(source): address \(index + 1) of \(entries.count) is empty")
            }
            do {
                var server = try RedisServer(parsing: entry)
                if server.password == nil, let password {
                    server.password = password
                }
                servers.append(server)
            } catch {
                throw ValidationError("\(source): \(error.description)")
            }
        }
        var seen: [String: Int] = [:]
        for (index, server) in servers.enumerated() {
            let key =
                server.unixSocketPath.map { "unix:" + $0 } ?? "\(server.host.lowercased()):\(server.port)"
            if let first = seen[key] {
                throw ValidationError(
                    "\(source): addresses \(first + 1) and \(index + 1) name the same server"
                        + " \(server.description); each must be a distinct master")
            }
            seen[key] = index
        }
        return servers
    }
}

enum Environment {
    static var current: [String: String] { ProcessInfo.processInfo.environment }
}
