import Testing

@testable import Hiredis

/// `RedisCommand.droppingFirst(_:)`: a script call's tail, taken from the EVALSHA command for the
/// EVAL fallback after NOSCRIPT.
@Suite("RedisCommand tails")
struct CommandTailTests {
    private static func resp(_ command: RedisCommand) -> [UInt8] {
        var buffer: [UInt8] = []
        command.format(into: &buffer)
        return buffer
    }

    @Test func droppingTheFirstArgumentsLeavesTheRestInRESP() {
        let long = String(repeating: "v", count: 1234)
        let command: RedisCommand = ["EVALSHA", "0123456789abcdef", "1", "key", long, ""]
        let tail = command.droppingFirst(2)
        #expect(tail.count == 4)
        #expect(Self.resp(tail) == Self.resp(["1", "key", long, ""]))
        #expect(tail == RedisCommand(["1", "key", long, ""]))
        #expect(command.droppingFirst(0) == command)
        #expect(command.droppingFirst(6).count == 0)
        #expect(command.droppingFirst(9).count == 0)
    }
}
