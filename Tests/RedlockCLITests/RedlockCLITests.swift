import Foundation
import LocalRedis
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

// The `redlock` binary, run as a child process against three real local redis-servers. Serialized:
// the machine has few cores, other suites run at the same time, and several tests measure timing.
/// Each test on an executor of its own (`.ownExecutor`): these tests time the tool's processes from
/// here, and on a cooperative pool held for 7 s (make test-pool-held) the times were read up to 7.7 s
/// late, and a holder's 1.5 s lock expired before the next process started.
@Suite("redlock command-line tool", .serialized, .ownExecutor)
struct RedlockCLITests {
    // MARK: - acquire, renew, release

    @Test func acquirePrintsTheLockAsJSONAndSetsTheKeyOnAMajority() async throws {
        let servers = try await Servers.start()
        defer { servers.stopInBackground() }

        let outcome = try await redlock(["--servers", servers.list, "acquire", "invoice-42"])
        #expect(outcome.status == 0, "\(outcome)")
        #expect(outcome.stderr.isEmpty, "\(outcome)")
        let lock = try outcome.json()
        #expect(lock["resource"] as? String == "invoice-42")
        let value = try #require(lock["value"] as? String)
        #expect(!value.isEmpty)
        let validity = try #require(lock["validity_ms"] as? Int)
        #expect(validity > 9000 && validity <= 10_000, "validity \(validity) ms for a 10 s ttl")
        #expect(lock["ttl_ms"] as? Int == 10_000)
        #expect((lock["nodes"] as? [String])?.count ?? 0 >= 2)
        // Field order as documented: resource, value, validity_ms first.
        #expect(outcome.stdout.hasPrefix("{\"resource\": \"invoice-42\", \"value\": "))

        let values = try await servers.values(of: "invoice-42")
        #expect(values.filter { $0 == value }.count >= 2, "\(values)")
        #expect(values.allSatisfy { $0 == nil || $0 == value }, "\(values)")
    }

