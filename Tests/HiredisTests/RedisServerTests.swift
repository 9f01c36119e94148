import Testing

@testable import Hiredis

// MARK: - Valid addresses

private let validAddresses: [(String, RedisServer)] = [
    ("localhost", RedisServer(host: "localhost")),
    ("localhost:6380", RedisServer(host: "localhost", port: 6380)),
    ("  redis.example.com:7000\n", RedisServer(host: "redis.example.com", port: 7000)),
    ("redis.example.com.", RedisServer(host: "redis.example.com.")),
    ("my_redis-1:1", RedisServer(host: "my_redis-1", port: 1)),
    ("127.0.0.1", RedisServer(host: "127.0.0.1")),
    ("1.2.3.4:6380", RedisServer(host: "1.2.3.4", port: 6380)),
    ("0.0.0.0:65535", RedisServer(host: "0.0.0.0", port: 65_535)),
    ("localhost:06380", RedisServer(host: "localhost", port: 6380)),
    ("[::1]", RedisServer(host: "::1")),
    ("[::1]:6380", RedisServer(host: "::1", port: 6380)),
    ("::1", RedisServer(host: "::1")),
    ("fe80::1:2", RedisServer(host: "fe80::1:2")),
    ("[2001:db8:0:0:0:0:0:1]:7001", RedisServer(host: "2001:db8:0:0:0:0:0:1", port: 7001)),
    ("[::ffff:192.0.2.1]", RedisServer(host: "::ffff:192.0.2.1")),
    ("[fe80::1%eth0]:6380", RedisServer(host: "fe80::1%eth0", port: 6380)),
    ("redis://[fe80::1%25eth0]:6380", RedisServer(host: "fe80::1%eth0", port: 6380)),
    ("redis://localhost", RedisServer(host: "localhost")),
    ("REDIS://localhost", RedisServer(host: "localhost")),
    ("redis://localhost:6380", RedisServer(host: "localhost", port: 6380)),
    ("redis://localhost/", RedisServer(host: "localhost")),
    ("redis://localhost/0", RedisServer(host: "localhost", database: 0)),
    ("redis://localhost:6380/15", RedisServer(host: "localhost", port: 6380, database: 15)),
    ("redis://[::1]:6380/2", RedisServer(host: "::1", port: 6380, database: 2)),
    ("redis://[::1]", RedisServer(host: "::1")),
    ("redis://@host", RedisServer(host: "host")),
    ("redis://:@host", RedisServer(host: "host")),
    ("redis://:pass@host", RedisServer(host: "host", password: "pass")),
    (
        "redis://alice:pass@host:6380/2",
        RedisServer(host: "host", port: 6380, password: "pass", username: "alice", database: 2)
    ),
    ("redis://alice:p%40ss@host", RedisServer(host: "host", password: "p@ss", username: "alice")),
    ("redis://al%3Aice:p%3a%2F@host", RedisServer(host: "host", password: "p:/", username: "al:ice")),
    ("redis://:p%20w%C3%A9@host", RedisServer(host: "host", password: "p wé")),
    ("redis://u:p@ss@host:1", RedisServer(host: "host", port: 1, password: "p@ss", username: "u")),
    ("redis://u:a:b/c?d#e@host", RedisServer(host: "host", password: "a:b/c?d#e", username: "u")),
    (
        "redis://u:pw@[::1]:6380/3",
        RedisServer(host: "::1", port: 6380, password: "pw", username: "u", database: 3)
    ),
    ("unix:/tmp/redis.sock", RedisServer(unixSocket: "/tmp/redis.sock")),
    ("unix:///tmp/redis.sock", RedisServer(unixSocket: "/tmp/redis.sock")),
    ("UNIX:/tmp/redis.sock", RedisServer(unixSocket: "/tmp/redis.sock")),
    ("unix:/tmp/a@b:c.sock", RedisServer(unixSocket: "/tmp/a@b:c.sock")),
    ("unix:///tmp/my%20redis.sock", RedisServer(unixSocket: "/tmp/my redis.sock")),
    ("unix://:pw@/tmp/r.sock", RedisServer(unixSocket: "/tmp/r.sock", password: "pw")),
    (
        "unix://bob:p%40w@/var/run/r.sock",
        RedisServer(unixSocket: "/var/run/r.sock", password: "p@w", username: "bob")
    ),
]

