import CHiredis
import Testing

@testable import Hiredis

/// Feeds RESP bytes through hiredis's own reader and copies the one reply it produces, the way the
/// connection does inside a reply callback.
private func parse(_ resp: [UInt8]) throws -> RedisReply {
    let reader = try #require(redisReaderCreate())
    defer { redisReaderFree(reader) }
    let fed = resp.withUnsafeBytes { bytes in
        redisReaderFeed(reader, bytes.baseAddress?.assumingMemoryBound(to: CChar.self), bytes.count)
    }
    try #require(fed == REDIS_OK)
    var raw: UnsafeMutableRawPointer?
    try #require(redisReaderGetReply(reader, &raw) == REDIS_OK)
    let reply = try #require(raw, "the reader wants more bytes than the test fed it")
    defer { freeReplyObject(reply) }
    // Nothing may be left over: each test feeds exactly one reply.
    var rest: UnsafeMutableRawPointer?
    #expect(redisReaderGetReply(reader, &rest) == REDIS_OK && rest == nil)
    return RedisReply(copying: reply.assumingMemoryBound(to: redisReply.self))
}

private func parse(_ resp: String) throws -> RedisReply {
    try parse(Array(resp.utf8))
}

/// The bytes the connection hands to hiredis for `command`.
private func wireFormat(of command: RedisCommand) throws -> [UInt8] {
    var buffer: [UInt8] = []
    command.format(into: &buffer)
    return buffer
}

@Suite("RedisReply and RedisCommand (no server)")
struct ReplyTests {
    // MARK: - Simple types

    @Test func statusReply() throws {
        #expect(try parse("+OK\r\n") == .status("OK"))
        #expect(try parse("+PONG\r\n") == .status("PONG"))
        #expect(try parse("+\r\n") == .status(""))
    }

    @Test func errorReplyKeepsTheServersMessage() throws {
        let reply = try parse("-WRONGTYPE Operation against a key holding the wrong kind of value\r\n")
        #expect(reply == .error("WRONGTYPE Operation against a key holding the wrong kind of value"))
        #expect(reply.isError)
        #expect(reply.string == "WRONGTYPE Operation against a key holding the wrong kind of value")
    }

    @Test func integerReplies() throws {
        #expect(try parse(":0\r\n") == .integer(0))
        #expect(try parse(":1\r\n") == .integer(1))
        #expect(try parse(":-1\r\n") == .integer(-1))
        #expect(try parse(":-1234567890123\r\n") == .integer(-1_234_567_890_123))
        #expect(try parse(":9223372036854775807\r\n") == .integer(Int64.max))
        #expect(try parse(":42\r\n").integer == 42)
    }

    // MARK: - Bulk strings

    @Test func bulkString() throws {
        #expect(try parse("$5\r\nhello\r\n") == .bulkString(Array("hello".utf8)))
        #expect(try parse("$5\r\nhello\r\n").string == "hello")
        #expect(!(try parse("$5\r\nhello\r\n").isError))
    }

    @Test func emptyBulkStringIsNotNull() throws {
        #expect(try parse("$0\r\n\r\n") == .bulkString([]))
    }

    @Test func bulkStringIsBinarySafe() throws {
        let payload: [UInt8] = [0, 1, 13, 10, 0, 255, 36, 45, 13, 10, 13, 10, 0]
        let resp = Array("$\(payload.count)\r\n".utf8) + payload + [13, 10]
        #expect(try parse(resp) == .bulkString(payload))

        let everyByte = (0...255).map { UInt8($0) } + (0...255).reversed().map { UInt8($0) }
        let long = Array("$\(everyByte.count)\r\n".utf8) + everyByte + [13, 10]
        #expect(try parse(long) == .bulkString(everyByte))
    }

    @Test func nullBulkStringAndNullArrayAreNull() throws {
        #expect(try parse("$-1\r\n") == .null)
        #expect(try parse("*-1\r\n") == .null)
    }

    // MARK: - Arrays

    @Test func emptyArray() throws {
        #expect(try parse("*0\r\n") == .array([]))
    }

    @Test func flatArrayOfMixedTypes() throws {
        let reply = try parse("*5\r\n$3\r\nfoo\r\n:-7\r\n+OK\r\n-ERR bad\r\n$-1\r\n")
        #expect(reply == .array([.bulk("foo"), .integer(-7), .status("OK"), .error("ERR bad"), .null]))
    }

    @Test func nestedArrays() throws {
        let resp =
            "*4\r\n"
            + "*2\r\n$1\r\na\r\n*2\r\n:1\r\n*0\r\n"  // [a, [1, []]]
            + "*-1\r\n"  // null array inside an array
            + "$0\r\n\r\n"  // empty bulk string
            + "*1\r\n*1\r\n*1\r\n$4\r\ndeep\r\n"  // [[[deep]]]
        let expected: RedisReply = .array([
            .array([.bulk("a"), .array([.integer(1), .array([])])]),
            .null,
            .bulkString([]),
            .array([.array([.array([.bulk("deep")])])]),
        ])
        #expect(try parse(resp) == expected)
    }