    @Test func fencingTokensIncreaseAndReachTheCommand() async throws {
        let servers = try await Servers.start()
        defer { servers.stopInBackground() }
        var tokens: [Int] = []
        for _ in 0..<3 {
            let acquired = try await redlock(["--servers", servers.list, "--fencing", "acquire", "ledger"])
            #expect(acquired.status == 0, "\(acquired)")
            let lock = try acquired.json()
            tokens.append(try #require(lock["fencing_token"] as? Int))
            let value = try #require(lock["value"] as? String)
            let released = try await redlock(["--servers", servers.list, "release", "ledger", value])
            #expect(released.status == 0, "\(released)")
        }
        #expect(tokens == [1, 2, 3])
        let run = try await redlock([
            "--servers", servers.list, "--fencing", "run", "ledger", "--", "sh", "-c",
            "echo token=$REDLOCK_FENCING_TOKEN",
        ])
        #expect(run.status == 0, "\(run)")
        #expect(run.stdout.contains("token=4"), "\(run)")
        // Without --fencing: no token in the JSON.
        let plain = try await redlock(["--servers", servers.list, "acquire", "other"])
        #expect(!(try plain.json()).keys.contains("fencing_token"))
    }

    @Test func resourceNamesAreEscapedInTheJSON() async throws {
        let servers = try await Servers.start()
        defer { servers.stopInBackground() }

        let resource = "quote\" back\\slash tab\t é"
        let outcome = try await redlock(["--servers", servers.list, "acquire", resource])
        #expect(outcome.status == 0, "\(outcome)")
        #expect(try outcome.json()["resource"] as? String == resource)
    }

    @Test func renewExtendsTheKeysTTL() async throws {
        let servers = try await Servers.start()
        defer { servers.stopInBackground() }

        let acquired = try await redlock(["--servers", servers.list, "--ttl", "5000", "acquire", "job"])
        #expect(acquired.status == 0, "\(acquired)")
        let value = try #require(try acquired.json()["value"] as? String)
        #expect(try await servers.pttls(of: "job").allSatisfy { $0 <= 5000 })

        let renewed = try await redlock(["--servers", servers.list, "renew", "job", value, "--ttl", "60000"])
        #expect(renewed.status == 0, "\(renewed)")
        let lock = try renewed.json()
        #expect(lock["value"] as? String == value)
        #expect(lock["resource"] as? String == "job")
        #expect((lock["validity_ms"] as? Int ?? 0) > 50_000, "\(renewed)")
        let pttls = try await servers.pttls(of: "job")
        #expect(pttls.filter { $0 > 50_000 }.count >= 2, "PTTLs after renew: \(pttls)")
    }

    @Test func releaseRemovesTheKeyAndASecondReleaseExits1() async throws {
        let servers = try await Servers.start()
        defer { servers.stopInBackground() }

        let acquired = try await redlock(["--servers", servers.list, "acquire", "report"])
        let value = try #require(try acquired.json()["value"] as? String)

        let released = try await redlock(["--servers", servers.list, "release", "report", value])
        #expect(released.status == 0, "\(released)")
        let result = try released.json()
        #expect(result["resource"] as? String == "report")
        #expect((result["released"] as? Int ?? 0) >= 2, "\(released)")
        #expect(try await servers.values(of: "report") == [nil, nil, nil])

        let again = try await redlock(["--servers", servers.list, "release", "report", value])
        #expect(again.status == 1, "\(again)")
        #expect(again.stdout.isEmpty)
        #expect(again.stderr.contains("no node held the lock"), "\(again)")
    }

    @Test func releaseLeavesAnotherOwnersLockAlone() async throws {
        let servers = try await Servers.start()
        defer { servers.stopInBackground() }

        let acquired = try await redlock(["--servers", servers.list, "acquire", "shared"])
        let value = try #require(try acquired.json()["value"] as? String)
        // A patient node timeout: this is about "not held" (1), not about a slow server (69, seen
        // with the default 100 ms on a loaded machine).
        let other = try await redlock([
            "--servers", servers.list, "--node-timeout", "2s", "release", "shared", value + "-not-mine",
        ])
        #expect(other.status == 1, "\(other)")
        #expect(try await servers.values(of: "shared").filter { $0 == value }.count >= 2)
    }

    @Test func renewOfAnUnknownValueExits1() async throws {
        let servers = try await Servers.start()
        defer { servers.stopInBackground() }

        let outcome = try await redlock(["--servers", servers.list, "renew", "nothing", "no-such-value"])
        #expect(outcome.status == 1, "\(outcome)")
        #expect(outcome.stdout.isEmpty)
        #expect(outcome.stderr.contains("not held"), "\(outcome)")
        #expect(try await servers.values(of: "nothing") == [nil, nil, nil], "renew must not create the key")
    }

    @Test func aSecondAcquireOfAHeldResourceExits75() async throws {
        let servers = try await Servers.start()
        defer { servers.stopInBackground() }

        let first = try await redlock(["--servers", servers.list, "acquire", "deploy"])
        let value = try #require(try first.json()["value"] as? String)

        let second = try await redlock([
            "--servers", servers.list, "--retries", "1", "--verbose", "acquire", "deploy",
        ])
        #expect(second.status == 75, "\(second)")
        #expect(second.stdout.isEmpty)
        #expect(second.stderr.contains("held by someone else"), "\(second)")
        #expect(second.stderr.contains("2 attempts"), "\(second)")
        // --verbose reports each attempt, and the wait before the next one (none after the last).
        let attempts = second.stderr.split(separator: "\n").filter {
            $0.contains("acquire \"deploy\" attempt")
        }
        #expect(attempts.count == 2, "\(second)")
        #expect(attempts.first?.contains("attempt 1: taken") == true, "\(second)")
        #expect(attempts.first?.contains("; next attempt in ") == true, "\(second)")
        #expect(attempts.last?.contains("attempt 2: taken") == true, "\(second)")
        #expect(attempts.last?.contains("next attempt") == false, "\(second)")
        // The holder's lock is untouched.
        #expect(try await servers.values(of: "deploy").filter { $0 == value }.count >= 2)

        let waited = try await redlock(["--servers", servers.list, "--wait", "600", "acquire", "deploy"])
        #expect(waited.status == 75, "\(waited)")
        #expect(waited.elapsed >= .milliseconds(600), "--wait 600 gave up after \(waited.elapsed)")
        #expect(waited.stderr.contains("--wait"), "\(waited)")
    }

    @Test func waitAcquiresOnceTheHoldersLockExpires() async throws {
        let servers = try await Servers.start()
        defer { servers.stopInBackground() }

        let first = try await redlock(["--servers", servers.list, "--ttl", "1500", "acquire", "batch"])
        #expect(first.status == 0, "\(first)")
        let second = try await redlock([
            "--servers", servers.list, "--wait", "15000", "--retry-wait", "50", "acquire", "batch",
        ])
        #expect(second.status == 0, "\(second)")
        #expect(try second.json()["value"] as? String != (try first.json()["value"] as? String))
        #expect((try second.json()["attempts"] as? Int ?? 0) > 1, "\(second)")
    }

    /// With almost no free descriptors Dispatch traps or its timers never fire: the tool checks first
    /// and exits 71 (EX_OSERR) with a message instead of crashing or hanging.
    @Test func tooFewFileDescriptorsExits71() async throws {
        let servers = try await Servers.start(count: 1)
        defer { servers.stopInBackground() }
        for limit in [5, 12] {
            let shell = try Subprocess(
                "/bin/sh",
                [
                    "-c", "ulimit -n \(limit) && exec \"$0\" \"$@\"", try BuiltExecutable.require("redlock"),
                    "--servers", servers.list, "acquire", "fd-starved",
                ], environment: redlockEnvironment())
            let status = await shell.wait(timeout: .seconds(30))
            #expect(status == 71, "ulimit -n \(limit): \(status as Any) \(shell.stderr)")
            #expect(shell.stderr.contains("too few free file descriptors"), "\(shell.stderr)")
        }
        #expect(try await servers.values(of: "fd-starved") == [nil], "nothing was locked")
    }

    @Test func allServersDownExits69WithinTheNodeTimeouts() async throws {
        let servers = try await Servers.start()
        defer { servers.stopInBackground() }  // stopping resumes a paused server first
        let nodeTimeout = Duration.milliseconds(300)

        // Hung servers (SIGSTOP), not dead ones: a dead server refuses at once, a hung one is only
        // given up on when the node timeout passes. The servers must hang after the tool's
        // connections are up (else it only ever sees connect timeouts): the resource is held
        // elsewhere, so attempt 1 is refused at once, and the servers are stopped during the wait
        // after it (its length is in the --verbose line). A run whose wait was too short to stop them
        // in time is tried again. Attempt 2 then meets hung servers on live connections.
        var measured: (outcome: Subprocess.Outcome, attempt: Duration, exit: Duration, wait: Duration)?
        for run in 0..<5 where measured == nil {
            let resource = "down-\(run)"
            for index in 0..<3 {
                try await servers[index].cli("SET", resource, "someone-else", "PX", "60000")
            }
            let process = try startRedlock([
                "--servers", servers.list, "--node-timeout", "300", "--retries", "1", "--retry-wait", "1500",
                "--verbose", "acquire", resource,
            ])
            let wait = try #require(
                await Self.nextAttemptWait(process, attempt: 1, "taken"),
                "no refused first attempt: \(process.stderr)")
            guard wait >= .milliseconds(300) else {
                await process.wait()
                continue
            }
            for index in 0..<3 {
                #expect(await servers[index].pause())
                #expect(servers[index].isPaused)
            }
            let pausedAt = ContinuousClock.now
            // Attempt 2's line is printed when it is decided (before its release).
            let decided = await eventually(timeout: .seconds(30)) { process.stderr.contains("attempt 2:") }
            let attempt = pausedAt.duration(to: .now)
            #expect(decided, "\(process.stderr)")
            let status = await process.wait(timeout: .seconds(30))
            let exit = pausedAt.duration(to: .now) - attempt
            let outcome = Subprocess.Outcome(
                status: status, signaled: process.wasSignaled, stdout: process.stdout, stderr: process.stderr,
                elapsed: attempt + exit)
            measured = (outcome, attempt, exit, wait)
        }
        let (outcome, attempt, exit, wait) = try #require(measured, "the servers were never stopped in time")
        #expect(outcome.status == 69, "\(outcome)")
        #expect(outcome.stdout.isEmpty)
        #expect(outcome.stderr.contains("not enough nodes answered"), "\(outcome)")
        #expect(outcome.stderr.contains("2 attempts"), "\(outcome)")
        // The fault was met: attempt 2 ran into node timeouts.
        let second = outcome.stderr.split(separator: "\n").first { $0.contains("attempt 2:") }
        #expect(second?.contains("timeout") == true, "\(outcome)")
        // Timed from the stop, not from the process start. Attempt 2 is decided once attempt 1's
        // release (sent just before or after the stop: at most one node timeout), the reported wait
        // and one node timeout are over; the tool exits once attempt 2's release has had its node
        // timeout. 300 ms each for a loaded machine (and the 5 ms polling); a hung node waited on
        // for longer than the node timeout (the connect or command timeout, 1 s and more, or
        // several node timeouts) does not fit.
        print(
            "redlock: all servers hung: attempt 2 decided \(attempt) after the stop (wait \(wait), node "
                + "timeout \(nodeTimeout)), exit \(exit) later")
        #expect(attempt < wait + nodeTimeout * 2 + .milliseconds(300), "\(outcome)")
        #expect(exit < nodeTimeout + .milliseconds(300), "\(outcome)")

        // Still hung: renew and release fail the same way.
        let renew = try await redlock(["--servers", servers.list, "renew", "down", "v"])
        #expect(renew.status == 69, "\(renew)")
        let release = try await redlock(["--servers", servers.list, "release", "down", "v"])
        #expect(release.status == 69, "\(release)")
        for index in 0..<3 { #expect(await servers[index].resume()) }
    }

    /// The wait before attempt `attempt + 1` that `--verbose` reported after `attempt` (whose outcome
    /// starts with `outcome`); nil when no such line came within 20 s (or the process exited first).
    static func nextAttemptWait(_ process: Subprocess, attempt: Int, _ outcome: String) async -> Duration? {
        let pattern = "attempt \(attempt): \(outcome)"
        func parse() -> Duration? {
            guard
                let line = process.stderr.split(separator: "\n").first(where: { $0.contains(pattern) }),
                let range = line.range(of: "; next attempt in ")
            else { return nil }
            return Int(line[range.upperBound...].prefix { $0.isNumber }).map { .milliseconds($0) }
        }
        var wait: Duration?
        _ = await eventually(timeout: .seconds(20), every: .milliseconds(5)) {
            wait = parse()
            return wait != nil || process.hasExited
        }
        return wait ?? parse()
    }

    @Test func oneServerDownStillLocks() async throws {
        let servers = try await Servers.start()
        defer { servers.stopInBackground() }
        #expect(await servers[0].kill9())

        let outcome = try await redlock(["--servers", servers.list, "acquire", "resilient"])
        #expect(outcome.status == 0, "\(outcome)")
        #expect((try outcome.json()["nodes"] as? [String])?.count == 2)
    }

    // MARK: - Usage errors

    @Test(arguments: [
        (["--bogus", "acquire", "r"], "--bogus"),
        (["acquire", "r", "--ttl", "ten"], "ten"),
        (["acquire"], "<resource>"),
        (["frobnicate", "r"], "frobnicate"),
        (["--servers", "127.0.0.1:70000", "acquire", "r"], "port 70000 is out of range"),
        (["--servers", "127.0.0.1:7000,,127.0.0.1:7001", "acquire", "r"], "address 2 of 3 is empty"),
        (["--servers", "127.0.0.1:7000,127.0.0.1:7000", "acquire", "r"], "name the same server"),
        (["--ttl", "100", "--drift", "100", "acquire", "r"], "must be greater than the drift allowance"),
        (["--ttl", "0", "acquire", "r"], "--ttl must be positive"),
        (["--retries=-1", "acquire", "r"], "--retries must be zero or more"),
        (["--retries", "1", "--wait", "100", "acquire", "r"], "exclude each other"),
        (["run", "r"], "missing COMMAND"),
        (["run", "r", "--"], "missing COMMAND"),
        (["renew", "r"], "<value>"),
        ([], "missing subcommand"),
    ])
    func usageErrorsExit64WithAMessage(arguments: [String], mentions: String) async throws {
        let outcome = try await redlock(arguments)
        #expect(outcome.status == 64, "\(outcome)")
        #expect(outcome.stdout.isEmpty, "\(outcome)")
        #expect(outcome.stderr.contains(mentions), "\(outcome)")
    }

    @Test func helpListsTheSubcommandsAndExitStatuses() async throws {
        let outcome = try await redlock(["--help"])
        #expect(outcome.status == 0, "\(outcome)")
        for text in ["acquire", "renew", "release", "run", "--servers", "--wait", "REDLOCK_PASSWORD"] {
            #expect(outcome.stdout.contains(text), "help lacks \(text)")
        }
        for status in ["64", "69", "75", "124", "126", "127"] {
            #expect(outcome.stdout.contains("\n  \(status) "), "help lacks exit status \(status)")
        }
    }

    @Test func serversComeFromTheEnvironmentUnlessGiven() async throws {
        let servers = try await Servers.start()
        defer { servers.stopInBackground() }

        let outcome = try await redlock(
            ["acquire", "from-env"], environment: ["REDLOCK_SERVERS": servers.list])
        #expect(outcome.status == 0, "\(outcome)")
        let bad = try await redlock(
            ["acquire", "from-env"], environment: ["REDLOCK_SERVERS": "127.0.0.1:99999"])
        #expect(bad.status == 64, "\(bad)")
        #expect(bad.stderr.contains("$REDLOCK_SERVERS"), "\(bad)")
        // --servers wins over the variable.
        let given = try await redlock(
            ["--servers", servers.list, "acquire", "given"], environment: ["REDLOCK_SERVERS": "nonsense:0"])
        #expect(given.status == 0, "\(given)")
    }

    // MARK: - run

    @Test func runPassesTheCommandsExitStatusThrough() async throws {
        let servers = try await Servers.start()
        defer { servers.stopInBackground() }

        let seven = try await redlock(["--servers", servers.list, "run", "job", "--", "sh", "-c", "exit 7"])
        #expect(seven.status == 7, "\(seven)")
        #expect(seven.stdout.isEmpty && seven.stderr.isEmpty, "\(seven)")
        let zero = try await redlock(["--servers", servers.list, "run", "job", "--", "true"])
        #expect(zero.status == 0, "\(zero)")
        let killed = try await redlock([
            "--servers", servers.list, "run", "job", "--", "sh", "-c", "kill -KILL $$",
        ])
        #expect(killed.status == 128 + SIGKILL, "\(killed)")
        // Options after `--` belong to COMMAND.
        let echoed = try await redlock(["--servers", servers.list, "run", "job", "--", "echo", "--ttl", "5"])
        #expect(echoed.status == 0, "\(echoed)")
        #expect(echoed.stdout == "--ttl 5\n", "\(echoed)")
        #expect(try await servers.values(of: "job") == [nil, nil, nil], "released after each run")
    }

    @Test func runGivesTheCommandTheResourceAndValueWhileHoldingTheLock() async throws {
        let servers = try await Servers.start()
        defer { servers.stopInBackground() }
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let stopFile = scratch.file("stop")

        let script =
            #"echo "$REDLOCK_RESOURCE $REDLOCK_VALUE"; while [ ! -e "$STOP_FILE" ]; do sleep 0.05; done"#
        let process = try startRedlock(
            ["--servers", servers.list, "run", "nightly", "--", "sh", "-c", script],
            environment: ["STOP_FILE": stopFile])
        #expect(await process.waitForOutput("\n"), "no output: \(process.stderr)")
        let words = process.stdout.split(separator: " ").map { $0.trimmingCharacters(in: .newlines) }
        #expect(words.first == "nightly")
        let value = try #require(words.last)
        #expect(value.count > 32)
        let values = try await servers.values(of: "nightly")
        #expect(values.filter { $0 == value }.count >= 2, "servers hold \(values), the command got \(value)")

        _ = FileManager.default.createFile(atPath: stopFile, contents: nil)
        #expect(await process.wait() == 0, "\(process.stderr)")
        #expect(try await servers.values(of: "nightly") == [nil, nil, nil])
    }

    @Test func runRenewsTheLockWhileTheCommandRuns() async throws {
        let servers = try await Servers.start()
        defer { servers.stopInBackground() }

        let script = #"echo "$REDLOCK_VALUE"; sleep 3"#
        let process = try startRedlock([
            "--servers", servers.list, "--ttl", "1000", "run", "long", "--", "sh", "-c", script,
        ])
        #expect(await process.waitForOutput("\n"), "no output: \(process.stderr)")
        let value = process.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        // Well past the 1 s ttl: held only because it was renewed.
        try await Task.sleep(for: .milliseconds(2000))
        let values = try await servers.values(of: "long")
        #expect(values.filter { $0 == value }.count >= 2, "after 2 s of a 1 s ttl: \(values)")
        #expect(await process.wait() == 0, "\(process.stderr)")
        #expect(try await servers.values(of: "long") == [nil, nil, nil])
    }

    @Test func runExits126ForACommandThatIsNotExecutableAnd127ForAMissingOne() async throws {
        let servers = try await Servers.start()
        defer { servers.stopInBackground() }
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let file = scratch.file("not-executable")
        _ = FileManager.default.createFile(atPath: file, contents: Data("echo hi\n".utf8))
        chmod(file, 0o644)

        let notExecutable = try await redlock(["--servers", servers.list, "run", "x", "--", file])
        #expect(notExecutable.status == 126, "\(notExecutable)")
        #expect(notExecutable.stderr.contains(file), "\(notExecutable)")
        let missing = try await redlock([
            "--servers", servers.list, "run", "x", "--", "no-such-command-redlock-test",
        ])
        #expect(missing.status == 127, "\(missing)")
        #expect(missing.stderr.contains("not found"), "\(missing)")
        #expect(try await servers.values(of: "x") == [nil, nil, nil], "the lock is released")
    }

    @Test func runWhileTheResourceIsHeldExits75WithoutRunningTheCommand() async throws {
        let servers = try await Servers.start()
        defer { servers.stopInBackground() }
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let marker = scratch.file("ran")

        let held = try await redlock(["--servers", servers.list, "acquire", "busy"])
        #expect(held.status == 0)
        let outcome = try await redlock([
            "--servers", servers.list, "--retries", "0", "run", "busy", "--", "touch", marker,
        ])
        #expect(outcome.status == 75, "\(outcome)")
        #expect(!FileManager.default.fileExists(atPath: marker), "COMMAND ran without the lock")
    }

    @Test func runTerminatesTheCommandAndExits124WhenTheLockIsLost() async throws {
        let servers = try await Servers.start()
        defer { servers.stopInBackground() }  // stopping resumes a paused server first

        let process = try startRedlock([
            "--servers", servers.list, "--ttl", "1000", "run", "R", "--", "sleep", "30",
        ])
        let started = try await eventually(timeout: .seconds(20)) {
            guard !children(of: process.pid).isEmpty else { return false }
            return try await servers.values(of: "R").contains { $0 != nil }
        }
        #expect(started, "\(process.stderr)")
        let child = try #require(children(of: process.pid).first)

        // A majority frozen: renewals time out, the validity runs out.
        for index in 0..<2 {
            #expect(await servers[index].pause())
            #expect(servers[index].isPaused)
        }
        let pausedAt = ContinuousClock.now
        let status = await process.wait(timeout: .seconds(30))
        let elapsed = pausedAt.duration(to: .now)
        #expect(status == 124, "\(process.stderr)")
        #expect(elapsed < .seconds(6), "exited \(elapsed) after the pause")
        #expect(kill(child, 0) != 0, "the command (pid \(child)) still runs")
        #expect(process.stderr.contains("lost the lock"), "\(process.stderr)")
        for index in 0..<2 {
            #expect(await servers[index].resume())
        }
    }

    @Test func aCommandThatIgnoresSIGTERMGetsSIGKILLWhenTheLockIsLost() async throws {
        let servers = try await Servers.start()
        defer { servers.stopInBackground() }  // stopping resumes a paused server first

        let script = #"trap '' TERM; echo ready; while :; do sleep 0.05; done"#
        let process = try startRedlock([
            "--servers", servers.list, "--ttl", "1000", "run", "stubborn", "--", "sh", "-c", script,
        ])
        #expect(await process.waitForOutput("ready\n"), "\(process.stderr)")
        let child = try #require(children(of: process.pid).first, "\(process.stderr)")
        // Whatever happens below, the command does not outlive the test.
        defer { if kill(child, 0) == 0 { kill(child, SIGKILL) } }
        for index in 0..<2 {
            #expect(await servers[index].pause())
        }
        let pausedAt = ContinuousClock.now
        // The command really ignores SIGTERM: alive when the tool says it sent it, and after.
        let terminated = await eventually(timeout: .seconds(20)) {
            process.stderr.contains("sending SIGTERM")
        }
        #expect(terminated, "\(process.stderr)")
        #expect(kill(child, 0) == 0, "the command (pid \(child)) died of SIGTERM")
        #expect(await process.wait(timeout: .seconds(30)) == 124, "\(process.stderr)")
        let elapsed = pausedAt.duration(to: .now)
        // SIGTERM a third of the validity before its end, SIGKILL at its end: within the 1 s ttl of
        // the pause, not 2 s of grace past it (the margin is for a loaded machine).
        #expect(elapsed < .seconds(9), "exited \(elapsed) after the pause")
        #expect(
            process.stderr.contains(
                "at the end of the validity (SIGTERM was sent up to 2000 ms before): sending SIGKILL"),
            "\(process.stderr)")
        // The tool reaped it before exiting: the pid is gone (not a zombie left to init).
        let gone = await eventually(timeout: .seconds(5)) { kill(child, 0) != 0 }
        #expect(gone, "the command (pid \(child)) still runs after the tool exited")
    }

