import Foundation
import LocalRedis
import Synchronization
import TestSupport
import Testing

@testable import redlock

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

// Issue 14: secrets and hostile input, checked on the `redlock` and `redlock-bench` binaries run as
// child processes against real local redis-servers (and, for a server's hostile error text, a
// listener on 127.0.0.1 that answers every command with that text).
/// On executors of their own, as the tool's other end-to-end tests (see `RedlockCLITests`).
@Suite("redlock: secrets and hostile input", .serialized, .ownExecutor)
struct SecurityTests {
    // MARK: - What COMMAND inherits

    /// `run` removes $REDLOCK_PASSWORD, and $REDLOCK_SERVERS when it holds a password, from COMMAND's
    /// environment; `--pass-env` passes them on.
    @Test func runKeepsCredentialsFromTheCommandUnlessPassEnv() async throws {
        let password = "env-pw-\(UInt32.random(in: 1000...9999))"
        let servers = try await Servers.start(count: 3, RedisServerConfiguration(password: password))
        defer { servers.stopInBackground() }
        let withPasswords = servers.group.ports.map { "redis://:\(password)@127.0.0.1:\($0)" }
            .joined(separator: ",")
        let script =
            #"echo "P=${REDLOCK_PASSWORD-unset} S=${REDLOCK_SERVERS-unset} R=${REDLOCK_RESOURCE-unset}""#

        func childSees(_ environment: [String: String], passEnv: Bool) async throws -> String {
            let outcome = try await redlock(
                ["run"] + (passEnv ? ["--pass-env"] : []) + ["env-test", "--", "sh", "-c", script],
                environment: environment)
            #expect(outcome.status == 0, "\(outcome)")
            return outcome.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        }

        // The password in $REDLOCK_PASSWORD, a plain server list (no secret) in $REDLOCK_SERVERS.
        let plain = ["REDLOCK_PASSWORD": password, "REDLOCK_SERVERS": servers.list]
        #expect(try await childSees(plain, passEnv: false) == "P=unset S=\(servers.list) R=env-test")
        #expect(try await childSees(plain, passEnv: true) == "P=\(password) S=\(servers.list) R=env-test")

        // The passwords in the addresses of $REDLOCK_SERVERS.
        let inList = ["REDLOCK_SERVERS": withPasswords, "REDLOCK_PASSWORD": ""]
        #expect(try await childSees(inList, passEnv: false) == "P=unset S=unset R=env-test")
        #expect(try await childSees(inList, passEnv: true) == "P=unset S=\(withPasswords) R=env-test")
    }

    // MARK: - Signals reach what COMMAND started

    /// When the lock is lost, SIGTERM goes to COMMAND's process group: the sleeper a `sh -c` script
    /// started in the background dies with the shell.
    @Test func aLostLockTerminatesTheProcessesTheCommandStarted() async throws {
        let servers = try await Servers.start()
        defer { servers.stopInBackground() }  // stopping resumes a paused server first
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let pidFile = scratch.file("sleeper.pid")

        let process = try startRedlock(
            ["--servers", servers.list, "--ttl", "1000", "run", "group", "--", "sh", "-c", sleeperScript],
            environment: ["PID_FILE": pidFile])
        #expect(await process.waitForOutput("ready\n"), "\(process.stderr)")
        let sleeper = try await readPID(pidFile)
        defer { if isAlive(sleeper) { kill(sleeper, SIGKILL) } }
        #expect(isAlive(sleeper), "the sleeper (pid \(sleeper)) runs while the lock is held")

        for index in 0..<2 {
            #expect(await servers[index].pause())
            #expect(servers[index].isPaused)
        }
        #expect(await process.wait(timeout: .seconds(30)) == 124, "\(process.stderr)")
        #expect(process.stderr.contains("lost the lock"), "\(process.stderr)")
        let gone = await eventually(timeout: .seconds(5)) { !isAlive(sleeper) }
        #expect(gone, "the sleeper (pid \(sleeper)) still runs without the lock")
        for index in 0..<2 {
            #expect(await servers[index].resume())
        }
    }

