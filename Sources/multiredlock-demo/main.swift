// `make demo`: what multiredlock gives you, shown on three local redis-servers with the `redlock`
// command-line tool: separate processes that never hold one lock at the same time, a job that
// outlives its ttl because it is renewed, and a lock that survives the crash of one server.
import Dispatch
import Foundation
import LocalRedis
import MultiRedlock

#if canImport(Glibc)
    import Glibc
#endif

func say(_ text: String = "") { print(text) }

func ms(_ duration: Duration) -> String {
    let (seconds, attoseconds) = duration.components
    let value = Double(seconds) * 1000 + Double(attoseconds) / 1e15
    return value < 10 ? String(format: "%.2f ms", value) : "\(Int(value.rounded())) ms"
}

// Ctrl-C stops the servers before leaving.
signal(SIGINT, SIG_IGN)
let interrupt = DispatchSource.makeSignalSource(signal: SIGINT, queue: .global())
interrupt.setEventHandler {
    print("\ninterrupted: stopping the servers")
    RedisServerProcess.stopAllRunning()
    exit(130)
}
interrupt.activate()

// MARK: - Running the redlock tool

/// The `redlock` binary: next to this demo's executable (both are built into the same folder), else
/// in PATH.
func findRedlock() -> String? {
    var directories: [String] = []
    if let own = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
        directories.append((own as NSString).deletingLastPathComponent)
    }
    let argument0 = CommandLine.arguments[0]
    if argument0.contains("/") { directories.append((argument0 as NSString).deletingLastPathComponent) }
    directories += (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init)
    return directories.map { $0 + "/redlock" }.first { FileManager.default.isExecutableFile(atPath: $0) }
}

/// How one `redlock` run ended.
struct Run {
    var status: Int32
    var stdout: String
    var stderr: String
    var elapsed: Duration
}

let workDirectory: String = {
    let root = ProcessInfo.processInfo.environment["MULTIREDLOCK_TEST_DIR"] ?? NSTemporaryDirectory()
    var template = Array((root + "/demo-XXXXXX").utf8CString)
    guard let made = mkdtemp(&template) else { fatalError("mkdtemp failed in \(root)") }
    return String(cString: made)
}()

/// Runs `redlock arguments…` with `environment` added to this process's, standard output and error
/// going to files, and waits for it.
func redlock(_ arguments: [String], environment: [String: String] = [:]) -> Run {
    let start = ContinuousClock.now
    let id = UUID().uuidString
    let outPath = "\(workDirectory)/\(id).out"
    let errPath = "\(workDirectory)/\(id).err"
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, outPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    posix_spawn_file_actions_addopen(&actions, 2, errPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    // This demo ignores SIGINT (its handler above) and hiredis ignores SIGPIPE: not so the tool.
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var defaults = sigset_t()
    sigemptyset(&defaults)
    sigaddset(&defaults, SIGINT)
    sigaddset(&defaults, SIGPIPE)
    posix_spawnattr_setsigdefault(&attributes, &defaults)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF))

    let merged = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    let argv = (["redlock"] + arguments).map { strdup($0) } + [nil]
    let envp = merged.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer {
        for pointer in argv { free(pointer) }
        for pointer in envp { free(pointer) }
    }
    var pid: pid_t = 0
    let code = posix_spawn(&pid, redlockPath, &actions, &attributes, argv, envp)
    guard code == 0 else { fatalError("cannot start \(redlockPath): \(String(cString: strerror(code)))") }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    let read = { (path: String) in (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }
    let run = Run(
        status: status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f),
        stdout: read(outPath), stderr: read(errPath), elapsed: start.duration(to: .now))
    unlink(outPath)
    unlink(errPath)
    return run
}

/// Prints a command as you would type it, and what it printed.
func show(_ arguments: [String], _ run: Run, note: String = "") {
    let typed = (["redlock"] + arguments).map { $0.contains(" ") ? "'\($0)'" : $0 }.joined(separator: " ")
    say("   $ \(typed)")
    for line in (run.stdout + run.stderr).split(separator: "\n") { say("     \(line)") }
    say("     → exit \(run.status) after \(ms(run.elapsed))\(note.isEmpty ? "" : ": " + note)")
}