    @Test func sigtermIsForwardedToTheCommandAndTheLockReleased() async throws {
        let servers = try await Servers.start()
        defer { servers.stopInBackground() }

        let script = #"trap 'echo got-TERM; exit 3' TERM; echo ready; while :; do sleep 0.05; done"#
        let process = try startRedlock(["--servers", servers.list, "run", "svc", "--", "sh", "-c", script])
        #expect(await process.waitForOutput("ready\n"), "\(process.stderr)")
        #expect(try await servers.values(of: "svc").contains { $0 != nil })

        process.signal(SIGTERM)
        #expect(await process.wait() == 3, "\(process.stderr)")
        #expect(process.stdout.contains("got-TERM"))
        #expect(try await servers.values(of: "svc") == [nil, nil, nil], "the lock is released")

        // A command that does not handle SIGTERM dies of it: 128 + 15.
        let plain = try startRedlock([
            "--servers", servers.list, "run", "svc", "--", "sh", "-c", "echo ready; exec sleep 30",
        ])
        #expect(await plain.waitForOutput("ready\n"), "\(plain.stderr)")
        plain.signal(SIGTERM)
        #expect(await plain.wait() == 128 + SIGTERM, "\(plain.stderr)")
        #expect(try await servers.values(of: "svc") == [nil, nil, nil], "the lock is released")
    }