    /// SIGTERM sent to `redlock` reaches every process of COMMAND's group too.
    @Test func aSignalToTheToolReachesTheProcessesTheCommandStarted() async throws {
        let servers = try await Servers.start()
        defer { servers.stopInBackground() }
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let pidFile = scratch.file("sleeper.pid")

        let process = try startRedlock(
            ["--servers", servers.list, "run", "group", "--", "sh", "-c", sleeperScript],
            environment: ["PID_FILE": pidFile])
        #expect(await process.waitForOutput("ready\n"), "\(process.stderr)")
        let sleeper = try await readPID(pidFile)
        defer { if isAlive(sleeper) { kill(sleeper, SIGKILL) } }
        #expect(isAlive(sleeper))

        process.signal(SIGTERM)
        #expect(await process.wait() == 128 + SIGTERM, "\(process.stderr)")
        let gone = await eventually(timeout: .seconds(5)) { !isAlive(sleeper) }
        #expect(gone, "the sleeper (pid \(sleeper)) survived the signal")
        #expect(try await servers.values(of: "group") == [nil, nil, nil], "the lock is released")
    }

    /// In a terminal's foreground (here a pseudo-terminal from script(1)), COMMAND's group gets the
    /// terminal while COMMAND runs: COMMAND reads from it (in a background group the read would stop
    /// it with SIGTTIN, and `redlock` would hold the lock for ever), and `redlock` takes it back after.
    @Test func inATerminalTheCommandCanStillReadFromIt() async throws {
        let script = "/usr/bin/script"
        try #require(
            FileManager.default.isExecutableFile(atPath: script), "script(1) (util-linux) is missing")
        let servers = try await Servers.start()
        defer { servers.stopInBackground() }
        let inner =
            "'\(try BuiltExecutable.require("redlock"))' --servers \(servers.list) run tty -- sh -c 'read line; echo got:$line';"
            + " echo status:$?"
        // timeout(1) ends script(1), and with its terminal everything in it, should COMMAND hang.
        let process = try Subprocess(
            "/bin/sh", ["-c", #"printf 'hello\n' | timeout -s KILL 20 \#(script) -qec "$INNER" /dev/null"#],
            environment: redlockEnvironment(["INNER": inner]))
        #expect(await process.wait(timeout: .seconds(40)) == 0, "\(process.stdout) \(process.stderr)")
        #expect(process.stdout.contains("got:hello"), "\(process.stdout) \(process.stderr)")
        #expect(process.stdout.contains("status:0"), "\(process.stdout) \(process.stderr)")
        #expect(try await servers.values(of: "tty") == [nil, nil, nil], "the lock is released")
    }

    /// A shell that starts a sleeper in the background, says where it is, and waits for it.
    private let sleeperScript = #"sleep 300 & echo $! > "$PID_FILE"; echo ready; wait"#

    // MARK: - Hostile server text