@Test(arguments: validAddresses)
func parsesValidAddress(input: String, expected: RedisServer) throws {
    let server = try RedisServer(parsing: input)
    #expect(server.host == expected.host)
    #expect(server.port == expected.port)
    #expect(server.unixSocketPath == expected.unixSocketPath)
    #expect(server.username == expected.username)
    #expect(server.password == expected.password)
    #expect(server.database == expected.database)
    #expect(server == expected)
    try server.validate()
}

// MARK: - Invalid addresses

private let invalidAddresses: [(String, String)] = [
    ("", "empty address"),
    ("   \t\n", "empty address"),
    ("localhost:abc", "port \"abc\" is not a number"),
    ("localhost:-1", "port \"-1\" is not a number"),
    ("localhost:+1", "not a number"),
    ("localhost:", "empty port"),
    ("localhost:0", "port 0 is out of range 1...65535"),
    ("localhost:65536", "port 65536 is out of range 1...65535"),
    ("localhost:99999999999999999999999", "is out of range 1...65535"),
    ("redis://h:70000", "port 70000 is out of range 1...65535"),
    (":6379", "empty host"),
    ("redis://:6379", "empty host"),
    ("redis://", "empty host"),
    ("redis:///0", "empty host"),
    ("redis://u:pw@", "empty host"),
    ("[::1", "unterminated '['"),
    ("redis://[::1:6379", "unterminated '['"),
    ("[::1]x", "unexpected \"x\" after ']'"),
    ("[::1]6379", "after ']'"),
    ("[::1]:", "empty port"),
    ("[]", "empty IPv6 address"),
    ("[localhost]:6379", "brackets are only for IPv6"),
    ("[::g]", "not a valid IPv6 address"),
    ("[1:2:3:4:5:6:7:8:9]", "not a valid IPv6 address"),
    ("[1::2::3]", "not a valid IPv6 address"),
    ("::1]", "unexpected ']'"),
    ("host:1:2", "more than one ':'"),
    ("redis://::1", "must be in brackets"),
    ("redis://host/abc", "database \"abc\" is not a number"),
    ("redis://host/1/2", "is not a number"),
    ("redis://host/-1", "database -1 is negative"),
    ("redis://host/99999999999999999999999", "is too large"),
    ("redis://u:p%zz@host", "invalid percent-escape in password"),
    ("redis://u:p%4@host", "invalid percent-escape in password"),
    ("redis://u%g1:p@host", "invalid percent-escape \"%g1\" in username"),
    ("redis://u:p%00@host", "password contains a NUL byte"),
    ("redis://u:%C3@host", "not valid UTF-8"),
    ("local\0host", "NUL"),
    ("local host", "whitespace"),
    ("redis://u:p w@host", "whitespace"),
    ("local\u{7}host", "control character U+0007"),
    ("rediss://host:6379", "TLS (rediss://) is not supported: Debian's hiredis 0.14.1 has no SSL"),
    ("http://host", "unsupported scheme \"http://\""),
    ("redis+unix:///tmp/r.sock", "unsupported scheme"),
    ("redis://host?db=2", "query strings"),
    ("redis://host:6379/0?password=x", "query strings"),
    ("redis://host#frag", "fragments"),
    ("host?db=1", "query strings"),
    ("unix:///tmp/r.sock?db=1", "query strings"),
    ("redis://alice@host", "ambiguous"),
    ("redis://alice:@host", "username \"alice\" has no password"),
    ("user:pw@host", "user info needs the redis:// scheme"),
    ("host/0", "unexpected '/'"),
    ("unix:", "empty unix socket path"),
    ("unix://", "expected an absolute socket path"),
    ("unix:tmp/r.sock", "must be absolute"),
    ("unix://tmp/r.sock", "expected an absolute socket path"),
    ("unix://localhost/tmp/r.sock", "expected an absolute socket path"),
    ("unix:/tmp/", "ends with '/'"),
    ("unix:/tmp/%zz", "invalid percent-escape \"%zz\" in unix socket path"),
    ("unix:/" + String(repeating: "s", count: 200), "the limit is"),
    ("host!name", "invalid \"!\" in host"),
    ("hôte", "non-ASCII character"),
    ("a..b", "empty label"),
    ("1.2.3.999", "999 is out of range 0...255"),
    ("1.2.3", "not a valid IPv4 address"),
    ("6379", "not a valid IPv4 address"),
    ("010.0.0.1", "leading zero"),
    (String(repeating: "a", count: 64) + ".com", "longer than 63"),
]

