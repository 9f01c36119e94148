import Hiredis
import Dispatch

let port = Int(CommandLine.arguments.dropFirst().first ?? "6379") ?? 6379
let connection = try RedisConnection(server: RedisServer(host: "localhost", port: port)) { state in
    print("state:", state)
}
let start = ContinuousClock.now
print(try await connection.send(["PING"]))
print(try await connection.send(["SET", "k", "v"]))
print(try await connection.send(["GET", "k"]))
var samples: [Duration] = []
for _ in 0..<2000 {
    let t = ContinuousClock.now
    _ = try await connection.send(["PING"])
    samples.append(ContinuousClock.now - t)
}
samples.sort()
print("p50", samples[samples.count / 2], "p99", samples[samples.count * 99 / 100])
let many = try await withThrowingTaskGroup(of: RedisReply.self) { group in
    for i in 0..<10000 { group.addTask { try await connection.send(["ECHO", "\(i)"]) } }
    var n = 0
    for try await _ in group { n += 1 }
    return n
}
print("many", many, ContinuousClock.now - start)
await connection.close()
print(try? await connection.send(["PING"]) as Any)
