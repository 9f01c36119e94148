import Foundation
import TestSupport
import Testing

/// TestSupport's child processes (on LocalRedis's `spawnChild`) get only the environment the test
/// names: a secret in the test process's environment does not reach them.
@Suite struct SubprocessTests {
    @Test func aChildGetsOnlyTheAllowedVariablesAndWhatTheTestNames() async throws {
        let allowed: Set = ["PATH", "HOME", "LANG", "TMPDIR", "ASAN_OPTIONS", "TSAN_OPTIONS"]
        // A variable of this process that is not on the allow-list (PWD, MAKEFLAGS, … under `make`).
        let outside = try #require(
            ProcessInfo.processInfo.environment.keys.sorted().first { !allowed.contains($0) },
            "this process has no variable beyond the allow-list")
        let result = try await Subprocess.run(
            "/usr/bin/env", [], environment: childEnvironment(["NAMED": "yes"]))
        let lines = result.stdout.split(separator: "\n").map(String.init)
        // Booleans and names only: a failure must not print the variables' values.
        let leaked = lines.contains { $0.hasPrefix(outside + "=") }
        let named = lines.contains("NAMED=yes")
        let hasPath = lines.contains { $0.hasPrefix("PATH=") }
        #expect(result.status == 0, "\(result.stderr)")
        #expect(!leaked, "\(outside) reached the child")
        #expect(named)
        #expect(hasPath)
        let names = Set(lines.compactMap { $0.split(separator: "=", maxSplits: 1).first.map(String.init) })
        #expect(names.isSubset(of: allowed.union(["NAMED"])), "\(names.subtracting(allowed))")
    }

    /// `redlock`'s environment carries the servers' password in REDLOCK_PASSWORD (never argv), and an
    /// empty value leaves the variable out.
    @Test func theRedlockEnvironmentHasThePasswordOnlyWhenAsked() {
        #expect(redlockEnvironment()["REDLOCK_PASSWORD"]?.isEmpty == false)
        #expect(redlockEnvironment(["REDLOCK_PASSWORD": ""])["REDLOCK_PASSWORD"] == nil)
    }
}
