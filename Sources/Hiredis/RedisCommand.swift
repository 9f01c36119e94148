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

    /// The command name and arguments, for logs, with secrets masked as `***`: every argument of
    /// `AUTH`; the user name and password after `AUTH` in `HELLO`; the password after `AUTH` (one
    /// argument) or `AUTH2` (two) in `MIGRATE`; the value of `requirepass` and `masterauth` in
    /// `CONFIG SET`; the password rules of `ACL SETUSER` (`>pass`, `<pass`, `#hash`, `!hash` show as
    /// `>***` and so on); the value of `auth-pass` in `SENTINEL SET`.
    public var description: String {
        var parts: [String] = []
        var offset = 0
        for length in lengths {
            parts.append(String(decoding: bytes[offset..<offset + length], as: UTF8.self))
            offset += length
        }
        for index in Self.secretIndices(of: parts.map { $0.uppercased() }) {
            let part = parts[index]
            if let first = part.first, index > 0, "><#!".contains(first), Self.isACLSetUser(parts) {
                parts[index] = "\(first)***"
            } else {
                parts[index] = "***"
            }
        }
        return parts.joined(separator: " ")
    }

    private static func isACLSetUser(_ parts: [String]) -> Bool {
        parts.count > 2 && parts[0].uppercased() == "ACL" && parts[1].uppercased() == "SETUSER"
    }

    /// The positions of the arguments that hold secrets, given the upper-cased arguments.
    private static func secretIndices(of upper: [String]) -> [Int] {
        guard let name = upper.first else { return [] }
        var secrets: [Int] = []
        switch name {
        case "AUTH":
            secrets = Array(upper.indices.dropFirst())
        case "HELLO", "MIGRATE":
            var index = 1
            while index < upper.count {
                if upper[index] == "AUTH" {
                    // HELLO … AUTH user pass; MIGRATE … AUTH pass.
                    let count = name == "HELLO" ? 2 : 1
                    secrets += (index + 1..<min(index + 1 + count, upper.count))
                    index += 1 + count
                } else if name == "MIGRATE", upper[index] == "AUTH2" {
                    secrets += (index + 1..<min(index + 3, upper.count))
                    index += 3
                } else if name == "MIGRATE", upper[index] == "KEYS" {
                    break
                } else {
                    index += 1
                }
            }
        case "CONFIG" where upper.count > 1 && upper[1] == "SET":
            // CONFIG SET name value [name value …]
            var index = 2
            while index + 1 < upper.count {
                if secretConfigNames.contains(upper[index]) { secrets.append(index + 1) }
                index += 2
            }
        case "ACL" where upper.count > 2 && upper[1] == "SETUSER":
            for index in upper.indices.dropFirst(3) {
                if let first = upper[index].first, "><#!".contains(first) { secrets.append(index) }
            }
        case "SENTINEL" where upper.count > 1 && upper[1] == "SET":
            // SENTINEL SET master option value [option value …]
            var index = 3
            while index + 1 < upper.count {
                if upper[index] == "AUTH-PASS" { secrets.append(index + 1) }
                index += 2
            }
        default:
            break
        }
        return secrets
    }

    private static let secretConfigNames: Set<String> = ["REQUIREPASS", "MASTERAUTH"]

    /// Why this command cannot go through a ``RedisConnection``, or nil when it can.
    ///
    /// hiredis 0.14.1 classifies a command by its name after dropping one leading "p" (so
    /// "PMONITOR" counts as MONITOR), and keeps SUBSCRIBE, UNSUBSCRIBE and MONITOR callbacks apart
    /// from the reply queue; SSUBSCRIBE (Redis 7) puts the server into pub/sub mode without hiredis
    /// knowing, and `CLIENT REPLY OFF|SKIP` suppresses replies. Each breaks one-reply-per-command.
    var unsupportedReason: String? {
        guard let length = lengths.first, length > 0, length <= 16 else { return nil }
        var name = String(decoding: bytes[0..<length], as: UTF8.self).lowercased()
        if name.hasPrefix("p") { name.removeFirst() }
        switch name {
        case "subscribe", "unsubscribe", "ssubscribe", "sunsubscribe", "monitor":
            return
                "pub/sub and MONITOR commands are not supported: the connection answers one reply per command"
        case "client" where lengths.count > 1 && lengths[1] == 5:
            let sub = String(decoding: bytes[length..<length + 5], as: UTF8.self).lowercased()
            return sub == "reply"
                ? "CLIENT REPLY is not supported: the connection answers one reply per command" : nil
        default:
            return nil
        }
    }

    /// Appends the command in RESP, the Redis protocol: `*<count>\r\n` then `$<length>\r\n<bytes>\r\n`
    /// for each argument. Copies whole runs of bytes: no per-byte appends, no allocation when
    /// `buffer` has room (the connection reuses one).
    func format(into buffer: inout [UInt8]) {
        buffer.reserveCapacity(buffer.count + bytes.count + 24 * (lengths.count + 1))
        Self.appendHeader(UInt8(ascii: "*"), lengths.count, to: &buffer)
        bytes.withUnsafeBufferPointer { source in
            var offset = 0
            for length in lengths {
                Self.appendHeader(UInt8(ascii: "$"), length, to: &buffer)
                buffer.append(contentsOf: UnsafeBufferPointer(rebasing: source[offset..<offset + length]))
                buffer.append(13)
                buffer.append(10)
                offset += length
            }
        }
    }

    /// Appends `mark`, `value` in decimal (not negative: a count or a length), then CRLF, in one copy.
    private static func appendHeader(_ mark: UInt8, _ value: Int, to buffer: inout [UInt8]) {
        // A mark, at most 19 digits and CRLF, written from the end of a buffer on the stack.
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 24) { scratch in
            var index = 24
            index -= 1
            scratch[index] = 10
            index -= 1
            scratch[index] = 13
            var rest = UInt(bitPattern: value)
            repeat {
                index -= 1
                scratch[index] = UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: rest % 10)
                rest /= 10
            } while rest > 0
            index -= 1
            scratch[index] = mark
            buffer.append(contentsOf: UnsafeBufferPointer(rebasing: scratch[index...]))
        }
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