    @Test func sigtermWhileWaitingForTheLockExitsWithoutRunningTheCommand() async throws {
        let servers = try await Servers.start()
        defer { servers.stopInBackground() }
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let marker = scratch.file("ran")

        let holder = try await redlock(["--servers", servers.list, "acquire", "queue"])
        let value = try #require(try holder.json()["value"] as? String)
        let process = try startRedlock([
            "--servers", servers.list, "--wait", "20000", "--verbose", "run", "queue", "--", "touch", marker,
        ])
        // The tool is waiting for the lock (a first attempt was refused), so its handlers are in place:
        // a signal before that would end it with the same 143 without showing anything.
        let waiting = await eventually(timeout: .seconds(20)) { process.stderr.contains("attempt 1: taken") }
        #expect(waiting, "\(process.stderr)")
        process.signal(SIGTERM)
        let signalled = ContinuousClock.now
        #expect(await process.wait(timeout: .seconds(10)) == 128 + SIGTERM, "\(process.stderr)")
        let stopped = signalled.duration(to: .now)
        // The tool handled it and exited 143 itself (not killed by the signal), at once (not at the
        // end of the 20 s wait), saying why.
        let status = try #require(process.waitStatus)
        #expect(status & 0x7f == 0, "killed by signal \(status & 0x7f), not a handled exit")
        #expect(stopped < .seconds(5), "exited \(stopped) after SIGTERM")
        #expect(process.stderr.contains("interrupted by signal \(SIGTERM)"), "\(process.stderr)")
        #expect(!FileManager.default.fileExists(atPath: marker))
        // The holder's lock is untouched, and the waiter left nothing.
        #expect(try await servers.values(of: "queue") == [value, value, value])
    }

