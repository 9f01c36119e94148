import Foundation
import JSONText
import Testing

@testable import redlock

// The tool's pure parts, without processes or servers.
@Suite("redlock output and options")
struct OutputTests {
    @Test(arguments: [
        ("plain", #""plain""#),
        ("quote\" back\\slash", #""quote\" back\\slash""#),
        ("line\nfeed\ttab\r", #""line\nfeed\ttab\r""#),
        ("\u{01}\u{1F}\u{7F}", #""\u0001\u001f\u007f""#),
        ("é ✓ 🔒", "\"é ✓ 🔒\""),
    ])
    func jsonStringsAreEscaped(input: String, expected: String) throws {
        #expect(JSON.quoted(input) == expected)
        let decoded = try JSONSerialization.jsonObject(with: Data(expected.utf8), options: .fragmentsAllowed)
        #expect(decoded as? String == input)
    }

    /// The benchmark's fields: fixed decimals (no negative zero), `null` for what is not finite.
    @Test func numbersAndBooleans() {
        let text = JSON.array([
            .number(2.25, digits: 1), .number(-0.04, digits: 1), .number(-1.5, digits: 2),
            .number(7, digits: 0), .number(.infinity, digits: 1), .bool(true), .int(-3),
        ]).text
        #expect(text == "[2.3, 0.0, -1.50, 7, null, true, -3]")
    }

    @Test func aLockPrintsItsFieldsInTheDocumentedOrder() {
        let text = JSON.object([
            ("resource", .string("r")), ("value", .string("v")), ("validity_ms", .int(9)),
            ("nodes", .array([.string("a"), .string("b")])),
        ]).text
        #expect(text == #"{"resource": "r", "value": "v", "validity_ms": 9, "nodes": ["a", "b"]}"#)
    }

    @Test(arguments: [
        ("redis://:secret@h:1", "redis://:***@h:1"),
        ("redis://user:secret@h:1/2", "redis://user:***@h:1/2"),
        ("redis://user:se@cret@h", "redis://user:***@h"),
        ("x redis://:a@h,redis://:b@g y", "x redis://:***@h,redis://:***@g y"),
        ("'unix://:pw@/tmp/s.sock'", "'unix://:***@/tmp/s.sock'"),
        ("redis://onlyone@h", "redis://***@h"),
        ("redis://h:6379 and http://example.com", "redis://h:6379 and http://example.com"),
        ("no url here", "no url here"),
    ])
    func passwordsInURLsAreMasked(input: String, expected: String) {
        #expect(Redactor.redact(input) == expected)
    }

    @Test func thePasswordVariableGoesToServersWithoutOne() throws {
        let servers = try ServerList.parse(
            option: "127.0.0.1:1,redis://:own@127.0.0.1:2,unix:/tmp/r.sock",
            environment: ["REDLOCK_PASSWORD": "shared", "REDLOCK_SERVERS": "ignored:1"])
        #expect(servers.map(\.password) == ["shared", "own", "shared"])
        #expect(servers.map(\.port).prefix(2) == [1, 2])

        let fromVariable = try ServerList.parse(option: nil, environment: ["REDLOCK_SERVERS": " h1:7, h2:8 "])
        #expect(fromVariable.map(\.host) == ["h1", "h2"])
        #expect(fromVariable.allSatisfy { $0.password == nil })
        #expect(try ServerList.parse(option: nil, environment: [:]).map(\.description) == ["127.0.0.1:6379"])
    }

    @Test func settingsCarryTheOptions() throws {
        var options = try CommonOptions.parse([
            "--servers", "h:1", "--ttl", "5000", "--retry-wait", "20", "--drift", "10", "--node-timeout",
            "250",
            "--id", "me", "--wait", "3000",
        ])
        let settings = try options.resolve(environment: [:])
        #expect(settings.ttl == .milliseconds(5000))
        #expect(settings.wait == .milliseconds(3000))
        #expect(settings.options.retries == 3, "the library's retry loop; --wait bounds it by time instead")
        #expect(settings.options.retryWait == .milliseconds(20))
        #expect(settings.options.drift == .milliseconds(10))
        #expect(settings.options.nodeTimeout == .milliseconds(250))
        #expect(settings.options.id == "me")
        options = try CommonOptions.parse([])
        let defaults = try options.resolve(environment: [:])
        #expect(defaults.options.retries == 3 && defaults.wait == nil && defaults.ttl == .seconds(10))
        #expect(try CommonOptions.parse(["--retries", "5"]).resolve(environment: [:]).options.retries == 5)
    }

    @Test func waitStatusesBecomeShellExitCodes() {
        #expect(Child.exitCode(ofWaitStatus: 7 << 8) == 7)
        #expect(Child.exitCode(ofWaitStatus: 0) == 0)
        #expect(Child.exitCode(ofWaitStatus: 15) == 143)
        #expect(Child.exitCode(ofWaitStatus: 9 | 0x80) == 137, "killed with a core dump")
    }
}
