import Foundation
import Hiredis
import LocalRedis
import Testing

/// Sockets refused, killed mid-command and closed from twelve tasks at once, for as long as asked:
/// `make churn CHURN_SECONDS=n` (CI runs 60 s), or MULTIREDLOCK_CHURN_SECONDS=n swift test
/// --filter SocketChurnTests. Skipped unless MULTIREDLOCK_CHURN_SECONDS is set.
///
/// The regression test for the socket watcher. With `DispatchSource` read and write sources this
/// load crashed libdispatch's manager thread in 3 of 4 runs of 120 s, after 28 s at the earliest
/// (SIGILL "Source finalized twice" in `_dispatch_source_refs_finalize_unregistration`, the crash
/// CI saw, or SIGSEGV in `_dispatch_event_loop_drain`).
@Suite("Socket churn", .serialized)
struct SocketChurnTests {
    static let seconds: Int? = ProcessInfo.processInfo.environment["MULTIREDLOCK_CHURN_SECONDS"].flatMap {
        Int($0.trimmingCharacters(in: .whitespaces))
    }

    /// What the tasks saw, added up.
    struct Tally: Sendable {
        var connections = 0
        var pongs = 0
        var refused = 0
        var lost = 0
        var killed = 0
        /// PINGs to the refusing port that did not fail promptly with a refusal: each one is a
        /// connection that never heard about its socket.
        var stalls: [String] = []
        /// Other kinds of error from the live server, by kind.
        var otherErrors: [String: Int] = [:]

        static func + (left: Tally, right: Tally) -> Tally {
            var sum = left
            sum.connections += right.connections
            sum.pongs += right.pongs
            sum.refused += right.refused
            sum.lost += right.lost
            sum.killed += right.killed
            sum.stalls += right.stalls
            sum.otherErrors.merge(right.otherErrors, uniquingKeysWith: +)
            return sum
        }
    }

    @Test(
        .enabled(
            if: seconds != nil,
            "socket churn skipped: set MULTIREDLOCK_CHURN_SECONDS (e.g. `make churn CHURN_SECONDS=60`)"))
    func refusedKilledAndClosedSocketsFromManyTasks() async throws {
        let seconds = try #require(
            Self.seconds, "MULTIREDLOCK_CHURN_SECONDS must be a whole number of seconds")
        try #require(seconds > 0, "MULTIREDLOCK_CHURN_SECONDS must be positive")
        let server = try await RedisServerProcess.start()
        defer { server.stopInBackground() }
        let refusing = try RefusingPort()
        defer { refusing.release() }
        let options = RedisConnectionOptions(connectTimeout: .seconds(3), commandTimeout: .seconds(4))
        let live = server.address()
        let refused = RedisServer(host: "127.0.0.1", port: refusing.port)
        let clock = ContinuousClock()
        let end = clock.now + .seconds(seconds)
        print("socket churn: 12 tasks for \(seconds) s; one in three against a refusing port")

        let killer = try RedisConnection(server: live, options: options)
        let tally = try await withThrowingTaskGroup(of: Tally.self) { group in
            // Every 3 ms, CLIENT KILL every other client of the server: their sockets close, often
            // with a command in flight (the reply never comes; a write after the close meets a reset).
            group.addTask {
                var tally = Tally()
                while clock.now < end {
                    let reply = try? await killer.send(["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
                    if case .integer(let count) = reply { tally.killed += Int(count) }
                    try? await Task.sleep(for: .milliseconds(3))
                }
                return tally
            }
            for worker in 0..<12 {
                group.addTask {
                    var tally = Tally()
                    let refusingWorker = worker % 3 == 0
                    while clock.now < end {
                        let connection = try RedisConnection(
                            server: refusingWorker ? refused : live, options: options)
                        tally.connections += 1
                        // 0 to 3 PINGs, then close: some close while connecting, some mid-command.
                        for _ in 0..<(worker % 4) {
                            let (result, elapsed) = await connection.timedResult(
                                of: ["PING"], within: .seconds(10))
                            switch (refusingWorker, result) {
                            case (true, .some(let refusal))
                            where refusal.isRefusal && elapsed < options.connectTimeout:
                                tally.refused += 1
                            case (true, _):
                                tally.stalls.append("\(String(describing: result)) after \(elapsed)")
                            case (false, .some(.success(.status("PONG")))):
                                tally.pongs += 1
                            case (false, .some(.failure(let error))) where error.kind == .connectionLost:
                                tally.lost += 1
                            case (false, let other):
                                let kind = other?.errorKind?.rawValue ?? String(describing: other)
                                tally.otherErrors[kind, default: 0] += 1
                            }
                        }
                        await connection.close()
                    }
                    return tally
                }
            }
            var total = Tally()
            for try await part in group { total = total + part }
            return total
        }
        await killer.close()

        let leftOpen = socketsConnected(toPort: server.port)
        print(
            "socket churn: \(tally.connections) connections in \(seconds) s: \(tally.pongs) PONGs, "
                + "\(tally.refused) refused, \(tally.killed) clients killed, \(tally.lost) commands lost to a "
                + "kill, other errors \(tally.otherErrors); sockets to the server left open: \(leftOpen)")
        // The faults happened: refusals, kills, and commands caught by a kill.
        #expect(tally.refused > 0, "no connect was refused")
        #expect(tally.killed > 0, "CLIENT KILL killed no client")
        #expect(tally.lost > 0, "no command was in flight when its connection was killed")
        #expect(tally.pongs > 0, "no PING was answered")
        #expect(tally.stalls.isEmpty, "refused connects that went unnoticed: \(tally.stalls.prefix(5))")
        // The live server answers at once (or kills): a timeout or connect timeout from it, or no
        // completion at all within 10 s ("nil"), is a connection that stopped hearing about its
        // socket, the stall this test exists to catch.
        let stalled = [
            RedisConnectionError.Kind.timeout.rawValue, RedisConnectionError.Kind.connectTimeout.rawValue,
            "nil",
        ]
        .compactMap { kind in tally.otherErrors[kind].map { "\(kind): \($0)" } }
        #expect(
            stalled.isEmpty,
            "the live server's commands stalled: \(stalled); other errors \(tally.otherErrors)")
        // Every closed connection closed its socket before close() returned.
        #expect(leftOpen == 0, "\(leftOpen) sockets to the server still open after every connection closed")
    }
}
