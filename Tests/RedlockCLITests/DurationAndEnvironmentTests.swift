import ArgumentParser
import Foundation
import LocalRedis
import TestSupport
import Testing

@testable import redlock

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

// Issue 19, item 7: the tool as people use flock(1) and timeout(1): durations with units, an
// environment variable for every option, `run --signal` and `--kill-after`, a version.
@Suite("redlock durations, environment variables and run's signal")
struct DurationParsingTests {
    @Test(arguments: [
        ("500ms", 500), ("10s", 10_000), ("2m", 120_000), ("1h", 3_600_000), ("1.5s", 1500),
        ("0.25m", 15_000), ("250", 250), (" 7S ", 7000), ("0", 0), ("10MS", 10),
    ])
    func durationsWithUnits(text: String, milliseconds: Int) throws {
        #expect(try DurationParsing.milliseconds(text) == milliseconds)
    }

    @Test(arguments: [
        ("", "empty"), ("5x", "unknown unit \"x\""), ("-1s", "negative"), ("1.5", "whole number"),
        ("0.5ms", "whole number"), (".5s", "expected a number"), ("1..2s", "expected a number"),
        ("s", "expected a number"), ("99999999999999999999h", "too large"),
        ("9223372036854775807h", "too large"),
    ])
    func badDurationsSayWhatIsWrong(text: String, mentions: String) {
        #expect {
            try DurationParsing.milliseconds(text)
        } throws: { error in
            "\(error)".contains(mentions) && "\(error)".contains("\"\(text)\"")
        }
    }

    @Test(arguments: [
        ("TERM", SIGTERM), ("SIGTERM", SIGTERM), ("usr1", SIGUSR1), ("SigHup", SIGHUP), ("9", SIGKILL),
        ("KILL", SIGKILL), ("INT", SIGINT),
    ])
    func signalsByNameOrNumber(text: String, number: Int32) throws {
        #expect(try SignalParsing.signal(text) == number)
    }

    @Test(arguments: ["FOO", "0", "65", "", "SIG"])
    func badSignals(text: String) {
        #expect(throws: SignalParsingError.self) { try SignalParsing.signal(text) }
    }

    /// Every option has a variable; the command line wins over it.
    @Test func everyOptionHasAnEnvironmentVariable() throws {
        let environment = [
            "REDLOCK_TTL": "30s", "REDLOCK_RETRY_WAIT": "250ms", "REDLOCK_DRIFT": "50",
            "REDLOCK_NODE_TIMEOUT": "1.5s", "REDLOCK_ID": "from-env", "REDLOCK_WAIT": "2m",
            "REDLOCK_VERBOSE": "yes", "REDLOCK_FENCING": "1", "REDLOCK_SERVERS": "10.0.0.1,10.0.0.2:7000",
        ]
        let fromEnvironment = try CommonOptions.parse([]).resolve(environment: environment)
        #expect(fromEnvironment.ttl == .seconds(30))
        #expect(fromEnvironment.options.retryWait == .milliseconds(250))
        #expect(fromEnvironment.options.drift == .milliseconds(50))
        #expect(fromEnvironment.options.nodeTimeout == .milliseconds(1500))
        #expect(fromEnvironment.options.id == "from-env")
        #expect(fromEnvironment.wait == .seconds(120))
        #expect(fromEnvironment.verbose)
        #expect(fromEnvironment.options.fencingTokens)
        #expect(fromEnvironment.servers.map(\.port) == [6379, 7000])

        let given = try CommonOptions.parse([
            "--ttl", "20s", "--retry-wait", "1s", "--drift", "10ms", "--node-timeout", "300",
            "--id", "given", "--retries", "5",
        ]).resolve(environment: environment)
        #expect(given.ttl == .seconds(20))
        #expect(given.options.retryWait == .seconds(1))
        #expect(given.options.drift == .milliseconds(10))
        #expect(given.options.nodeTimeout == .milliseconds(300))
        #expect(given.options.id == "given")
        // --retries on the command line sets the retry policy: $REDLOCK_WAIT no longer applies.
        #expect(given.options.retries == 5)
        #expect(given.wait == nil)

        let retries = try CommonOptions.parse([]).resolve(environment: ["REDLOCK_RETRIES": "7"])
        #expect(retries.options.retries == 7)
        let defaults = try CommonOptions.parse([]).resolve(environment: [:])
        #expect(defaults.ttl == .seconds(10))
        #expect(defaults.options.retries == 3)
        #expect(!defaults.verbose && !defaults.options.fencingTokens)
        let off = try CommonOptions.parse([]).resolve(environment: ["REDLOCK_VERBOSE": "off"])
        #expect(!off.verbose)
    }

    @Test(arguments: [
        ("REDLOCK_TTL", "ten", "$REDLOCK_TTL: \"ten\" is not a duration"),
        ("REDLOCK_RETRIES", "many", "$REDLOCK_RETRIES: \"many\" is not a whole number"),
        ("REDLOCK_RETRY_WAIT", "1y", "$REDLOCK_RETRY_WAIT"),
        ("REDLOCK_DRIFT", "-5", "$REDLOCK_DRIFT"),
        ("REDLOCK_NODE_TIMEOUT", "0", "--node-timeout must be positive"),
        ("REDLOCK_WAIT", "x", "$REDLOCK_WAIT"),
        ("REDLOCK_VERBOSE", "perhaps", "$REDLOCK_VERBOSE: \"perhaps\" is not a yes or no"),
        ("REDLOCK_FENCING", "2", "$REDLOCK_FENCING"),
    ])
    func badVariablesAreUsageErrorsNamingThem(name: String, value: String, mentions: String) throws {
        #expect {
            try CommonOptions.parse([]).resolve(environment: [name: value])
        } throws: { error in
            "\(error)".contains(mentions)
        }
    }

    @Test func bothRetriesAndWaitInTheEnvironmentExcludeEachOther() throws {
        #expect {
            try CommonOptions.parse([]).resolve(environment: ["REDLOCK_RETRIES": "1", "REDLOCK_WAIT": "1s"])
        } throws: { error in
            "\(error)".contains("$REDLOCK_RETRIES and $REDLOCK_WAIT")
        }
    }

    @Test func runsSignalAndKillAfterFromOptionsOrEnvironment() throws {
        let defaults = try #require(
            try RedlockCommand.parseAsRoot(["run", "r", "--", "true"]) as? Run)
        #expect(try defaults.termination(environment: [:]) == (SIGTERM, .seconds(2)))
        let given = try #require(
            try RedlockCommand.parseAsRoot([
                "run", "r", "--signal", "HUP", "--kill-after", "1m", "--", "true",
            ])
                as? Run)
        #expect(try given.termination(environment: [:]) == (SIGHUP, .seconds(60)))
        let environment = ["REDLOCK_SIGNAL": "SIGUSR1", "REDLOCK_KILL_AFTER": "750ms"]
        #expect(try defaults.termination(environment: environment) == (SIGUSR1, .milliseconds(750)))
        #expect(try given.termination(environment: environment) == (SIGHUP, .seconds(60)))
        #expect(throws: ValidationError.self) {
            try defaults.termination(environment: ["REDLOCK_SIGNAL": "NOPE"])
        }
    }
}