@Test(arguments: invalidAddresses)
func rejectsInvalidAddress(input: String, reason: String) {
    #expect {
        try RedisServer(parsing: input)
    } throws: { error in
        guard let error = error as? RedisAddressError else {
            return false
        }
        return error.reason.contains(reason)
            && error.description == "invalid Redis address \"\(error.address)\": \(error.reason)"
    }
}

@Test func typedThrowsCarriesAddressAndReason() {
    do {
        _ = try RedisServer(parsing: "  redis://:hunter2@h:70000 ")
        Issue.record("expected an error")
    } catch {
        // `error` is statically a RedisAddressError (typed throws).
        #expect(error.address == "redis://:***@h:70000")
        #expect(error.reason == "port 70000 is out of range 1...65535")
        #expect(
            error.description
                == "invalid Redis address \"redis://:***@h:70000\": port 70000 is out of range 1...65535")
    }
}

// MARK: - Password masking

/// Every address holds the password "secret" somewhere; none parses.
private let invalidAddressesWithSecrets = [
    "redis://u:secret@host:99999",
    "redis://:secret@:6379",
    "redis://u:secret@[::1",
    "redis://u:secret@host/abc",
    "redis://u:secret@host/-1",
    "redis://u:secret@host?x=1",
    "redis://u:secret@host:6379/0#frag",
    "redis://host?password=secret",
    "redis://host?a=1&password=secret#x",
    "redis://host#secret",
    "redis://host?secret",
    "redis://secret@host",
    "redis://u:secret%zz@host",
    "redis://u:secret%00@host",
    "redis://u:secret\0@host",
    "redis://u:secret with space@host",
    "redis://u:se@cret@host:0",
    "redis://u:secret/x@host:0",
    "redis://u:secret?x@host:0",
    "redis://u:secret@host@:0",
    "rediss://u:secret@host",
    "REDISS://:secret@host",
    "http://u:secret@host",
    "u:secret@host:6379",
    "u:secret@host://x",
    "secret@host",
    "unix://u:secret@/tmp/x?db=1",
    "unix://u:secret@tmp/x",
    "unix:/tmp/x?password=secret",
    "unix:u:secret@/tmp/x",
    "unix::secret@",
]

@Test(arguments: invalidAddressesWithSecrets)
func errorsNeverShowThePassword(input: String) {
    do {
        let server = try RedisServer(parsing: input)
        Issue.record("unexpectedly parsed as \(server)")
    } catch {
        for text in [error.address, error.reason, error.description, String(describing: error)] {
            #expect(!text.contains("secret"), "\(text)")
            #expect(!text.contains("cret"), "\(text)")
        }
        #expect(error.address.contains("***"))
    }
}

@Test func errorInitializerMasksTheAddress() {
    let error = RedisAddressError(address: "redis://alice:secret@host", reason: "test")
    #expect(error.address == "redis://alice:***@host")
    #expect(!error.description.contains("secret"))
}

@Test(arguments: [
    ("redis://u:secret@host:99999", "redis://u:***@host:99999"),
    ("redis://:secret@h:70000", "redis://:***@h:70000"),
    ("redis://secret@host", "redis://***@host"),
    ("redis://u:se@cret@host", "redis://u:***@host"),
    ("redis://host?db=1&password=secret#frag", "redis://host?db=***&password=***#***"),
    ("u:secret@host", "u:***@host"),
    ("unix:/tmp/a@b:c.sock", "unix:/tmp/a@b:c.sock"),
    ("unix:u:secret@/tmp/x", "unix:u:***@/tmp/x"),
    ("unix://u:secret@/tmp/r.sock", "unix://u:***@/tmp/r.sock"),
    ("localhost:6379", "localhost:6379"),
    ("[::1]:6379", "[::1]:6379"),
    ("redis://alice:***@host:6380/2", "redis://alice:***@host:6380/2"),
])
func maskingPasswords(input: String, masked: String) {
    #expect(RedisServer.maskingPasswords(in: input) == masked)
}

/// One masking rule: a word of free text that is one address is masked as the address alone is
/// (the text masker finds its passwords with the address masker's ranges).
@Test(arguments: [
    "redis://u:secret@host:99999", "redis://secret@host", "redis://u:se@cret@host", "u:secret@host",
    "redis://host?db=1&password=secret#frag", "unix:/tmp/a@b:c.sock", "unix:u:secret@/tmp/x",
    "unix://u:secret@/tmp/r.sock", "redis://:pa,ss@h",
])
func maskingTextAgreesWithMaskingOneAddress(input: String) {
    #expect(RedisServer.maskingPasswords(inText: input) == RedisServer.maskingPasswords(in: input))
    #expect(
        RedisServer.maskingPasswords(inText: "at \(input) now")
            == "at \(RedisServer.maskingPasswords(in: input)) now")
}

