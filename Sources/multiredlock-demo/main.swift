// `make demo`: what multiredlock gives you, shown on three local redis-servers.
import Dispatch
import LocalRedis
import MultiRedlock
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

func say(_ text: String = "") { print(text) }
func ms(_ duration: Duration) -> String {
    let (seconds, attoseconds) = duration.components
    let value = Double(seconds) * 1000 + Double(attoseconds) / 1e15
    return value < 10 ? String(format2(value)) + " ms" : "\(Int(value.rounded())) ms"
}
func format2(_ value: Double) -> String {
    let hundredths = Int((value * 100).rounded())
    return "\(hundredths / 100).\(hundredths % 100 < 10 ? "0" : "")\(hundredths % 100)"
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

say("== 1. Three independent Redis masters")
let group = try RedisServerGroup.start(count: 3)
defer { group.stopAll() }
let servers = group.ports.map { RedisServer(host: "127.0.0.1", port: $0) }
for (index, server) in group.servers.enumerated() {
    say("   node \(index + 1): redis-server pid \(server.pid.map(String.init) ?? "?") on \(servers[index])")
}

say("\n== 2. One hiredis connection per node, driven by Dispatch: PING round trips")
for server in servers {
    let connection = try RedisConnection(server: server)
    var samples: [Duration] = []
    for _ in 0..<1000 {
        let start = ContinuousClock.now
        _ = try await connection.send(["PING"])
        samples.append(ContinuousClock.now - start)
    }
    samples.sort()
    say("   \(server): 1000 PINGs, p50 \(ms(samples[500])), p99 \(ms(samples[990]))")
    await connection.close()
}

say("\n== 3. A lock is held when a majority (2 of 3) agreed")
let options = RedlockOptions(id: "demo-a", retries: 0, nodeTimeout: .milliseconds(200))
let clientA = try Redlock(servers: servers, options: options)
let clientB = try Redlock(
    servers: servers, options: RedlockOptions(id: "demo-b", retries: 2, nodeTimeout: .milliseconds(200)))
let lock = try await clientA.lock("invoice-42", ttl: .seconds(10))
say("   client A: lock(\"invoice-42\", ttl: 10 s) -> validity \(ms(lock.validity)),")
say("             decided as soon as \(lock.nodes.count) of 3 nodes agreed")
say("             value \(lock.value)")
say("             (validity = ttl - time taken - drift allowance of 100 ms + 1% of ttl)")
do {
    _ = try await clientB.lock("invoice-42", ttl: .seconds(10))
    say("   client B: got the lock too?! (this must not happen)")
} catch let error as RedlockError {
    say("   client B: \(error.kind) after \(error.attempts) attempts: \(error.message)")
}
let released = try await clientA.release(lock)
say("   client A: released on \(released) nodes")
let lockB = try await clientB.lock("invoice-42", ttl: .seconds(10))
say("   client B: now holds it (validity \(ms(lockB.validity)))")
try await clientB.release(lockB)

say("\n== 4. Four workers contend for one resource; each holds it 20 ms, five times")
struct Hold {
    let worker: String
    let start: ContinuousClock.Instant
    let end: ContinuousClock.Instant
}
let holds = Mutex<[Hold]>([])
let origin = ContinuousClock.now
try await withThrowingTaskGroup(of: Void.self) { tasks in
    for worker in 1...4 {
        tasks.addTask {
            let redlock = try Redlock(
                servers: servers,
                options: RedlockOptions(id: "worker-\(worker)", retries: 200, retryWait: .milliseconds(15)))
            for _ in 0..<5 {
                let lock = try await redlock.lock("report", ttl: .seconds(2))
                let start = ContinuousClock.now
                try await Task.sleep(for: .milliseconds(20))
                let end = ContinuousClock.now
                holds.withLock { $0.append(Hold(worker: "worker-\(worker)", start: start, end: end)) }
                try await redlock.release(lock)
            }
            await redlock.close()
        }
    }
    try await tasks.waitForAll()
}
let timeline = holds.withLock { $0 }.sorted { $0.start < $1.start }
for hold in timeline {
    say("   \(hold.worker) held it from \(ms(hold.start - origin)) to \(ms(hold.end - origin))")
}
let overlaps = zip(timeline, timeline.dropFirst()).filter { $1.start < $0.end }.count
say(
    "   \(timeline.count) holds, \(overlaps) overlapping: mutual exclusion \(overlaps == 0 ? "held" : "BROKEN")"
)

say("\n== 5. A node crashes (kill -9): the other two still make a majority")
_ = group[0].kill9()
say("   node 1 killed (running: \(group[0].isRunning))")
for index in 1...3 {
    let lock = try await clientA.lock("invoice-\(index)", ttl: .seconds(5))
    say(
        "   lock(\"invoice-\(index)\") -> granted by \(lock.nodes.count) of 3 nodes, validity \(ms(lock.validity))"
    )
    try await clientA.release(lock)
}
_ = group[1].kill9()
say("   node 2 killed as well: only 1 of 3 left")
let start = ContinuousClock.now
do {
    _ = try await clientA.lock("invoice-4", ttl: .seconds(5))
} catch let error as RedlockError {
    say("   lock fails in \(ms(ContinuousClock.now - start)): \(error.kind): \(error.message)")
}
try group[0].restart()
try group[1].restart()
while !clientA.isConnected { try await Task.sleep(for: .milliseconds(20)) }
let again = try await clientA.lock("invoice-4", ttl: .seconds(5))
say("   nodes restarted: lock granted again by \(again.nodes.count) nodes")
try await clientA.release(again)

await clientA.close()
await clientB.close()
group.stopAll()
say("\n== Done: servers stopped. Next: `make test` runs the whole suite.")
