import LocalRedis
import Testing

/// The fault suites' own helpers: a check of the form `exists == false` ("released") must not pass
/// when the server answers an error instead of `:0`.
@Suite struct FaultSupportTests {
    @Test func existsThrowsOnAnErrorReply() async throws {
        let password = "Pw-\(UInt32.random(in: 0...UInt32.max))"
        let server = try await RedisServerProcess.start(RedisServerConfiguration(password: password))
        defer { server.stopInBackground() }
        // Without the password every command answers NOAUTH: not "absent".
        let reply = try await Fault.command(server.port, ["EXISTS", "k"], password: nil)
        #expect(reply?.hasPrefix("-NOAUTH") == true, "\(reply ?? "(nil)")")
        await #expect(throws: FaultError.self) { try await Fault.exists(server, "k", password: nil) }
        // With it, both answers.
        #expect(try await Fault.exists(server, "k", password: password) == false)
        _ = try await Fault.command(server.port, ["SET", "k", "v"], password: password)
        #expect(try await Fault.exists(server, "k", password: password) == true)
    }
}