@Test(arguments: [
    "redis://alice:secret@host:6380/2",
    "redis://:secret@host",
    "redis://u:se%40cret@[::1]",
    "unix://:secret@/tmp/r.sock",
])
func descriptionsNeverShowThePassword(input: String) throws {
    let server = try RedisServer(parsing: input)
    #expect(server.password?.contains("se") == true)
    for text in [server.description, server.debugDescription, "\(server)", String(reflecting: server)] {
        #expect(!text.contains("secret") && !text.contains("se@cret"), "\(text)")
        #expect(text.contains("***"), "\(text)")
    }
}

@Test func invalidValuesNeverShowThePasswordWhenValidated() {
    let server = RedisServer(host: "host", port: 0, password: "secret", username: "alice")
    #expect {
        try server.validate()
    } throws: { error in
        let text = String(describing: error)
        return !text.contains("secret") && text.contains("redis://alice:***@host:0")
    }
}

// MARK: - Descriptions

@Test(arguments: [
    (RedisServer(host: "127.0.0.1", port: 6380), "127.0.0.1:6380"),
    (RedisServer(host: "localhost"), "localhost:6379"),
    (RedisServer(host: "::1"), "[::1]:6379"),
    (RedisServer(unixSocket: "/tmp/r.sock"), "unix:/tmp/r.sock"),
    (
        RedisServer(host: "host", port: 6380, password: "pw", username: "alice", database: 2),
        "redis://alice:***@host:6380/2"
    ),
    (RedisServer(host: "host", password: "pw"), "redis://:***@host:6379"),
    (RedisServer(host: "host", database: 3), "redis://host:6379/3"),
    (RedisServer(host: "::1", port: 7000, password: "pw"), "redis://:***@[::1]:7000"),
    (RedisServer(host: "host", password: "pw", username: "a@b c"), "redis://a%40b%20c:***@host:6379"),
    (RedisServer(unixSocket: "/tmp/r.sock", password: "pw", username: "bob"), "unix://bob:***@/tmp/r.sock"),
    (RedisServer(unixSocket: "/tmp/r.sock", database: 1), "unix:/tmp/r.sock (db 1)"),
    (RedisServer(unixSocket: "/tmp/my redis%@.sock"), "unix:/tmp/my%20redis%25%40.sock"),
    (RedisServer(unixSocket: "//tmp/r.sock"), "unix:////tmp/r.sock"),
    (RedisServer(host: "unix", port: 6380), "redis://unix:6380"),
    (RedisServer(host: "fe80::1%eth0"), "[fe80::1%eth0]:6379"),
    (RedisServer(host: "fe80::1%25x"), "[fe80::1%2525x]:6379"),
])
func describes(server: RedisServer, expected: String) {
    #expect(server.description == expected)
}

@Test func debugDescriptionListsFieldsWithMaskedPassword() {
    let tcp = RedisServer(host: "h", port: 6380, password: "pw", username: "alice", database: 2)
    #expect(
        tcp.debugDescription
            == #"RedisServer(host: "h", port: 6380, password: ***, username: "alice", database: 2)"#)
    #expect(
        RedisServer(unixSocket: "/tmp/r.sock").debugDescription == #"RedisServer(unixSocket: "/tmp/r.sock")"#)
}

@Test(arguments: [
    "localhost:6379",
    "[::1]:6380",
    "redis://host:6380/2",
    "unix:/tmp/r.sock",
    "redis://alice:pw@h:1/0",
    "unix:///tmp/my%20redis%25%40.sock",
    "unix:////tmp/r.sock",
    "redis://unix:6380",
    "[fe80::1%2525x]:6380",
    "redis://[fe80::1%25eth0]/1",
])
func descriptionRoundTripsWithoutPassword(input: String) throws {
    var server = try RedisServer(parsing: input)
    server.password = nil
    server.username = nil
    #expect(try RedisServer(parsing: server.description) == server)
}

// MARK: - validate()

