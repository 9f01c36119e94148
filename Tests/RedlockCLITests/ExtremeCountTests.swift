import LocalRedis
import TestSupport
import Testing

/// `--retries` at and past the library's limit (RedlockOptions.maximumRetries, 1,000,000), against
/// real servers: past it the tool exits 64 with the library's message instead of trapping on
/// `retries + 1` (issue 12, item 2); at it, the lock works.
@Suite struct ExtremeCountTests {
    @Test(arguments: ["9223372036854775807", "1000001"])
    func retriesPastTheLimitExit64(retries: String) async throws {
        let servers = try await Servers.start()
        defer { servers.stopInBackground() }
        let outcome = try await redlock(["--servers", servers.list, "--retries", retries, "acquire", "r"])
        #expect(outcome.status == 64, "\(outcome)")
        #expect(outcome.stdout.isEmpty, "\(outcome)")
        #expect(outcome.stderr.contains("retries must be at most 1000000 (got \(retries))"), "\(outcome)")
        for server in servers.group.servers { #expect(try await server.cli("DBSIZE") == "0") }
    }

    @Test func retriesAtTheLimitWork() async throws {
        let servers = try await Servers.start()
        defer { servers.stopInBackground() }
        let outcome = try await redlock(["--servers", servers.list, "--retries", "1000000", "acquire", "r"])
        #expect(outcome.status == 0, "\(outcome)")
        #expect(try await servers[0].cli("EXISTS", "r") == "1")
    }
}
