import ArgumentParser
import JSONText
import MultiRedlock

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

struct RedlockCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "redlock",
        abstract: "A Redlock distributed lock over N independent Redis masters, for scripts and cron jobs.",
        usage: """
            redlock [options] acquire RESOURCE
              redlock [options] renew RESOURCE VALUE
              redlock [options] release RESOURCE VALUE
              redlock [options] run RESOURCE -- COMMAND [ARG...]
            """,
        discussion: """
            A lock is held when a majority (N/2+1) of the servers agreed. It is valid for the ttl minus \
            the time the servers took minus the drift allowance (--drift + 1% of the ttl). Standard \
            output carries JSON lines only, such as
              {"resource": "nightly", "value": "web1_1732...", "validity_ms": 9797, ...}
            and everything else goes to standard error.

            A password comes from the address (redis://:PASSWORD@host) or from $REDLOCK_PASSWORD, \
            which applies to every server without one. Prefer the variable: command lines are visible \
            to other users. A password is never printed. A comma in a password needs no escaping.

            EXIT STATUS
              0      success; run: COMMAND's own status
              1      renew, release: the lock is not held (expired, released, another's)
              64     usage error: bad option, malformed address, ttl not above the drift
              69     not enough servers answered (down, hung, wrong password)
              70     an error the tool did not expect (a bug: please report it)
              71     too few free file descriptors to start (raise ulimit -n)
              75     the resource is held by someone else (after the retries or --wait)
              124    run: the lock was lost while COMMAND ran; COMMAND was terminated
              126    run: COMMAND cannot be run (not executable)
              127    run: COMMAND was not found
              128+N  run: COMMAND was killed by signal N, or redlock got signal N first

            \(EnvironmentOptions.helpSection)

            \(completionNote)
            """,
        version: RedlockVersion.current,
        subcommands: [Acquire.self, Renew.self, Release.self, Run.self]
    )

    /// The options, given before or after the subcommand (but before `--` with `run`).
    @OptionGroup(title: "Options (every subcommand)") var options: CommonOptions

    func run() async throws {
        throw ValidationError("missing subcommand: acquire, renew, release or run")
    }
}

struct Acquire: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Acquire the lock and print it as one JSON line.",
        usage: "redlock [options] acquire RESOURCE",
        discussion: """
            The lock stays held until its ttl runs out, or until `redlock release RESOURCE VALUE` \
            (or `renew`) with the printed value. Exits 75 when someone else holds it after the retries \
            (or --wait), 69 when not enough servers answered.

            \(optionsNote)
            """)

    @ParentCommand var root: RedlockCommand
    var options: CommonOptions { root.options }

    @Argument(help: "The resource to lock; also the Redis key on every server.")
    var resource: String

    func run() async throws {
        let settings = try options.resolve(environment: Environment.current)
        try await Session.with(settings) { session in
            let lock = try await session.acquire(resource)
            Output.stdout(JSON.lock(lock).text)
        }
    }
}

struct Renew: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Extend a lock to a new --ttl and print the renewed lock as one JSON line.",
        usage: "redlock [options] renew RESOURCE VALUE",
        discussion: """
            Exits 1 when the lock is no longer held (expired, released, or another owner's), 69 when not \
            enough servers answered.

            \(optionsNote)
            """)

    @ParentCommand var root: RedlockCommand
    var options: CommonOptions { root.options }

    @Argument(help: "The locked resource.")
    var resource: String

    @Argument(help: "The lock's value, as `acquire` printed it.")
    var value: String

    func run() async throws {
        let settings = try options.resolve(environment: Environment.current)
        try await Session.with(settings) { session in
            try session.checkSignal()
            do throws(RedlockError) {
                let lock = try await session.redlock.renew(resource, value: value, ttl: settings.ttl)
                session.note("renew \(JSON.quoted(resource)): validity \(lock.validity.millisecondsText)")
                Output.stdout(JSON.lock(lock).text)
            } catch {
                throw ToolExit(error)
            }
        }
    }
}