@Test(arguments: [
    (RedisServer(host: "h", port: 0), "port 0 is out of range 1...65535"),
    (RedisServer(host: "h", port: 65_536), "port 65536 is out of range"),
    (RedisServer(host: "h", port: -1), "port -1 is out of range"),
    (RedisServer(host: ""), "empty host"),
    (RedisServer(host: "a b"), "whitespace"),
    (RedisServer(host: "a\tb"), "whitespace"),
    (RedisServer(host: "a\0b"), "NUL"),
    (RedisServer(host: "[::1]"), "must not be in brackets; use \"::1\""),
    (RedisServer(host: "localhost:6379"), "not an IPv6 address"),
    (RedisServer(host: "bad/host"), "invalid \"/\" in host"),
    (RedisServer(host: "300.1.1.1"), "not a valid IPv4 address"),
    (RedisServer(host: "h", database: -1), "database -1 is negative"),
    (RedisServer(host: "h", username: "alice"), "username \"alice\" has no password"),
    (RedisServer(host: "h", password: ""), "empty password"),
    (RedisServer(host: "h", password: "p", username: ""), "empty username"),
    (RedisServer(host: "h", password: "p\0w"), "password contains a NUL byte"),
    (RedisServer(unixSocket: ""), "empty unix socket path"),
    (RedisServer(unixSocket: "/tmp/a\0b"), "NUL"),
    (RedisServer(unixSocket: "/" + String(repeating: "x", count: 120)), "the limit is"),
])
func validateRejects(server: RedisServer, reason: String) {
    #expect {
        try server.validate()
    } throws: { error in
        (error as? RedisAddressError)?.reason.contains(reason) == true
    }
}

@Test(arguments: [
    RedisServer(host: "localhost"),
    RedisServer(host: "10.0.0.1", port: 1),
    RedisServer(host: "::1", port: 65_535),
    RedisServer(host: "fe80::1%eth0"),
    RedisServer(host: "h", password: "pw", username: "alice", database: 0),
    RedisServer(host: "h", password: "only"),
    RedisServer(unixSocket: "/tmp/r.sock"),
    RedisServer(unixSocket: "relative.sock"),
])
func validateAccepts(server: RedisServer) throws {
    try server.validate()
}

// MARK: - auth, Hashable

@Test func authAliasesPassword() {
    var server = RedisServer(host: "h", password: "one")
    #expect(server.auth == "one")
    server.auth = "two"
    #expect(server.password == "two")
    server.password = nil
    #expect(server.auth == nil)
}

@Test func equalParsesAreEqualAndHashAlike() throws {
    let spellings = [
        "localhost", "localhost:6379", " redis://localhost ", "redis://localhost:6379/", "REDIS://@localhost",
    ]
    let servers = try spellings.map { try RedisServer(parsing: $0) }
    #expect(Set(servers).count == 1)
    #expect(servers[0] == RedisServer(host: "localhost"))

    let unix = try ["unix:/tmp/r.sock", "unix:///tmp/r.sock"].map { try RedisServer(parsing: $0) }
    #expect(unix[0] == unix[1])
    var moved = unix[0]
    moved.host = "ignored"
    moved.port = 1
    #expect(Set([unix[0], moved]).count == 1)

    #expect(try RedisServer(parsing: "[::1]:6379") == RedisServer(parsing: "::1"))
    #expect(try RedisServer(parsing: "localhost:6380") != RedisServer(parsing: "localhost"))
    #expect(try RedisServer(parsing: "redis://h/1") != RedisServer(parsing: "redis://h/2"))
    #expect(try RedisServer(parsing: "redis://:a@h") != RedisServer(parsing: "redis://:b@h"))
    #expect(RedisServer(unixSocket: "/a") != RedisServer(host: "a"))
}

@Test func dumpHidesThePassword() throws {
    let secret = "s3cret-Pa55word"
    var dumped = ""
    dump(RedisServer(host: "h", port: 6380, password: secret, username: "alice", database: 2), to: &dumped)
    #expect(!dumped.contains(secret), "\(dumped)")
    #expect(dumped.contains("password: \"***\""))
    #expect(
        dumped.contains("host: \"h\"") && dumped.contains("port: 6380")
            && dumped.contains("username: \"alice\""))

    var parsed = ""
    dump(try RedisServer(parsing: "redis://alice:\(secret)@h:6380/2"), to: &parsed)
    #expect(!parsed.contains(secret), "\(parsed)")
    let mirror = Mirror(reflecting: RedisServer(unixSocket: "/tmp/r.sock", password: secret))
    #expect(!mirror.children.contains { "\($0.value)".contains(secret) })
}
