import Testing

@testable import Hiredis

/// `RedisCommand.format(into:)`, the RESP the connection hands to hiredis, against RESP spelled out
/// by hand.
@Suite("RESP formatting")
struct CommandFormatTests {
    /// The RESP of `arguments`, written the slow and obvious way.
    private static func resp(_ arguments: [[UInt8]]) -> [UInt8] {
        var bytes = Array("*\(arguments.count)\r\n".utf8)
        for argument in arguments {
            bytes += Array("$\(argument.count)\r\n".utf8) + argument + [13, 10]
        }
        return bytes
    }

    /// Commands to format, named so that a failure names its case (not 100 kB of bytes).
    enum Case: String, CaseIterable, CustomTestStringConvertible {
        case ping, setNXPX, emptyArgument, binaryArguments, multiDigitLengths, twelveArguments

        var arguments: [[UInt8]] {
            switch self {
            case .ping: [Array("PING".utf8)]
            case .setNXPX: ["SET", "key", "value", "NX", "PX", "10000"].map { Array($0.utf8) }
            case .emptyArgument: [Array("ECHO".utf8), []]
            case .binaryArguments: [Array("SET".utf8), [0, 13, 10, 255, 0], Array(repeating: 7, count: 10)]
            case .multiDigitLengths:
                [Array("SET".utf8), Array(repeating: 120, count: 99), Array(repeating: 121, count: 100_000)]
            case .twelveArguments: (0..<12).map { Array("argument-\($0)".utf8) }
            }
        }

        var testDescription: String { rawValue }
    }

    @Test(arguments: Case.allCases)
    func formatsAsRESP(_ testCase: Case) {
        let arguments = testCase.arguments
        var buffer: [UInt8] = []
        RedisCommand(bytes: arguments).format(into: &buffer)
        let expected = Self.resp(arguments)
        // Compared here, not in the expectation: a failure names the first difference rather than
        // printing 100 kB of bytes.
        let same = buffer == expected
        let firstDifference =
            (0..<min(buffer.count, expected.count)).first { buffer[$0] != expected[$0] }
            ?? min(buffer.count, expected.count)
        #expect(
            same, "differs from byte \(firstDifference) (\(buffer.count) bytes, \(expected.count) expected)")
    }

    @Test func appendsAfterWhatTheBufferHolds() {
        var buffer = Array("*1\r\n$4\r\nPING\r\n".utf8)
        let before = buffer
        let command: RedisCommand = ["GET", "some-key"]
        command.format(into: &buffer)
        #expect(buffer == before + Self.resp([Array("GET".utf8), Array("some-key".utf8)]))
    }
}