/// The same, through the binary against real servers; each test on an executor of its own, as the
/// tool's other end-to-end tests (see `RedlockCLITests`).
@Suite("redlock durations and signals, end to end", .serialized, .ownExecutor)
struct DurationAndSignalCLITests {
    @Test func ttlWithAUnitReachesTheServers() async throws {
        let servers = try await Servers.start()
        defer { servers.stopInBackground() }

        let outcome = try await redlock(["--servers", servers.list, "--ttl", "30s", "acquire", "unit"])
        #expect(outcome.status == 0, "\(outcome)")
        #expect(try outcome.json()["ttl_ms"] as? Int == 30_000, "\(outcome)")
        // The keys' PTTL shows 30 s, not the 30 ms a unitless reading would give nor the 10 s default.
        let pttls = try await servers.pttls(of: "unit")
        #expect(pttls.filter { $0 > 20_000 && $0 <= 30_000 }.count >= 2, "\(pttls)")

        let fromEnvironment = try await redlock(
            ["acquire", "unit-env"], environment: ["REDLOCK_SERVERS": servers.list, "REDLOCK_TTL": "2m"])
        #expect(fromEnvironment.status == 0, "\(fromEnvironment)")
        #expect(try fromEnvironment.json()["ttl_ms"] as? Int == 120_000, "\(fromEnvironment)")

        let badVariable = try await redlock(
            ["acquire", "unit-env"], environment: ["REDLOCK_SERVERS": servers.list, "REDLOCK_TTL": "2 weeks"])
        #expect(badVariable.status == 64, "\(badVariable)")
        #expect(badVariable.stderr.contains("$REDLOCK_TTL"), "\(badVariable)")
    }

