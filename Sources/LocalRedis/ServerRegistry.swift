import Foundation
import Hiredis

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// Process-wide bookkeeping: every live `RedisServerProcess` (held weakly), the ports they own (so a
/// killed server's port is not handed to a new server before it restarts), and the root directory.
/// The lock is never held while calling into a server.
final class ServerRegistry: Sendable {
    static let shared = ServerRegistry()

    private struct WeakServer: Sendable {
        weak var server: RedisServerProcess?
    }

    private struct State: Sendable {
        var servers: [ObjectIdentifier: WeakServer] = [:]
        var reservedPorts: Set<Int> = []
        var root: (path: String, isTemporary: Bool)?
        var exitHookInstalled = false
    }

    private let state = Locked(State())

    private init() {}

    /// Whether server directories are deleted when their `RedisServerProcess` goes away.
    /// Only directories under a root we created ourselves are ever deleted, and never when
    /// MULTIREDLOCK_KEEP_DIRS is set to a non-empty value other than "0".
    var removesDirectories: Bool {
        let keep = ProcessInfo.processInfo.environment["MULTIREDLOCK_KEEP_DIRS"] ?? ""
        guard keep.isEmpty || keep == "0" else { return false }
        return state.withLock { $0.root?.isTemporary ?? false }
    }

    /// `$MULTIREDLOCK_TEST_DIR` (created if missing) or a fresh /tmp/multiredlock-XXXXXX, once per process.
    func rootDirectory() throws -> String {
        let path = try state.withLock { state throws -> String in
            if let root = state.root { return root.path }
            let created = try Self.createRoot()
            state.root = created
            return created.path
        }
        installExitHookOnce()
        return path
    }

    private static func createRoot() throws -> (path: String, isTemporary: Bool) {
        let configured = ProcessInfo.processInfo.environment["MULTIREDLOCK_TEST_DIR"] ?? ""
        if !configured.isEmpty {
            try makeDirectories(configured)
            return (configured, false)
        }
        return (try makeTemporaryDirectory(template: "/tmp/multiredlock-XXXXXX"), true)
    }

    /// Servers must not outlive the process that started them, even if nobody called stop(), and the
    /// temporary root must not pile up in /tmp.
    private func installExitHookOnce() {
        let install = state.withLock { state in
            defer { state.exitHookInstalled = true }
            return !state.exitHookInstalled
        }
        guard install else { return }
        atexit {
            RedisServerProcess.stopAllRunning()
            ServerRegistry.shared.removeTemporaryRoot()
        }
    }

    /// A free port on 127.0.0.1 that no server of this process owns. Release it with `releasePort`
    /// if the server using it could not be started.
    func reserveFreePort() throws -> Int {
        for _ in 0..<100 {
            let port = try kernelChosenLoopbackPort()
            let inserted = state.withLock { $0.reservedPorts.insert(port).inserted }
            if inserted { return port }
        }
        throw LocalRedisError(
            .portUnavailable, "the kernel kept offering ports that local servers already own")
    }

    func releasePort(_ port: Int) {
        _ = state.withLock { $0.reservedPorts.remove(port) }
    }

    func register(_ server: RedisServerProcess) {
        state.withLock { $0.servers[ObjectIdentifier(server)] = WeakServer(server: server) }
    }

    func unregister(_ id: ObjectIdentifier, port: Int) {
        state.withLock { state in
            state.servers[id] = nil
            state.reservedPorts.remove(port)
        }
    }

    /// Strong references to every server still alive. The caller uses them outside the lock.
    func liveServers() -> [RedisServerProcess] {
        state.withLock { $0.servers.values.compactMap(\.server) }
    }

    /// At exit: deletes the root directory if this process created it (and keeping was not asked for).
    func removeTemporaryRoot() {
        guard removesDirectories, let path = state.withLock({ $0.root?.path }) else { return }
        try? FileManager.default.removeItem(atPath: path)
    }
}

/// A fresh directory named `prefix-XXXXXX` for a test's or a demo's own files, beside the servers'
/// directories: under `$MULTIREDLOCK_TEST_DIR` when set (`make` removes it), else under the
/// /tmp/multiredlock-XXXXXX root this process creates and removes at exit.
public func makeScratchDirectory(prefix: String) throws -> String {
    try makeTemporaryDirectory(template: try ServerRegistry.shared.rootDirectory() + "/\(prefix)-XXXXXX")
}
