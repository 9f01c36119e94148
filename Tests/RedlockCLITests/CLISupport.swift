import Foundation
import LocalRedis
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

// Helpers for the RedlockCLITests suite: servers started with LocalRedis and what the `redlock`
// processes (TestSupport's `startRedlock`, `redlock`) do to them and to their own children.

// MARK: - Servers

/// Three (or `count`) local redis-servers for one test.
struct Servers: Sendable {
    let group: RedisServerGroup

    static func start(count: Int = 3, _ configuration: RedisServerConfiguration = .init()) async throws
        -> Servers
    {
        Servers(group: try await RedisServerGroup.start(count: count, configuration))
    }

    /// `127.0.0.1:p1,127.0.0.1:p2,…` (the password comes from $REDLOCK_PASSWORD: `redlockEnvironment`)
    var list: String { group.ports.map { "127.0.0.1:\($0)" }.joined(separator: ",") }

    /// `redis://:PASSWORD@127.0.0.1:p1,…` with LocalRedis's default password, for an environment
    /// variable of a tool that has no password variable of its own (`REDLOCK_BENCH_SERVERS`).
    var listWithPassword: String {
        group.ports.map { "redis://:\(RedisServerConfiguration.defaultPassword)@127.0.0.1:\($0)" }
            .joined(separator: ",")
    }

    subscript(index: Int) -> RedisServerProcess { group[index] }

    /// `GET key` on every running server (nil where the key is missing).
    func values(of key: String) async throws -> [String?] {
        var values: [String?] = []
        for server in group.servers where server.isRunning {
            let value = try await server.cli("GET", key)
            values.append(value.isEmpty ? nil : value)
        }
        return values
    }

    /// `PTTL key` on every running server.
    func pttls(of key: String) async throws -> [Int] {
        var values: [Int] = []
        for server in group.servers where server.isRunning {
            values.append(Int(try await server.cli("PTTL", key)) ?? -3)
        }
        return values
    }

    /// Stops every server (SIGTERM, then SIGKILL after LocalRedis's grace period) on a thread of its
    /// own, for a `defer`.
    func stopInBackground() {
        group.stopInBackground()
    }
}

/// The process's command line from /proc/PID/cmdline (arguments joined with spaces).
func commandLine(of pid: pid_t) -> String? {
    guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return nil }
    return String(decoding: data.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
}

/// The direct children of `pid`: the processes whose /proc/PID/stat names it as parent.
func children(of pid: pid_t) -> [pid_t] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap { pid_t($0) }.filter { candidate in
        guard let data = FileManager.default.contents(atPath: "/proc/\(candidate)/stat") else { return false }
        let text = String(decoding: data, as: UTF8.self)
        // "pid (comm) state ppid …": comm may hold spaces and parentheses, so split after the last ')'.
        guard let close = text.lastIndex(of: ")") else { return false }
        let fields = text[text.index(after: close)...].split(separator: " ")
        return fields.count > 1 && pid_t(fields[1]) == pid
    }
}