func jsonField(_ json: String, _ name: String) -> Any? {
    guard let data = json.split(separator: "\n").first.map({ Data($0.utf8) }),
        let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
    else { return nil }
    return object[name]
}

guard let found = findRedlock() else {
    say("redlock not found next to \(CommandLine.arguments[0]) nor in PATH: build it first,")
    say("  swift build --product redlock")
    exit(1)
}
let redlockPath = found

// MARK: - 1. Servers

say("What Redlock gives you: one lock shared by processes on any number of machines, held only while")
say("a majority of independent Redis servers agree, valid for a known time, and still available when a")
say("minority of the servers crash. This demo shows it with the `redlock` command-line tool.")
say("")
say("== 1. Three independent Redis masters")
let group = try RedisServerGroup.start(count: 3)
defer { group.stopAll() }
// LocalRedis gives every server a random password (other users of this machine reach 127.0.0.1 too);
// the connections below send it, and the tool gets it through $REDLOCK_PASSWORD, never its argv.
let password = RedisServerConfiguration.defaultPassword
let servers = group.ports.map { RedisServer(host: "127.0.0.1", port: $0, password: password) }
for (index, server) in group.servers.enumerated() {
    say("   node \(index + 1): redis-server pid \(server.pid.map(String.init) ?? "?") on \(servers[index])")
}
let serverList = group.ports.map { "127.0.0.1:\($0)" }.joined(separator: ",")
let env = ["REDLOCK_SERVERS": serverList, "REDLOCK_PASSWORD": password]

say("\n== 2. One hiredis connection per node, driven by Dispatch: PING round trips")
for server in servers {
    let connection = try RedisConnection(server: server)
    var samples: [Duration] = []
    for _ in 0..<500 {
        let start = ContinuousClock.now
        _ = try await connection.send(["PING"])
        samples.append(ContinuousClock.now - start)
    }
    samples.sort()
    say("   \(server): 500 PINGs, p50 \(ms(samples[250])), p99 \(ms(samples[495]))")
    await connection.close()
}

// MARK: - 3. The tool

say("\n== 3. The redlock tool: a lock is held when a majority (2 of 3) agreed")
say("   $ export REDLOCK_SERVERS=\(serverList) REDLOCK_PASSWORD=…  # the servers' random password")
let acquireArguments = ["acquire", "invoice-42"]
let acquired = redlock(acquireArguments, environment: env)
show(acquireArguments, acquired, note: "validity = ttl 10 s − time taken − drift (100 ms + 1% of the ttl)")
let value = jsonField(acquired.stdout, "value") as? String ?? "?"
let contendArguments = ["--retries", "1", "acquire", "invoice-42"]
show(contendArguments, redlock(contendArguments, environment: env), note: "75 = held by someone else")
let releaseArguments = ["release", "invoice-42", value]
show(releaseArguments, redlock(releaseArguments, environment: env), note: "compare-and-delete on every node")
show(acquireArguments, redlock(acquireArguments, environment: env), note: "free again")

// MARK: - 4. Contention

let workers = 4
let iterations = 3
let holdsFile = workDirectory + "/holds.log"
say("\n== 4. \(workers) processes, one resource: `redlock run` around a critical section")
let criticalSection =
    #"echo "enter $NAME $(date +%s%N)" >> "$HOLDS"; sleep 0.05; echo "leave $NAME $(date +%s%N)" >> "$HOLDS""#
say("   each of \(workers) workers runs this \(iterations) times, all workers at once:")
say("   $ redlock --wait 30000 --retry-wait 50 run report -- sh -c '\(criticalSection)'")
let statuses = LockedArray()
DispatchQueue.concurrentPerform(iterations: workers) { worker in
    for _ in 0..<iterations {
        let run = redlock(
            ["--wait", "30000", "--retry-wait", "50", "run", "report", "--", "sh", "-c", criticalSection],
            environment: env.merging(["NAME": "worker-\(worker + 1)", "HOLDS": holdsFile]) { $1 })
        statuses.append(run.status)
        if run.status != 0 { print("   worker-\(worker + 1): exit \(run.status): \(run.stderr)") }
    }
}