    @Test func largeArrayKeepsItsOrder() throws {
        let count = 10_000
        var resp = "*\(count)\r\n"
        for index in 0..<count { resp += "$\(String(index).utf8.count)\r\n\(index)\r\n" }
        let reply = try parse(resp)
        #expect(reply == .array((0..<count).map { .bulk(String($0)) }))
    }

    @Test func accessorsOnOtherTypes() {
        #expect(RedisReply.integer(3).string == nil)
        #expect(RedisReply.null.string == nil)
        #expect(RedisReply.null.integer == nil)
        #expect(RedisReply.status("3").integer == nil)
        #expect(RedisReply.array([]).isError == false)
        #expect(RedisReply.status("OK").string == "OK")
    }

    // MARK: - RedisCommand

    @Test func descriptionMasksTheAuthPassword() {
        let password = "s3cret-Pa55word"
        let plain: RedisCommand = ["AUTH", password]
        #expect(!plain.description.contains(password))
        #expect(plain.description == "AUTH ***")

        let withUser: RedisCommand = ["AUTH", "alice", password]
        #expect(!withUser.description.contains(password))
        #expect(withUser.description.hasPrefix("AUTH "))

        let lowercase: RedisCommand = ["auth", password]
        #expect(!lowercase.description.contains(password))

        var appended: RedisCommand = ["Auth"]
        appended.append(bytes: Array(password.utf8))
        #expect(!appended.description.contains(password))
    }

    @Test func descriptionMasksPasswordsInOtherCommands() {
        let secret = "s3cret-Pa55word"
        let commands: [(RedisCommand, String)] = [
            (["HELLO", "3", "AUTH", "alice", secret, "SETNAME", "app"], "HELLO 3 AUTH *** *** SETNAME app"),
            (["hello", "2", "auth", "alice", secret], "hello 2 auth *** ***"),
            (["CONFIG", "SET", "requirepass", secret], "CONFIG SET requirepass ***"),
            (
                ["config", "set", "maxmemory", "1mb", "masterauth", secret],
                "config set maxmemory 1mb masterauth ***"
            ),
            (
                [
                    "ACL", "SETUSER", "bob", "on", ">" + secret, "<" + secret, "#" + secret, "!" + secret,
                    "~*", "+get",
                ],
                "ACL SETUSER bob on >*** <*** #*** !*** ~* +get"
            ),
            (
                ["MIGRATE", "h", "6379", "", "0", "5000", "COPY", "AUTH", secret, "KEYS", "k1", "AUTH"],
                "MIGRATE h 6379  0 5000 COPY AUTH *** KEYS k1 AUTH"
            ),
            (
                ["MIGRATE", "h", "6379", "k", "0", "5000", "AUTH2", "alice", secret],
                "MIGRATE h 6379 k 0 5000 AUTH2 *** ***"
            ),
            (["SENTINEL", "SET", "mymaster", "auth-pass", secret], "SENTINEL SET mymaster auth-pass ***"),
        ]
        for (command, expected) in commands {
            #expect(!command.description.contains(secret), "\(command)")
            #expect(command.description == expected)
        }
        // Look-alikes stay whole.
        #expect(RedisCommand(["CONFIG", "GET", "requirepass"]).description == "CONFIG GET requirepass")
        #expect(RedisCommand(["SET", ">k", "#v"]).description == "SET >k #v")
    }

    @Test func formatBufferIsNULTerminatedPastTheCommand() {
        var buffer: [UInt8] = []
        // A long command first leaves stale bytes in the reused buffer.
        ConnectionCore.formatForHiredis(["SET", "key", String(repeating: "x", count: 100)], into: &buffer)
        ConnectionCore.formatForHiredis(["PING"], into: &buffer)
        #expect(buffer == Array("*1\r\n$4\r\nPING\r\n".utf8) + [0])
    }

    @Test func descriptionShowsOtherCommandsWhole() {
        let command: RedisCommand = ["SET", "key", "AUTH"]
        #expect(command.description == "SET key AUTH")
        #expect(RedisCommand(["GET", "auth"]).description == "GET auth")
        #expect(command.count == 3)
    }

    @Test func argvIsBinarySafeOnTheWire() throws {
        let key: [UInt8] = [107, 0, 101, 121]  // "k\0ey"
        let value: [UInt8] = [13, 10, 0, 36, 51, 13, 10, 255]
        var command = RedisCommand(bytes: [Array("SET".utf8), key])
        command.append(bytes: value)
        command.append("")
        command.append(bytes: [])
        let expected =
            Array("*5\r\n$3\r\nSET\r\n$4\r\n".utf8) + key + Array("\r\n$8\r\n".utf8) + value
            + Array("\r\n$0\r\n\r\n$0\r\n\r\n".utf8)
        #expect(try wireFormat(of: command) == expected)
        #expect(command.count == 5)
    }

    @Test func argvOfEmptyArguments() throws {
        // Only empty arguments: the byte buffer is empty, but argv must still hold valid pointers.
        let command = RedisCommand(bytes: [[], []])
        #expect(try wireFormat(of: command) == Array("*2\r\n$0\r\n\r\n$0\r\n\r\n".utf8))
        #expect(RedisCommand([]).count == 0)
    }
}