    /// `--version` prints the library's version, and CHANGELOG.md's newest entry is that version.
    @Test func versionPrintsTheVersionTheChangelogDescribes() async throws {
        let outcome = try await redlock(["--version"])
        #expect(outcome.status == 0, "\(outcome)")
        let printed = outcome.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(printed.split(separator: ".").count == 3 && printed.allSatisfy { $0.isNumber || $0 == "." })
        // <package>/Tests/RedlockCLITests/this file → <package>/CHANGELOG.md
        let package = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let changelog = try String(
            contentsOf: package.appendingPathComponent("CHANGELOG.md"), encoding: .utf8)
        let newest = try #require(
            changelog.split(separator: "\n").first {
                $0.hasPrefix("## [") && !$0.hasPrefix("## [Unreleased]")
            })
        #expect(
            newest.hasPrefix("## [\(printed)]"),
            "CHANGELOG.md's newest entry is \(newest), --version says \(printed)")
    }

    @Test func helpDocumentsTheVariablesDurationsAndCompletion() async throws {
        let outcome = try await redlock(["--help"])
        #expect(outcome.status == 0, "\(outcome)")
        for name in [
            "REDLOCK_SERVERS", "REDLOCK_PASSWORD", "REDLOCK_TTL", "REDLOCK_RETRIES", "REDLOCK_RETRY_WAIT",
            "REDLOCK_DRIFT", "REDLOCK_NODE_TIMEOUT", "REDLOCK_WAIT", "REDLOCK_ID", "REDLOCK_VERBOSE",
            "REDLOCK_FENCING", "REDLOCK_SIGNAL", "REDLOCK_KILL_AFTER", "500ms",
            "--generate-completion-script",
        ] {
            #expect(outcome.stdout.contains(name), "--help lacks \(name)")
        }
        let run = try await redlock(["run", "--help"])
        #expect(run.stdout.contains("--signal") && run.stdout.contains("--kill-after"), "\(run)")
        let completion = try await redlock(["--generate-completion-script", "bash"])
        #expect(completion.status == 0, "\(completion)")
        #expect(completion.stdout.contains("--kill-after"), "\(completion)")
    }

    /// timeout(1)'s `--signal` and `--kill-after`: when the lock is being lost, COMMAND gets the signal
    /// asked for up to the time asked for before the validity ends, and SIGKILL at its end.
    @Test func runSendsTheChosenSignalThenSIGKILLAfterTheChosenTime() async throws {
        let servers = try await Servers.start()
        defer { servers.stopInBackground() }  // stopping resumes a paused server first

        // Ignores SIGTERM (the default signal), reports SIGUSR1 and goes on running.
        let script = #"trap '' TERM; trap 'echo got-USR1' USR1; echo ready; while :; do sleep 0.05; done"#
        let process = try startRedlock(
            [
                "--servers", servers.list, "--ttl", "1s", "run", "sig", "--signal", "USR1", "--", "sh", "-c",
                script,
            ],
            environment: ["REDLOCK_KILL_AFTER": "700ms"])
        #expect(await process.waitForOutput("ready\n"), "\(process.stderr)")
        for index in 0..<2 {
            #expect(await servers[index].pause())
            #expect(servers[index].isPaused)
        }
        #expect(await process.wait(timeout: .seconds(30)) == 124, "\(process.stderr)")
        #expect(process.stdout.contains("got-USR1"), "stdout: \(process.stdout) stderr: \(process.stderr)")
        #expect(process.stderr.contains("sending SIGUSR1"), "\(process.stderr)")
        #expect(
            process.stderr.contains(
                "at the end of the validity (SIGUSR1 was sent up to 700 ms before): sending SIGKILL"),
            "\(process.stderr)")
    }
}
