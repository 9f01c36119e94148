import Foundation
import LocalRedis
import MultiRedlock
import MultiRedlockTesting
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

extension Failover {
    /// The `redlock` tool under faults: clients contending while servers crash and hang (scenario 12),
    /// a client really stopped past its validity (scenario 9 with SIGSTOP), and bad input (exit 64).
    @Suite struct Contention {
        /// Scenario 12: 4 `redlock run` clients × 15 read–sleep–write increments of one counter file,
        /// while one random server at a time crashes (then restarts, with its AOF) or hangs (then
        /// resumes). The counter must be exactly 60 and no two recorded holds may overlap.
        @Test func clientsContendWhileServersCrashAndHang() async throws {
            let group = try await RedisServerGroup.start(count: 3, RedisServerConfiguration(appendOnly: true))
            defer { group.stopInBackground() }
            var configuration = CounterContention.Configuration()
            configuration.workers = 4
            configuration.iterations = 15
            let descriptors = openDescriptorCount()
            let sockets = group.ports.map { socketsConnected(toPort: $0) }
            let outcome = try await CounterContention.run(group, configuration)
            // Exact: this process's sockets to the three servers come back to what they were (closes
            // may lag a moment). Other suites running beside this one use other ports.
            try await waitUntil(timeout: .seconds(5), "sockets to the servers back to \(sockets)") {
                group.ports.map { socketsConnected(toPort: $0) } == sockets
            }
            // The whole process: other suites move this by dozens; a leak of the two pipes each of the
            // 60 `redlock` runs gets adds 120.
            #expect(
                openDescriptorCount() - descriptors < 100,
                "descriptors leak: \(descriptors) → \(openDescriptorCount())")
            let expected = configuration.workers * configuration.iterations!
            #expect(outcome.failures.isEmpty, "\(outcome.failures.prefix(5))")
            #expect(outcome.counter == expected, "counter \(outcome.counter), expected \(expected)")
            #expect(outcome.holds.count == expected)
            #expect(
                outcome.violations.isEmpty,
                "\(outcome.violations.count) overlaps, e.g. \(outcome.violations.prefix(2).map { "\($0.0) / \($0.1)" })"
            )
            #expect(!outcome.faults.isEmpty, "no fault was injected")
            print(
                "scenario 12: \(configuration.workers) clients × \(configuration.iterations!) runs in "
                    + "\(outcome.elapsed): counter \(outcome.counter), \(outcome.holds.count) holds, "
                    + "\(outcome.violations.count) overlaps, \(outcome.faults.count) faults: "
                    + outcome.faults.joined(separator: "; "))
        }

        /// Scenario 9 with a real SIGSTOP: `redlock run` holds a lock (ttl 1.5 s) for a long command
        /// and is stopped; its renewals stop, the keys expire, another client takes the resource.
        /// After SIGCONT the tool finds the lock lost, terminates COMMAND and exits 124, and the new
        /// holder's keys are untouched.
        @Test func stoppedClientLosesItsLockAndStopsItsCommand() async throws {
            let group = try await RedisServerGroup.start(count: 3)
            defer { group.stopInBackground() }
            let directory = try makeScratchDirectory(prefix: "sigstop")
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let resource = Fault.resource()
            let pidFile = directory + "/pid"
            let child = try startRedlock(
                [
                    "--servers", FaultCLI.servers(group.ports), "--ttl", "1500", "--node-timeout", "250",
                    "run", resource,
                    "--", "/bin/sh", "-c",
                    "echo $$ > \"$PIDFILE.tmp\" && mv \"$PIDFILE.tmp\" \"$PIDFILE\" && exec sleep 30",
                ],
                environment: ["PIDFILE": pidFile])
            try await waitUntil(timeout: .seconds(10), "COMMAND started") {
                FileManager.default.fileExists(atPath: pidFile)
            }
            let commandPID = pid_t(
                try String(contentsOfFile: pidFile, encoding: .utf8).trimmingCharacters(
                    in: .whitespacesAndNewlines)
            )!
            let heldValue = try #require(try await Fault.get(group[0], resource))

            #expect(kill(child.pid, SIGSTOP) == 0)
            try await waitUntil(timeout: .seconds(2), "the tool is stopped") {
                Self.processState(child.pid) == "T"
            }
            // Its renewals stop: the keys expire on every server.
            try await waitUntil(timeout: .seconds(5), "the stopped client's keys expired") {
                var left = 0
                for server in group.servers where try await Fault.exists(server, resource) { left += 1 }
                return left == 0
            }
            let other = try await Fault.connectedRedlock(group.ports, Fault.options(id: "B"))
            let lockB = try await other.lock(resource, ttl: .seconds(20))
            #expect(lockB.value != heldValue)

            #expect(kill(child.pid, SIGCONT) == 0)
            let result = await child.outcome(timeout: .seconds(15))
            #expect(result.status == 124, "exit \(result.status ?? -1): \(result.stderr)")
            // COMMAND was terminated (it would have slept 30 s).
            #expect(kill(commandPID, 0) != 0 || Self.processState(commandPID) == "Z", "COMMAND still runs")
            #expect(result.elapsed < .seconds(25))
            for server in group.servers {
                #expect(
                    try await Fault.get(server, resource) == lockB.value, "the new holder's key is untouched")
                let pttl = Int(try await server.cli("PTTL", resource)) ?? 0
                #expect(pttl > 15_000, "and its ttl too: \(pttl)")
            }
            #expect(try await other.release(lockB) == 3)
            await other.close()
            print(
                "scenario 9 (SIGSTOP): redlock run exited \(result.status ?? -1) after SIGCONT; B's lock untouched"
            )
        }

        /// The FaultCLI part of the bad-input matrix: usage errors exit 64 before any I/O (no key is set);
        /// unusual but legal resources work; unreachable servers and wrong passwords exit 69 without
        /// printing the password.
        @Test func badInputThroughTheCLI() async throws {
            _ = try BuiltExecutable.require("redlock")
            let group = try await RedisServerGroup.start(count: 3)
            defer { group.stopInBackground() }
            let servers = FaultCLI.servers(group.ports)
            let secret = "S3cret-\(UInt32.random(in: 0...UInt32.max))"
            let port = group.ports[0]
            let usage: [(String, [String])] = [
                ("empty resource", ["--servers", servers, "acquire", ""]),
                ("ttl 0", ["--servers", servers, "--ttl", "0", "acquire", "r"]),
                ("negative ttl", ["--servers", servers, "--ttl", "-5", "acquire", "r"]),
                ("ttl below the drift", ["--servers", servers, "--ttl", "100", "acquire", "r"]),
                ("ttl 10^15 ms", ["--servers", servers, "--ttl", "1000000000000000", "acquire", "r"]),
                (
                    "ttl beyond Int",
                    ["--servers", servers, "--ttl", "99999999999999999999999", "acquire", "r"]
                ),
                ("ttl not a number", ["--servers", servers, "--ttl", "ten", "acquire", "r"]),
                ("empty server list", ["--servers", "", "acquire", "r"]),
                ("empty entry", ["--servers", "\(servers),", "acquire", "r"]),
                ("duplicate servers", ["--servers", "127.0.0.1:\(port),127.0.0.1:\(port)", "acquire", "r"]),
                (
                    "duplicate spelled apart",
                    ["--servers", "LOCALHOST:\(port),localhost:\(port)", "acquire", "r"]
                ),
                ("port 0", ["--servers", "127.0.0.1:0", "acquire", "r"]),
                ("port 70000", ["--servers", "127.0.0.1:70000", "acquire", "r"]),
                ("malformed URL", ["--servers", "redis://:\(secret)@host:99999", "acquire", "r"]),
                ("unknown scheme", ["--servers", "http://127.0.0.1:\(port)", "acquire", "r"]),
                ("no port digits", ["--servers", "127.0.0.1:abc", "acquire", "r"]),
                ("node timeout 0", ["--servers", servers, "--node-timeout", "0", "acquire", "r"]),
                ("negative retries", ["--servers", servers, "--retries", "-1", "acquire", "r"]),
                (
                    "retries and wait",
                    ["--servers", servers, "--retries", "1", "--wait", "5", "acquire", "r"]
                ),
                ("empty id", ["--servers", servers, "--id", "", "acquire", "r"]),
                ("unknown option", ["--servers", servers, "--frobnicate", "acquire", "r"]),
                ("no subcommand", ["--servers", servers]),
                ("run without COMMAND", ["--servers", servers, "run", "r"]),
                ("release without value", ["--servers", servers, "release", "r"]),
                ("release empty value", ["--servers", servers, "release", "r", ""]),
            ]
            for (label, arguments) in usage {
                let result = try await redlock(arguments, timeout: .seconds(20))
                #expect(
                    result.status == 64 && !result.signaled,
                    "\(label): exit \(result.status ?? -1): \(result.stderr)")
                #expect(!result.stderr.isEmpty, "\(label): no message")
                #expect(!result.stderr.contains(secret) && !result.stdout.contains(secret), "\(label)")
            }
            for server in group.servers {
                #expect(try await Fault.dbsize(server) == 0, "usage errors set nothing")
            }

            // Legal if unusual resources work, and release cleanly (argv caps one argument at 128 KiB).
            for resource in ["ключ-🔒-鍵", String(repeating: "r", count: 100_000), "with space\tand tab"] {
                let acquired = try await redlock(["--servers", servers, "acquire", resource])
                #expect(acquired.status == 0, "\(resource.prefix(20)): \(acquired.stderr)")
                let described: Comment =
                    "\(resource.prefix(20)): exit \(acquired.status ?? -1), stdout \(acquired.stdout.utf8.count) bytes: \(acquired.stdout.prefix(200)); stderr: \(acquired.stderr.prefix(500))"
                let value = try #require(Self.jsonString("value", in: acquired.stdout), described)
                // The exact bytes are the key on a majority (the tool exits once a quorum granted).
                var holding = 0
                for server in group.servers where try await Fault.get(server, resource) == value {
                    holding += 1
                }
                #expect(holding >= 2, "\(resource.prefix(20)): held on \(holding) servers")
                let released = try await redlock([
                    "--servers", servers, "release", resource, value,
                ])
                #expect(released.status == 0, "\(released.stderr)")
                for server in group.servers {
                    #expect(try await Fault.dbsize(server) == 0)
                }
            }

            // Unknown hosts: not enough servers answer → 69, in bounded time.
            let unknown = try await redlock(
                [
                    "--servers", "no-such-host-1.invalid,127.0.0.1:\(port),no-such-host-2.invalid",
                    "--retries", "1",
                    "--node-timeout", "250", "acquire", "r",
                ], timeout: .seconds(20))
            #expect(unknown.status == 69, "exit \(unknown.status ?? -1): \(unknown.stderr)")
            #expect(unknown.elapsed < .seconds(10))

            // A wrong password → 69, the password printed nowhere.
            let guarded = try await RedisServerGroup.start(
                count: 3, RedisServerConfiguration(password: "right-\(secret)"))
            defer { guarded.stopInBackground() }
            let wrong = try await redlock(
                ["--servers", FaultCLI.servers(guarded.ports), "acquire", "r"],
                environment: ["REDLOCK_PASSWORD": secret])
            #expect(wrong.status == 69, "exit \(wrong.status ?? -1): \(wrong.stderr)")
            #expect(!wrong.stderr.contains(secret) && !wrong.stdout.contains(secret))
            #expect(wrong.stderr.lowercased().contains("auth"), "\(wrong.stderr)")
            let inURL = try await redlock(
                [
                    "--servers",
                    guarded.ports.map { "redis://:\(secret)@127.0.0.1:\($0)" }.joined(separator: ","),
                    "acquire", "r",
                ])
            #expect(inURL.status == 69, "exit \(inURL.status ?? -1): \(inURL.stderr)")
            #expect(!inURL.stderr.contains(secret) && !inURL.stdout.contains(secret))
            for server in guarded.servers {
                #expect(try await Fault.dbsize(server, password: "right-\(secret)") == 0)
            }
            print(
                "bad input (CLI): \(usage.count) usage errors exit 64; unknown hosts and wrong passwords exit 69"
            )
        }

        static func jsonString(_ key: String, in text: String) -> String? {
            guard let line = text.split(separator: "\n").first,
                let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            else { return nil }
            return object[key] as? String
        }

        static func processState(_ pid: pid_t) -> Character? {
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { return nil }
            return stat[stat.index(close, offsetBy: 2)...].first
        }
    }
}
