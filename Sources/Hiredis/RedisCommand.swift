/// One Redis command: an array of binary-safe arguments, sent with `redisAsyncCommandArgv`.
///
/// The arguments live in one contiguous buffer, so building a command costs two allocations
/// however many arguments it has.
public struct RedisCommand: Sendable, Hashable, ExpressibleByArrayLiteral, CustomStringConvertible {
    private var bytes: [UInt8] = []
    private var lengths: [Int] = []

    /// A command from text arguments, e.g. `RedisCommand(["SET", "key", "value"])`.
    public init(_ arguments: [String]) {
        var total = 0
        for argument in arguments { total += argument.utf8.count }
        bytes.reserveCapacity(total)
        lengths.reserveCapacity(arguments.count)
        for argument in arguments { append(argument) }
    }

    /// An empty command with room for `count` arguments of `byteCount` bytes in all; fill it with
    /// ``append(_:)``.
    public init(reservingArguments count: Int, bytes byteCount: Int) {
        bytes.reserveCapacity(byteCount)
        lengths.reserveCapacity(count)
    }

    /// A command from binary arguments; any byte, NUL included, is allowed.
    public init(bytes arguments: [[UInt8]]) {
        lengths.reserveCapacity(arguments.count)
        for argument in arguments { append(bytes: argument) }
    }

    public init(arrayLiteral elements: String...) {
        self.init(elements)
    }

    /// Appends a text argument.
    public mutating func append(_ argument: String) {
        let before = bytes.count
        bytes.append(contentsOf: argument.utf8)
        lengths.append(bytes.count - before)
    }

    /// Appends a binary argument.
    public mutating func append(bytes argument: [UInt8]) {
        bytes.append(contentsOf: argument)
        lengths.append(argument.count)
    }

    /// The number of arguments, command name included.
    public var count: Int { lengths.count }

    /// The command name and arguments, for logs; arguments after `AUTH` are masked.
    public var description: String {
        var parts: [String] = []
        var offset = 0
        var masking = false
        for length in lengths {
            let text = String(decoding: bytes[offset..<offset + length], as: UTF8.self)
            parts.append(masking ? "***" : text)
            if parts.count == 1 { masking = text.uppercased() == "AUTH" }
            offset += length
        }
        return parts.joined(separator: " ")
    }

    /// Appends the command in RESP, the Redis protocol: `*<count>\r\n` then `$<length>\r\n<bytes>\r\n`
    /// for each argument.
    func format(into buffer: inout [UInt8]) {
        buffer.reserveCapacity(buffer.count + bytes.count + 16 * (lengths.count + 1))
        buffer.append(UInt8(ascii: "*"))
        appendDecimal(lengths.count, to: &buffer)
        var offset = 0
        for length in lengths {
            buffer.append(UInt8(ascii: "$"))
            appendDecimal(length, to: &buffer)
            buffer.append(contentsOf: bytes[offset..<offset + length])
            buffer.append(13)
            buffer.append(10)
            offset += length
        }
    }

    /// Appends `value` in decimal, then CRLF.
    private func appendDecimal(_ value: Int, to buffer: inout [UInt8]) {
        var digits:
            (
                UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8
            ) = (
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
            )
        var count = 0
        var rest = value
        withUnsafeMutableBytes(of: &digits) { digits in
            repeat {
                digits[count] = UInt8(ascii: "0") + UInt8(rest % 10)
                rest /= 10
                count += 1
            } while rest > 0
            for index in stride(from: count - 1, through: 0, by: -1) { buffer.append(digits[index]) }
        }
        buffer.append(13)
        buffer.append(10)
    }

    /// Calls `body` with hiredis's `argc`, `argv` and `argvlen` for this command.
    func withArgv<Result>(
        _ body: (Int32, UnsafeMutablePointer<UnsafePointer<CChar>?>, UnsafePointer<Int>) -> Result
    ) -> Result {
        let count = lengths.count
        return withUnsafeTemporaryAllocation(of: UnsafePointer<CChar>?.self, capacity: max(count, 1)) {
            argv in
            bytes.withUnsafeBufferPointer { storage in
                // An empty buffer has no base address; zero-length arguments still need a pointer.
                let empty: StaticString = ""
                let base =
                    storage.baseAddress.map { UnsafeRawPointer($0) } ?? UnsafeRawPointer(empty.utf8Start)
                var offset = 0
                for index in 0..<count {
                    argv[index] = (base + offset).assumingMemoryBound(to: CChar.self)
                    offset += lengths[index]
                }
                return lengths.withUnsafeBufferPointer { lens in
                    body(Int32(count), argv.baseAddress!, lens.baseAddress!)
                }
            }
        }
    }
}