    /// A server's error text reaches standard error with its control characters escaped: no escape
    /// sequence, carriage return or bell from a server reaches the terminal.
    @Test func controlCharactersInAServersErrorAreEscaped() async throws {
        let hostile = "ERR \u{1B}[2J\u{1B}]0;pwned\u{07}gone\rforged \u{9B}31m"
        let server = try FakeServer(errorReply: hostile)
        defer { server.stop() }

        let outcome = try await redlock([
            "--servers", "127.0.0.1:\(server.port)", "--retries", "0", "--verbose", "acquire", "x",
        ])
        #expect(outcome.status == 69, "\(outcome)")
        #expect(server.commandsAnswered > 0, "the server answered no command")
        #expect(
            outcome.stderr.contains(#"\u{1B}[2J\u{1B}]0;pwned\u{7}gone\u{D}forged \u{9B}31m"#), "\(outcome)")
        let controls = outcome.stderr.unicodeScalars.filter {
            ($0.value < 0x20 && $0 != "\n") || (0x7F...0x9F).contains($0.value)
        }
        #expect(controls.isEmpty, "raw control characters on stderr: \(controls.map(\.value))")
    }

    // MARK: - Passwords

    /// A password with an unencoded comma is one password, not two addresses: the lock works, and a
    /// failing address shows no part of the password.
    @Test func aPasswordWithACommaIsNotSplit() async throws {
        let secretHalf = "ss\(UInt32.random(in: 1000...9999))"
        let password = "pa," + secretHalf
        let servers = try await Servers.start(count: 3, RedisServerConfiguration(password: password))
        defer { servers.stopInBackground() }
        let list = servers.group.ports.map { "redis://:\(password)@127.0.0.1:\($0)" }.joined(separator: ",")

        let acquired = try await redlock(["--servers", list, "--verbose", "acquire", "comma"])
        #expect(acquired.status == 0, "\(acquired)")
        #expect(try await servers.values(of: "comma").allSatisfy { $0 != nil })

        let malformed = try await redlock([
            "--servers", "redis://:\(password)@127.0.0.1:70000", "acquire", "c",
        ])
        #expect(malformed.status == 64, "\(malformed)")
        #expect(malformed.stderr.contains("port 70000"), "\(malformed)")
        for outcome in [acquired, malformed] {
            #expect(!outcome.stderr.contains(secretHalf), "\(outcome)")
            #expect(!outcome.stdout.contains(secretHalf), "\(outcome)")
        }
    }

    /// `redlock-bench` reports a bad address masked.
    @Test func theBenchmarkMasksABadAddress() async throws {
        let bench = try BuiltExecutable.require("redlock-bench")
        let password = "bench-secret-\(UInt32.random(in: 1000...9999))"
        let process = try Subprocess(
            bench, ["--servers", "redis://:\(password)@127.0.0.1:70000"], environment: redlockEnvironment())
        let status = await process.wait()
        #expect(status != 0, "\(process.stderr)")
        #expect(process.stderr.contains("port 70000"), "\(process.stderr)")
        #expect(process.stderr.contains("redis://:***@127.0.0.1:70000"), "\(process.stderr)")
        #expect(!process.stderr.contains(password) && !process.stdout.contains(password), "\(process.stderr)")
    }

    /// `redlock-bench` writes its intervals file readable by this user only: in `--out-dir`, or by
    /// default in a directory of its own with mode 0700, never straight into the shared /tmp.
    @Test func theBenchmarksIntervalsFileIsPrivate() async throws {
        let bench = try BuiltExecutable.require("redlock-bench")
        let servers = try await Servers.start()
        defer { servers.stopInBackground() }
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        // The servers (with their password) through the environment, never argv.
        let arguments = [
            "--scenarios", "contention", "--duration-s", "0.2", "--warmup-s", "0",
            "--contention-workers", "2", "--no-meta",
        ]
        for outDirectory in [scratch.path, nil] {
            let process = try Subprocess(
                bench, arguments + (outDirectory.map { ["--out-dir", $0] } ?? []),
                environment: redlockEnvironment([
                    "TMPDIR": scratch.path, "REDLOCK_BENCH_SERVERS": servers.listWithPassword,
                ]))
            #expect(await process.wait(timeout: .seconds(60)) == 0, "\(process.stderr)")
            let line = try #require(process.stdout.split(separator: "\n").first, "\(process.stderr)")
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            let path = try #require(object?["intervals_file"] as? String, "\(line)")
            #expect(!path.isEmpty, "\(line) \(process.stderr)")
            let directory = (path as NSString).deletingLastPathComponent
            if let outDirectory {
                #expect(directory == outDirectory)
            } else {
                #expect((directory as NSString).lastPathComponent.hasPrefix("redlock-bench-"), "\(path)")
                #expect(permissions(of: directory) == 0o700, "\(directory)")
            }
            #expect(permissions(of: path) == 0o600, "\(path)")
        }
    }

    /// The tool's own argv hides a password that holds quotes, as ps(1) shows it.
    @Test func argvHidesAPasswordWithQuotes() async throws {
        let tail = "\(UInt32.random(in: 1000...9999))"
        let password = #"q"u'ote"# + tail
        let servers = try await Servers.start(count: 3, RedisServerConfiguration(password: password))
        defer { servers.stopInBackground() }
        let list = servers.group.ports.map { "redis://:\(password)@127.0.0.1:\($0)" }.joined(separator: ",")
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let stopFile = scratch.file("stop")

        let script = #"echo started; while [ ! -e "$STOP_FILE" ]; do sleep 0.05; done"#
        let process = try startRedlock(
            ["--servers=" + list, "run", "argv", "--", "sh", "-c", script],
            environment: ["STOP_FILE": stopFile])
        #expect(await process.waitForOutput("started\n"), "\(process.stderr)")
        let ownCommandLine = try #require(commandLine(of: process.pid))
        #expect(ownCommandLine.contains("127.0.0.1"), "\(ownCommandLine)")
        #expect(!ownCommandLine.contains(tail), "redlock argv: \(ownCommandLine)")
        _ = FileManager.default.createFile(atPath: stopFile, contents: nil)
        #expect(await process.wait() == 0, "\(process.stderr)")
    }

    /// A short password given in $REDLOCK_PASSWORD is not searched for in what the tool prints: no
    /// word of a message turns into `***` (which would show the password letter by letter).
    @Test func aShortPasswordIsNotRevealedByMasking() async throws {
        let refusing = try bindLoopbackSocket()
        defer { close(refusing.descriptor) }  // bound, not listening: connections are refused
        let outcome = try await redlock(
            [
                "--servers", "127.0.0.1:\(refusing.port)", "--retries", "0", "--verbose", "acquire",
                "resource",
            ],
            environment: ["REDLOCK_PASSWORD": "e"])
        #expect(outcome.status == 69, "\(outcome)")
        #expect(outcome.stderr.contains("not enough nodes answered"), "\(outcome)")
        #expect(outcome.stderr.contains("\"resource\""), "\(outcome)")
        // The server is shown with its password masked by the address syntax, and nothing else is.
        let masked = outcome.stderr.components(separatedBy: "***").count - 1
        let addresses = outcome.stderr.components(separatedBy: "redis://:***@").count - 1
        #expect(masked == addresses && addresses > 0, "\(outcome)")
    }

    /// The tool masks with the library's rule (`RedisServer.maskingPasswords(inText:)`): by the
    /// address syntax, whatever the password holds (quotes, commas, '@').
    @Test func theToolMasksWithTheLibrarysRule() {
        let text = #"Unexpected argument 'redis://:pa"s,s@h:1,unix://u:x@/tmp/s' and (redis://:y@h)"#
        #expect(
            Redactor.redact(text)
                == #"Unexpected argument 'redis://:***@h:1,unix://u:***@/tmp/s' and (redis://:***@h)"#)
    }

    // MARK: - What the Makefile installs

    /// `make` and `make build` install nothing; `make test` and `make demo` still do all the set-up.
    @Test func onlyTheSetUpTargetsInstall() async throws {
        let package = ((#filePath as NSString).deletingLastPathComponent as NSString)
            .deletingLastPathComponent
        let root = (package as NSString).deletingLastPathComponent
        func dryRun(_ arguments: [String]) async throws -> String {
            let process = try Subprocess(
                "/usr/bin/make", ["-n", "-C", root] + arguments, environment: redlockEnvironment())
            #expect(await process.wait() == 0, "make -n \(arguments): \(process.stderr)")
            return process.stdout
        }
        for target in [[], ["build"]] {
            let plan = try await dryRun(target)
            #expect(plan.contains("swift build"), "make -n \(target): \(plan)")
            let installs = plan.contains("apt-get install") || plan.contains("apt-get update")
            #expect(!installs, "make \(target) would install: \(plan)")
        }
        for target in ["test", "demo"] {
            #expect(
                try await dryRun([target]).contains("apt-get install"), "make \(target) no longer sets up")
        }
    }
}

// MARK: - Helpers

/// The permission bits of `path` (not following a link), or nil.
func permissions(of path: String) -> mode_t? {
    var info = stat()
    return lstat(path, &info) == 0 ? info.st_mode & 0o7777 : nil
}

/// The pid a script wrote to `path`, waiting up to 5 s for it.
func readPID(_ path: String) async throws -> pid_t {
    var pid: pid_t?
    _ = await eventually(timeout: .seconds(5), every: .milliseconds(20)) {
        pid = (try? String(contentsOfFile: path, encoding: .utf8))
            .flatMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        return pid != nil
    }
    return try #require(pid, "no pid in \(path)")
}

/// Whether `pid` is a live process (not a zombie that nobody reaped yet).
func isAlive(_ pid: pid_t) -> Bool {
    guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/stat") else { return false }
    let text = String(decoding: data, as: UTF8.self)
    guard let close = text.lastIndex(of: ")") else { return false }
    let state = text[text.index(after: close)...].split(separator: " ").first
    return state != "Z" && state != "X"
}

/// A listener on 127.0.0.1 that answers every command (RESP arrays, as hiredis sends them) with one
/// error reply: a hostile or broken server.
final class FakeServer: Sendable {
    let port: Int
    private let listener: Int32
    private let answered = Atomic<Int>(0)

    init(errorReply: String) throws {
        let (descriptor, port) = try bindLoopbackSocket(listening: 16)
        // Blocking accept(2) and read(2) on a thread of their own.
        _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) & ~O_NONBLOCK)
        listener = descriptor
        self.port = port
        let reply = Array(("-" + errorReply + "\r\n").utf8)
        Thread.detachNewThread { [self] in
            while true {
                let client = accept(descriptor, nil, nil)
                if client < 0 {
                    if errno == EINTR { continue }
                    return
                }
                _ = fcntl(client, F_SETFL, fcntl(client, F_GETFL) & ~O_NONBLOCK)
                Thread.detachNewThread { [self] in serve(client, reply: reply) }
            }
        }
    }

