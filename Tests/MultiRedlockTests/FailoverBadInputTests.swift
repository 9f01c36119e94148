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
    /// The bad-input matrix through the API: never a crash, never a hang, never a key left behind;
    /// every refusal is a typed error.
    @Suite struct BadInput {
        /// Keys are binary safe and may be up to 512 MB in Redis: a 1 MiB name, a non-ASCII name and a
        /// name with NUL bytes lock, release and leave nothing.
        @Test(arguments: [
            ("huge", String(repeating: "r", count: 1 << 20)),
            ("non-ASCII", "ключ-🔒-鍵-e\u{301}-\u{202E}rtl"),
            ("NUL", "a\u{0}b\u{0}"),
            ("whitespace", " \r\n\t "),
        ])
        func unusualResourceNamesWork(label: String, resource: String) async throws {
            let group = try await RedisServerGroup.start(count: 3)
            defer { group.stopInBackground() }
            let redlock = try await Fault.connectedRedlock(
                group.ports, Fault.options(nodeTimeout: .seconds(2)))
            let lock = try await redlock.lock(resource, ttl: .seconds(10))
            #expect(lock.resource == resource)
            for server in group.servers {
                // The exact bytes are the key, not a truncated or re-encoded one.
                #expect(try await Fault.get(server, resource) == lock.value, "\(label)")
                #expect(try await Fault.dbsize(server) == 1)
            }
            if label == "NUL" {
                // "a" is another resource: it is free.
                let other = try await redlock.lock("a", ttl: .seconds(10))
                #expect(try await redlock.release(other) == 3)
            }
            let renewed = try await redlock.renew(lock, ttl: .seconds(20))
            // More than the first ttl could give: the renew's 20 s took effect. (Not "close to 20 s":
            // under AddressSanitizer on a loaded machine a renew took over a second.)
            #expect(renewed.validity > .seconds(10) && renewed.ttl == .seconds(20))
            #expect(try await redlock.release(renewed) == 3)
            for server in group.servers {
                #expect(try await Fault.dbsize(server) == 0, "\(label): nothing left")
            }
            await redlock.close()
        }

        @Test func emptyResourceAndBadTTLsAreRefusedBeforeAnyIO() async throws {
            let group = try await RedisServerGroup.start(count: 3)
            defer { group.stopInBackground() }
            let options = Fault.options()
            let redlock = try await Fault.connectedRedlock(group.ports, options)
            let tooSmall: [Duration] = [
                .zero, .milliseconds(-1), .seconds(-10), .microseconds(500), options.drift,
                options.driftAllowance(for: .milliseconds(101)) - .microseconds(1),
            ]
            for ttl in tooSmall {
                let error = try await #require(throws: RedlockError.self) {
                    try await redlock.lock("r", ttl: ttl)
                }
                #expect(error.kind == .invalidArgument, "ttl \(ttl): \(error)")
                #expect(error.attempts == 0)
                let renew = try await #require(throws: RedlockError.self) {
                    try await redlock.renew("r", value: "v", ttl: ttl)
                }
                #expect(renew.kind == .invalidArgument)
            }
            let empty = try await #require(throws: RedlockError.self) {
                try await redlock.lock("", ttl: .seconds(5))
            }
            #expect(empty.kind == .invalidArgument)
            let emptyValue = try await #require(throws: RedlockError.self) {
                try await redlock.renew("r", value: "", ttl: .seconds(5))
            }
            #expect(emptyValue.kind == .invalidArgument)
            redlock.unlock("", value: "v")
            redlock.unlock("r", value: "")
            for server in group.servers {
                #expect(try await Fault.dbsize(server) == 0)
            }
            await redlock.close()
        }

        /// A ttl of 10^12 s (10^15 ms) is legal for Redis, but the library caps ttls at 100 years: it
        /// is refused before any I/O with a typed error, and no node is asked.
        @Test func enormousTTLIsRefusedBeforeAnyIO() async throws {
            let group = try await RedisServerGroup.start(count: 3)
            defer { group.stopInBackground() }
            let redlock = try await Fault.connectedRedlock(group.ports)
            let resource = Fault.resource()
            let setsBefore = try await group.servers.asyncMap { try await Fault.commandCalls($0, "set") }
            let error = try await #require(throws: RedlockError.self) {
                try await redlock.lock(resource, ttl: .seconds(1_000_000_000_000))
            }
            #expect(error.kind == .invalidArgument, "\(error)")
            #expect(error.attempts == 0)
            #expect(
                try await group.servers.asyncMap { try await Fault.commandCalls($0, "set") } == setsBefore)
            print("bad input: ttl 10^12 s refused: \(error)")
            for server in group.servers {
                #expect(try await Fault.dbsize(server) == 0)
            }
            await redlock.close()
        }

        /// ttls beyond what Redis or the arithmetic accept must end in a typed error, never a trap.
        /// Run in child processes (exit tests): a trap there fails this test instead of the whole run.
        /// The servers belong to this process (a child that traps runs no clean-up); the children find
        /// their ports in a file named after this process's pid.
        @Test func ttlsBeyondWhatServersAcceptFailWithATypedError() async throws {
            let group = try await RedisServerGroup.start(count: 3)
            defer { group.stopInBackground() }
            let portsFile = try Self.exitTestPortsFile(for: getpid())
            try PrivateFiles.create(portsFile, contents: group.ports.map(String.init).joined(separator: ","))
            defer { unlink(portsFile) }

            // Int64.max ms: more than Redis accepts ("invalid expire time").
            let maxMilliseconds = await #expect(
                processExitsWith: .success, observing: [\.standardErrorContent]
            ) {
                try await BadInput.lockExpectingTypedError(ttl: .milliseconds(Int64.max))
            }
            // 10^16 s and Int64.max s: more milliseconds than an Int64 holds.
            let tenToTheSixteen = await #expect(
                processExitsWith: .success, observing: [\.standardErrorContent]
            ) {
                try await BadInput.lockExpectingTypedError(ttl: .seconds(10_000_000_000_000_000))
            }
            let maxSeconds = await #expect(processExitsWith: .success, observing: [\.standardErrorContent]) {
                try await BadInput.lockExpectingTypedError(ttl: .seconds(Int64.max))
            }
            for (label, result) in [
                ("Int64.max ms", maxMilliseconds), ("10^16 s", tenToTheSixteen), ("Int64.max s", maxSeconds),
            ] {
                if let result {
                    let output = String(decoding: result.standardErrorContent, as: UTF8.self)
                    print("bad input: ttl \(label): child exited normally: \(output.suffix(300))")
                } else {
                    print("bad input: ttl \(label): the child did not exit normally (see the issue above)")
                }
            }
            for server in group.servers {
                #expect(try await Fault.dbsize(server) == 0, "no key left behind")
            }
        }

        /// In a directory only this user can use (see `PrivateFiles.exitTestDirectory`), never a
        /// predictable name in the shared /tmp.
        static func exitTestPortsFile(
            for pid: pid_t, environment: [String: String] = ProcessInfo.processInfo.environment
        ) throws -> String {
            try PrivateFiles.exitTestDirectory(environment: environment) + "/fault-exit-test-ports-\(pid)"
        }

        /// In a child process: locks with `ttl` on the parent's servers and exits 0 if the outcome is a
        /// `RedlockError`, 3 otherwise (a grant included: it is released first); a trap ends it with a
        /// signal.
        static func lockExpectingTypedError(ttl: Duration) async throws {
            let text = try String(contentsOfFile: try exitTestPortsFile(for: getppid()), encoding: .utf8)
            let ports = text.split(separator: ",").compactMap { Int($0) }
            guard ports.count == 3 else {
                FileHandle.standardError.write(
                    Data("no ports in \((try? exitTestPortsFile(for: getppid())) ?? "?")\n".utf8))
                exit(3)
            }
            let redlock = try Redlock(
                servers: ports.map { Fault.address($0) }, options: Fault.options(nodeTimeout: .seconds(2)))
            do {
                let lock = try await redlock.lock("huge-ttl", ttl: ttl)
                FileHandle.standardError.write(Data("lock granted with validity \(lock.validity)\n".utf8))
                _ = try await redlock.release(lock)
                await redlock.close()
                exit(3)
            } catch let error as RedlockError {
                FileHandle.standardError.write(Data("typed error: \(error)\n".utf8))
            } catch {
                FileHandle.standardError.write(Data("untyped error: \(error)\n".utf8))
                exit(3)
            }
            await redlock.close()
        }

        @Test func badServerListsAreRefused() throws {
            func refused(_ servers: [RedisServer], sourceLocation: SourceLocation = #_sourceLocation) {
                #expect(sourceLocation: sourceLocation) {
                    try Redlock(servers: servers, options: Fault.options())
                } throws: { error in
                    (error as? RedlockError)?.kind == .invalidArgument
                }
            }
            refused([])
            refused([Fault.address(7000), Fault.address(7000)])
            refused([RedisServer(host: "LocalHost", port: 7000), RedisServer(host: "localhost", port: 7000)])
            // The same endpoint with other credentials is still the same node.
            refused([RedisServer(host: "h", port: 7000, password: "a"), RedisServer(host: "h", port: 7000)])
            for port in [0, -1, 65_536, 70_000] {
                refused([Fault.address(port)])
            }
            refused([RedisServer(host: "", port: 6379)])
            refused([RedisServer(host: "bad host", port: 6379)])
            refused([RedisServer(host: "a\u{0}b", port: 6379)])
        }

        @Test func malformedAddressesAreRefusedWithThePasswordMasked() throws {
            let secret = "S3cret-\(UInt32.random(in: 0...UInt32.max))"
            let addresses = [
                "", "   ", "redis://", "redis://:\(secret)@", "redis://:\(secret)@host:99999",
                "redis://:\(secret)@host:0", "redis://user:\(secret)@host:port", "http://host:6379",
                "rediss://:\(secret)@host:6379", "host:abc", "host:", "redis://host/notadb",
                "redis://host/-1", "unix:", "[::1", "redis://[::1:6379", "host:6379:7", "host\u{0}:6379",
                "redis://:\(secret)@ho st:6379",
            ]
            for address in addresses {
                do {
                    let server = try RedisServer(parsing: address)
                    Issue.record("\(String(reflecting: address)) parsed as \(server.debugDescription)")
                } catch {
                    #expect(!"\(error)".contains(secret), "\(error)")
                    #expect(!String(reflecting: error).contains(secret))
                }
            }
        }

        /// An unknown host: `lock` fails with `.quorumUnavailable` in bounded time, with the other
        /// nodes' keys released.
        @Test func unknownHostFailsWithoutHanging() async throws {
            let group = try await RedisServerGroup.start(count: 1)
            defer { group.stopInBackground() }
            let servers = [
                RedisServer(host: "no-such-host-1.invalid", port: 6379), Fault.address(group[0].port),
                RedisServer(host: "no-such-host-2.invalid", port: 6379),
            ]
            let redlock = try Redlock(servers: servers, options: Fault.options(retries: 1))
            let resource = Fault.resource()
            let started = ContinuousClock.now
            let error = try await #require(throws: RedlockError.self) {
                try await redlock.lock(resource, ttl: .seconds(10))
            }
            let elapsed = ContinuousClock.now - started
            #expect(error.kind == .quorumUnavailable, "\(error)")
            #expect(elapsed < .seconds(2), "\(elapsed)")
            let failure = Fault.failure(error, node: servers[0].description)
            #expect(failure != nil, "\(error)")
            try await waitUntil(timeout: .seconds(3), "the real node released") {
                try await Fault.dbsize(group[0]) == 0
            }
            print(
                "bad input: unknown hosts: \(error.kind) after \(elapsed): \(failure.map { "\($0)" } ?? "")")
            await redlock.close()
        }

        /// A wrong password: `lock` fails with evidence that authentication failed, and the password
        /// appears nowhere in the error.
        @Test func wrongPasswordFailsWithoutLeakingIt() async throws {
            let right = "Right-\(UInt32.random(in: 0...UInt32.max))"
            let wrong = "Wr0ng-\(UInt32.random(in: 0...UInt32.max))"
            let group = try await RedisServerGroup.start(count: 3, RedisServerConfiguration(password: right))
            defer { group.stopInBackground() }
            let servers = group.ports.map { Fault.address($0, password: wrong) }
            let redlock = try Redlock(servers: servers, options: Fault.options())
            let resource = Fault.resource()
            try await Task.sleep(for: .milliseconds(300))
            let error = try await #require(throws: RedlockError.self) {
                try await redlock.lock(resource, ttl: .seconds(10))
            }
            #expect(error.kind == .quorumUnavailable, "\(error)")
            // A quorum of nodes said why (the third may not have answered when the outcome was certain).
            var failedNodes = 0
            for evidence in error.nodes {
                switch evidence.outcome {
                case .failed(let failure):
                    failedNodes += 1
                    #expect(failure.message.contains("authentication failed"), "\(failure)")
                case .pending: break
                default: Issue.record("\(evidence)")
                }
            }
            #expect(failedNodes >= 2)
            for text in [error.description, String(reflecting: error), error.message]
                + error.nodes.map(\.node)
            {
                #expect(!text.contains(wrong))
                #expect(!text.contains(right))
            }
            #expect(!redlock.isConnected)
            for server in group.servers {
                #expect(try await Fault.dbsize(server, password: right) == 0)
            }
            await redlock.close()

            // The right password works.
            let good = try Redlock(
                servers: group.ports.map { Fault.address($0, password: right) }, options: Fault.options())
            let lock = try await good.lock(resource, ttl: .seconds(5))
            #expect(try await good.release(lock) == 3)
            await good.close()
        }

        /// Aliases of one server (127.0.0.1 and localhost) are accepted, but cannot vote twice: SET NX
        /// grants the key once, so the lock still needs a real majority.
        @Test func aliasesOfOneServerCannotVoteTwice() async throws {
            let group = try await RedisServerGroup.start(count: 2)
            defer { group.stopInBackground() }
            let servers = [
                Fault.address(group[0].port),
                RedisServer(
                    host: "localhost", port: group[0].port, password: RedisServerConfiguration.defaultPassword
                ),
                Fault.address(group[1].port),
            ]
            let redlock = try Redlock(servers: servers, options: Fault.options())
            try await connected(redlock, timeout: .seconds(5))
            let resource = Fault.resource()
            let lock = try await redlock.lock(resource, ttl: .seconds(5))
            #expect(lock.nodes.count == 2)
            #expect(lock.nodes.contains(servers[2].description), "the second real server is needed")
            #expect(try await redlock.release(lock) == 2)

            #expect(await group[1].kill9())
            #expect(!group[1].isRunning)
            let error = try await #require(throws: RedlockError.self) {
                try await redlock.lock(resource, ttl: .seconds(5))
            }
            #expect(error.kind == .quorumUnavailable, "one real server alone is no quorum: \(error)")
            try await waitUntil(timeout: .seconds(3), "released") {
                try await Fault.dbsize(group[0]) == 0
            }
            await redlock.close()
        }
    }
}