    // MARK: - Passwords

    @Test(arguments: [true, false])
    func thePasswordIsNeverShown(inURL: Bool) async throws {
        let password = "Pa55-w0rd-\(UInt32.random(in: 1000...9999))"
        let servers = try await Servers.start(count: 3, RedisServerConfiguration(password: password))
        defer { servers.stopInBackground() }
        let list =
            inURL
            ? servers.group.ports.map { "redis://:\(password)@127.0.0.1:\($0)" }.joined(separator: ",")
            : servers.list
        let environment = inURL ? [:] : ["REDLOCK_PASSWORD": password]
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let stopFile = scratch.file("stop")

        let script = #"echo started; while [ ! -e "$STOP_FILE" ]; do sleep 0.05; done"#
        let process = try startRedlock(
            ["--servers", list, "--verbose", "run", "secret", "--", "sh", "-c", script],
            environment: environment.merging(["STOP_FILE": stopFile]) { $1 })
        #expect(await process.waitForOutput("started\n"), "\(process.stderr)")
        let child = try #require(children(of: process.pid).first)
        let childCommandLine = try #require(commandLine(of: child))
        #expect(childCommandLine.contains("STOP_FILE"))
        #expect(!childCommandLine.contains(password), "child argv: \(childCommandLine)")
        // The tool also masks the password in its own argv once it has parsed it.
        let ownCommandLine = try #require(commandLine(of: process.pid))
        #expect(!ownCommandLine.contains(password), "redlock argv: \(ownCommandLine)")
        _ = FileManager.default.createFile(atPath: stopFile, contents: nil)
        #expect(await process.wait() == 0, "\(process.stderr)")
        #expect(process.stderr.contains("granted"), "--verbose output: \(process.stderr)")
        #expect(!process.stdout.contains(password) && !process.stderr.contains(password))

        // acquire and renew print the lock; a wrong password and a malformed address fail.
        let acquired = try await redlock(
            ["--servers", list, "--verbose", "acquire", "p"], environment: environment)
        #expect(acquired.status == 0, "\(acquired)")
        let value = try #require(try acquired.json()["value"] as? String)
        let renewed = try await redlock(
            ["--servers", list, "--verbose", "renew", "p", value], environment: environment)
        #expect(renewed.status == 0, "\(renewed)")
        // The wrong password: in the URL, or in REDLOCK_PASSWORD.
        let wrongList = servers.group.ports.map { "redis://:\(password)-wrong@127.0.0.1:\($0)" }
            .joined(separator: ",")
        let wrong = try await redlock(
            ["--servers", inURL ? wrongList : list, "--verbose", "acquire", "q"],
            environment: inURL ? [:] : ["REDLOCK_PASSWORD": password + "-wrong"])
        let malformed = try await redlock([
            "--servers", "redis://:\(password)@127.0.0.1:70000", "acquire", "q",
        ])
        #expect(malformed.status == 64, "\(malformed)")
        let misplaced = try await redlock(["acquire", "q", "redis://:\(password)@127.0.0.1:6379"])
        #expect(misplaced.status == 64, "\(misplaced)")
        for outcome in [acquired, renewed, wrong, malformed, misplaced] {
            #expect(!outcome.stdout.contains(password), "\(outcome)")
            #expect(!outcome.stderr.contains(password), "\(outcome)")
        }
        #expect(wrong.status == 69, "\(wrong)")
        #expect(wrong.stderr.contains("WRONGPASS"), "\(wrong)")
        #expect(
            try await servers.values(of: "q") == [nil, nil, nil], "nothing locked with the wrong password")
    }
}

/// A fresh directory for a test's files (see LocalRedis's `makeScratchDirectory`). The test removes
/// it with `remove()`.
struct ScratchDirectory {
    let path: String

    init() throws {
        path = try makeScratchDirectory(prefix: "redlock-cli")
    }

    /// The path of `name` in this directory (not created).
    func file(_ name: String) -> String {
        path + "/" + name
    }

    /// Removes the directory and everything in it.
    func remove() {
        try? FileManager.default.removeItem(atPath: path)
    }
}