    var commandsAnswered: Int { answered.load(ordering: .relaxed) }

    func stop() {
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }

    private func serve(_ client: Int32, reply: [UInt8]) {
        defer { close(client) }
        var pending: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = read(client, &buffer, buffer.count)
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { return }
            pending += buffer[..<count]
            while let length = Self.commandLength(pending) {
                pending.removeFirst(length)
                let written = reply.withUnsafeBytes { write(client, $0.baseAddress, $0.count) }
                if written != reply.count { return }
                answered.add(1, ordering: .relaxed)
            }
        }
    }

    /// The length of the first complete `*N\r\n$L\r\n…` command in `bytes`, if there is one.
    static func commandLength(_ bytes: [UInt8]) -> Int? {
        var index = 0
        func line() -> String? {
            var end = index
            while end + 1 < bytes.count {
                if bytes[end] == 13 && bytes[end + 1] == 10 {
                    let text = String(decoding: bytes[index..<end], as: UTF8.self)
                    index = end + 2
                    return text
                }
                end += 1
            }
            return nil
        }
        guard let header = line(), header.first == "*", let count = Int(header.dropFirst()) else {
            return nil
        }
        for _ in 0..<max(0, count) {
            guard let bulk = line(), bulk.first == "$", let length = Int(bulk.dropFirst()),
                index + length + 2 <= bytes.count
            else { return nil }
            index += length + 2
        }
        return index
    }
}