struct Release: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Release a lock: compare-and-delete on every server.",
        usage: "redlock [options] release RESOURCE VALUE",
        discussion: """
            Prints {"resource": ..., "value": ..., "released": N}, N being how many servers held the lock \
            and deleted it. Exits 1 when no server held it, 69 when none released it and some did not answer.

            \(optionsNote)
            """)

    @ParentCommand var root: RedlockCommand
    var options: CommonOptions { root.options }

    @Argument(help: "The locked resource.")
    var resource: String

    @Argument(help: "The lock's value, as `acquire` printed it.")
    var value: String

    func run() async throws {
        let settings = try options.resolve(environment: Environment.current)
        guard !resource.isEmpty, !value.isEmpty else {
            throw ToolExit(ExitStatus.usage, "the resource and the value must not be empty")
        }
        try await Session.with(settings) { session in
            try session.checkSignal()
            let lock = Lock(
                resource: resource, value: value, validity: .zero, ttl: settings.ttl, validUntil: .now,
                attempts: 0, nodes: [])
            switch await session.release(lock) {
            case .success(let released):
                Output.stdout(
                    JSON.object([
                        ("resource", .string(resource)), ("value", .string(value)),
                        ("released", .int(released)),
                    ]).text)
            case .failure(let error):
                throw ToolExit(error)
            }
        }
    }
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run COMMAND while holding the lock.",
        usage: "redlock [options] run RESOURCE -- COMMAND [ARG...]",
        discussion: """
            Acquires the lock, starts COMMAND with REDLOCK_RESOURCE and REDLOCK_VALUE in its environment, \
            renews the lock every third of the ttl while COMMAND runs, releases it when COMMAND exits and \
            exits with COMMAND's status (128+N when a signal N killed it). If renewing keeps failing, or \
            the servers say the lock is no longer held, COMMAND gets SIGTERM (or --signal) --kill-after \
            (2s, at most a third of the validity) before the validity ends and SIGKILL at its end, so it \
            is gone before another client can hold the lock; redlock exits 124. SIGINT, SIGTERM and \
            SIGHUP are forwarded to COMMAND, and the \
            lock is released once it exits. Nothing is printed on standard output but COMMAND's own.

            COMMAND runs in a process group of its own, as with timeout(1): the signals go to that group, \
            so they also reach the programs a script started. In the foreground of a terminal, that group \
            gets the terminal while COMMAND runs.

            COMMAND's environment is redlock's without $REDLOCK_PASSWORD, and without $REDLOCK_SERVERS \
            when that holds a password: --pass-env passes them on.

            \(optionsNote)
            """)

    @ParentCommand var root: RedlockCommand
    var options: CommonOptions { root.options }

    @Argument(help: "The resource to lock.")
    var resource: String

    @Argument(parsing: .postTerminator, help: "The command to run, after --, and its arguments.")
    var command: [String] = []

    @Option(
        help: ArgumentHelp(
            "The signal COMMAND gets when the lock is lost: a name (TERM, INT, HUP, USR1, ...) or a number."
                + " (env: REDLOCK_SIGNAL; default: TERM)",
            valueName: "signal"),
        transform: SignalParsing.option)
    var signal: Int32?

    @Option(
        name: .customLong("kill-after"),
        help: ArgumentHelp(
            "How long before the validity ends COMMAND gets that signal (at most a third of the validity);"
                + " SIGKILL comes at the end of the validity."
                + " (env: REDLOCK_KILL_AFTER; default: 2s)",
            valueName: "duration"),
        transform: DurationParsing.option)
    var killAfter: Int?

    @Flag(
        name: .customLong("pass-env"),
        help: ArgumentHelp(
            "Give COMMAND $REDLOCK_PASSWORD and a $REDLOCK_SERVERS that holds passwords (both are removed"
                + " from its environment by default)."))
    var passEnvironment = false

    func validate() throws {
        guard !command.isEmpty else {
            throw ValidationError(
                "missing COMMAND: write it after --, as in `redlock run \(resource) -- make`")
        }
        _ = try termination(environment: Environment.current)
    }

    /// The signal for COMMAND when the lock is lost, and how long until SIGKILL: the options, else
    /// $REDLOCK_SIGNAL and $REDLOCK_KILL_AFTER, else SIGTERM and 2 s.
    func termination(environment: [String: String]) throws -> (signal: Int32, killAfter: Duration) {
        let signal = try EnvironmentOptions.signal(self.signal, EnvironmentOptions.signal, in: environment)
        let killAfter = try EnvironmentOptions.duration(
            self.killAfter, EnvironmentOptions.killAfter, in: environment)
        if let killAfter, killAfter > 315_360_000_000 {
            throw ValidationError("--kill-after \(killAfter) is too large (at most 315360000000 ms)")
        }
        return (signal ?? SIGTERM, killAfter.map { .milliseconds($0) } ?? Supervisor.killGrace)
    }

    func run() async throws {
        let settings = try options.resolve(environment: Environment.current)
        let termination = try termination(environment: Environment.current)
        let inherited = Child.openDescriptors()
        let status = try await Session.with(settings) { session in
            try await Supervisor(
                session: session, resource: resource, command: command, inheritedDescriptors: inherited,
                lossSignal: termination.signal, killAfter: termination.killAfter,
                passCredentials: passEnvironment
            ).run()
        }
        throw ToolExit(status)
    }
}

private let optionsNote = """
    The options (--servers, --ttl, --retries, --retry-wait, --drift, --node-timeout, --id, --wait, \
    --verbose, --fencing) go before or after the subcommand; each has a REDLOCK_* environment variable. \
    Durations: \(DurationParsing.helpNote). `redlock --help` describes them and the exit statuses.
    """

private let completionNote = """
    SHELL COMPLETION (bash, zsh or fish), e.g. for bash:
      redlock --generate-completion-script bash >/etc/bash_completion.d/redlock
    """

extension Session {
    /// Exits with 128 + the signal's number when a signal arrived before the operation was sent.
    func checkSignal() throws {
        if let signal = SignalCenter.shared.received { throw ToolExit(128 + signal) }
    }
}
