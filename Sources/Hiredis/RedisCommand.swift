/// One Redis command: an array of binary-safe arguments, sent as RESP (the Redis protocol) with
/// `redisAsyncFormattedCommand`.
///
/// The arguments are kept already in RESP (`$<length>\r\n<bytes>\r\n` each) in one contiguous
/// buffer: building a command costs one allocation however many arguments it has, and sending it
/// is one header and one copy.
public struct RedisCommand: Sendable, Hashable, ExpressibleByArrayLiteral, CustomStringConvertible {
    /// The arguments in RESP, without the `*<count>` header.
    private var body: [UInt8] = []
    /// The number of arguments, command name included.
    public private(set) var count = 0

    /// A command from text arguments, e.g. `RedisCommand(["SET", "key", "value"])`.
    public init(_ arguments: [String]) {
        var total = 0
        for argument in arguments { total += argument.utf8.count + Self.overhead }
        body.reserveCapacity(total)
        for argument in arguments { append(argument) }
    }

    /// A command from binary arguments; any byte, NUL included, is allowed.
    public init(bytes arguments: [[UInt8]]) {
        var total = 0
        for argument in arguments { total += argument.count + Self.overhead }
        body.reserveCapacity(total)
        for argument in arguments { append(bytes: argument) }
    }

    public init(arrayLiteral elements: String...) {
        self.init(elements)
    }

    /// An empty command with room for arguments of `byteCount` bytes in all (RESP framing is
    /// counted here); fill it with ``append(_:)``. For callers in this package that build a command
    /// on every operation in one allocation.
    package init(reservingBytes byteCount: Int) {
        body.reserveCapacity(byteCount + 4 * Self.overhead)
    }

    /// Appends every argument of `other`, in order.
    package mutating func append(contentsOf other: RedisCommand) {
        body.append(contentsOf: other.body)
        count += other.count
    }

    /// The command without its first `count` arguments (e.g. a script call's tail).
    package func droppingFirst(_ count: Int) -> RedisCommand {
        var start = 0
        var dropped = 0
        while dropped < count, let (_, next) = argument(at: start) {
            start = next
            dropped += 1
        }
        var rest = RedisCommand([])
        rest.body = Array(body[start...])
        rest.count = self.count - dropped
        return rest
    }

    /// The bytes this command's arguments take in RESP (to reserve room for them).
    package var byteCount: Int { body.count }

    /// The most bytes RESP adds around one argument: `$`, up to 19 digits, and two CRLFs.
    private static let overhead = 24

    /// Appends a text argument.
    public mutating func append(_ argument: String) {
        var argument = argument
        argument.withUTF8 { append(raw: UnsafeRawBufferPointer($0)) }
    }

    /// Appends a binary argument.
    public mutating func append(bytes argument: [UInt8]) {
        argument.withUnsafeBytes { append(raw: $0) }
    }

    private mutating func append(raw argument: UnsafeRawBufferPointer) {
        Self.appendHeader(UInt8(ascii: "$"), argument.count, to: &body)
        body.append(contentsOf: argument)
        body.append(13)
        body.append(10)
        count += 1
    }

    /// The bytes of the argument whose `$` header starts at `index` in the body, and where the next
    /// one starts; nil past the last argument.
    private func argument(at index: Int) -> (Range<Int>, next: Int)? {
        guard index < body.count else { return nil }
        // `$<length>\r\n<bytes>\r\n`: the length's digits run from after the mark up to the CR.
        var length = 0
        var cursor = index + 1
        while body[cursor] != 13 {
            length = length * 10 + Int(body[cursor] &- UInt8(ascii: "0"))
            cursor += 1
        }
        let start = cursor + 2
        return (start..<start + length, start + length + 2)
    }

    /// The arguments, decoded back from the RESP body (for logs; not on the sending path).
    private var arguments: [ArraySlice<UInt8>] {
        var result: [ArraySlice<UInt8>] = []
        result.reserveCapacity(count)
        var index = 0
        while let (range, next) = argument(at: index) {
            result.append(body[range])
            index = next
        }
        return result
    }

    /// The command name and arguments, for logs, with secrets masked as `***`: every argument of
    /// `AUTH`; the user name and password after `AUTH` in `HELLO`; the password after `AUTH` (one
    /// argument) or `AUTH2` (two) in `MIGRATE`; the value of `requirepass` and `masterauth` in
    /// `CONFIG SET`; the password rules of `ACL SETUSER` (`>pass`, `<pass`, `#hash`, `!hash` show as
    /// `>***` and so on); the value of `auth-pass` in `SENTINEL SET`.
    public var description: String {
        var parts = arguments.map { String(decoding: $0, as: UTF8.self) }
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
        // Runs for every command sent: decodes the name only when its length and first letter are
        // those of a name below (with or without the leading "p"), so SET, EVAL and EVALSHA
        // allocate nothing here.
        guard let (first, next) = argument(at: 0) else { return nil }
        switch first.count {
        case 6, 7, 8, 9, 10, 11, 12, 13: break
        default: return nil
        }
        // The refused names start with s, u, m or c, after an optional p (either case): EVALSHA
        // (7 letters) stops here too.
        var letter = body[first.lowerBound] | 0x20
        if letter == UInt8(ascii: "p") { letter = body[first.lowerBound + 1] | 0x20 }
        switch letter {
        case UInt8(ascii: "s"), UInt8(ascii: "u"), UInt8(ascii: "m"), UInt8(ascii: "c"): break
        default: return nil
        }
        var name = String(decoding: body[first], as: UTF8.self).lowercased()
        if name.hasPrefix("p") { name.removeFirst() }
        switch name {
        case "subscribe", "unsubscribe", "ssubscribe", "sunsubscribe", "monitor":
            return
                "pub/sub and MONITOR commands are not supported: the connection answers one reply per command"
        case "client":
            guard let (second, _) = argument(at: next), second.count == 5 else { return nil }
            let sub = String(decoding: body[second], as: UTF8.self).lowercased()
            return sub == "reply"
                ? "CLIENT REPLY is not supported: the connection answers one reply per command" : nil
        default:
            return nil
        }
    }

    /// Appends the command in RESP, the Redis protocol: `*<count>\r\n` then `$<length>\r\n<bytes>\r\n`
    /// for each argument, already formatted: one header and one copy, no allocation when `buffer`
    /// has room (the connection reuses one).
    func format(into buffer: inout [UInt8]) {
        buffer.reserveCapacity(buffer.count + body.count + Self.overhead)
        Self.appendHeader(UInt8(ascii: "*"), count, to: &buffer)
        buffer.append(contentsOf: body)
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
}