struct Hold {
    var worker: String
    var enter: Int64
    var leave: Int64
}
var holds: [Hold] = []
var entered: [String: Int64] = [:]
for line in ((try? String(contentsOfFile: holdsFile, encoding: .utf8)) ?? "").split(separator: "\n") {
    let fields = line.split(separator: " ")
    guard fields.count == 3, let time = Int64(fields[2]) else { continue }
    let worker = String(fields[1])
    if fields[0] == "enter" {
        entered[worker] = time
    } else if let start = entered.removeValue(forKey: worker) {
        holds.append(Hold(worker: worker, enter: start, leave: time))
    }
}
holds.sort { $0.enter < $1.enter }
let origin = holds.first?.enter ?? 0
func relative(_ nanoseconds: Int64) -> String { String(format: "%7.1f", Double(nanoseconds - origin) / 1e6) }
say("   who held \"report\" when (ms since the first enter, from the log the workers wrote):")
var overlaps = 0
var latestLeave = Int64.min
for hold in holds {
    let overlapping = hold.enter < latestLeave
    if overlapping { overlaps += 1 }
    latestLeave = max(latestLeave, hold.leave)
    say(
        "     \(hold.worker)  \(relative(hold.enter)) → \(relative(hold.leave))\(overlapping ? "  OVERLAPS!" : "")"
    )
}
let succeeded = statuses.values.filter { $0 == 0 }.count
say(
    "   \(holds.count) holds by \(succeeded) of \(workers * iterations) redlock runs, \(overlaps) overlapping;"
)
say("   whoever did not get the lock retried (--wait) until the holder released it:")
say(
    overlaps == 0 && holds.count == workers * iterations
        ? "   never two processes inside the critical section at once. Mutual exclusion held."
        : "   MUTUAL EXCLUSION BROKEN (or runs failed): see above.")

// MARK: - 5. Renewal

say("\n== 5. A job longer than its ttl: `run` renews the lock while the job runs")
let longArguments = ["--ttl", "1000", "run", "nightly", "--", "sleep", "2"]
let longRun = Task.detached { redlock(longArguments, environment: env) }
try await Task.sleep(for: .milliseconds(1500))
var pttls: [String] = []
for server in group.servers {
    pttls.append((try? server.cli("PTTL", "nightly")) ?? "?")
}
show(longArguments, await longRun.value)
let stillHeld = pttls.filter { (Int($0) ?? 0) > 0 }.count
say("   1.5 s into the run (ttl 1 s), PTTL on the nodes: \(pttls.joined(separator: ", ")) ms:")
say(
    stillHeld >= 2
        ? "   still held, because `run` renews it every third of the ttl while the job runs."
        : "   NOT held by a majority: the renewal did not work!")
let exists = group.servers.map { (try? $0.cli("EXISTS", "nightly")) ?? "?" }
say("   released when the job ended: EXISTS nightly → \(exists.joined(separator: ", "))")

// MARK: - 6. Crashes

say("\n== 6. A node crashes (kill -9): the other two still make a majority")
_ = group[0].kill9()
say("   node 1 killed (running: \(group[0].isRunning))")
let afterCrashRun = ["run", "invoice-7", "--", "sh", "-c", #"echo "working on $REDLOCK_RESOURCE""#]
show(afterCrashRun, redlock(afterCrashRun, environment: env))
let afterCrash = ["acquire", "invoice-8"]
let crashAcquire = redlock(afterCrash, environment: env)
let granted = (jsonField(crashAcquire.stdout, "nodes") as? [String])?.count ?? 0
show(afterCrash, crashAcquire, note: "granted by \(granted) of 3 nodes")
_ = group[1].kill9()
say("   node 2 killed as well: only 1 of 3 left")
let noMajority = ["acquire", "invoice-9"]
show(noMajority, redlock(noMajority, environment: env), note: "69 = not enough servers answered; no hang")

group.stopAll()
try? FileManager.default.removeItem(atPath: workDirectory)
say("\n== Done: servers stopped. `redlock --help` lists every option and exit status;")
say("   `make test` runs the whole suite.")

/// Exit statuses collected from the worker threads.
final class LockedArray: Sendable {
    private let storage = Locked<[Int32]>([])

    func append(_ value: Int32) { storage.withLock { $0.append(value) } }

    var values: [Int32] { storage.withLock { $0 } }
}
