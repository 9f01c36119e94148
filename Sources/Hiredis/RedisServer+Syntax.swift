// The syntax of a Redis address: the parser behind `RedisServer(parsing:)`, the checks behind
// `validate()`, and the pieces `description` prints with.
//
// The parser works on the UTF-8 bytes of the address: every delimiter it looks for is ASCII, so a
// delimiter can never hide inside a multi-byte character or a grapheme cluster.

// Nested in RedisServer, so that these helpers (shared with RedisServer.swift, RedisServer+Masking.swift
// and RedisServerList.swift) cannot clash with other files' names in the module.
extension RedisServer {
    enum ASCII {
        static let nul: UInt8 = 0x00
        static let hash = UInt8(ascii: "#")
        static let percent = UInt8(ascii: "%")
        static let ampersand = UInt8(ascii: "&")
        static let comma = UInt8(ascii: ",")
        static let plus = UInt8(ascii: "+")
        static let minus = UInt8(ascii: "-")
        static let dot = UInt8(ascii: ".")
        static let slash = UInt8(ascii: "/")
        static let colon = UInt8(ascii: ":")
        static let equals = UInt8(ascii: "=")
        static let question = UInt8(ascii: "?")
        static let at = UInt8(ascii: "@")
        static let openBracket = UInt8(ascii: "[")
        static let closeBracket = UInt8(ascii: "]")
        static let underscore = UInt8(ascii: "_")
        static let tilde = UInt8(ascii: "~")

        static func isDigit(_ byte: UInt8) -> Bool {
            (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
        }

        static func isLetter(_ byte: UInt8) -> Bool {
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte | 0x20)
        }

        static func hexValue(_ byte: UInt8) -> UInt8? {
            if isDigit(byte) {
                return byte - UInt8(ascii: "0")
            }
            let lower = byte | 0x20
            if (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(lower) {
                return lower - UInt8(ascii: "a") + 10
            }
            return nil
        }

        /// RFC 3986 "unreserved": never needs percent-encoding.
        static func isUnreserved(_ byte: UInt8) -> Bool {
            isLetter(byte) || isDigit(byte) || byte == minus || byte == dot || byte == underscore
                || byte == tilde
        }

        /// Printed as is in a unix socket path: unreserved characters, '/' and the sub-delimiters
        /// that mean nothing to the parser ('@', '%', '?', '#' and whitespace are encoded).
        static func isPathCharacter(_ byte: UInt8) -> Bool {
            isUnreserved(byte) || "/:!$&'()*+,;=".utf8.contains(byte)
        }
    }

    typealias Bytes = ArraySlice<UInt8>

    enum Syntax {
        struct Failure: Error {
            var reason: String

            init(_ reason: String) {
                self.reason = reason
            }
        }

        /// The longest unix socket path hiredis can connect to: `sun_path` minus its NUL
        /// (hiredis 0.14.1 silently truncates longer paths).
        #if os(Linux)
            static let maxUnixSocketPathBytes = 107
        #else
            static let maxUnixSocketPathBytes = 103
        #endif

        static let tlsUnsupported = "TLS (rediss://) is not supported: Debian's hiredis 0.14.1 has no SSL"

        static func text(_ bytes: Bytes) -> String {
            String(decoding: bytes, as: UTF8.self)
        }

        static func trimmingWhitespace(_ string: String) -> String {
            let scalars = string.unicodeScalars
            guard let first = scalars.firstIndex(where: { !$0.properties.isWhitespace }),
                let last = scalars.lastIndex(where: { !$0.properties.isWhitespace })
            else {
                return ""
            }
            return String(scalars[first...last])
        }

        // MARK: Whole address

        static func parse(_ address: String) throws(Failure) -> RedisServer {
            guard !address.isEmpty else {
                throw Failure("empty address")
            }
            try checkCharacters(address)
            let bytes = Array(address.utf8)[...]
            if let (scheme, rest) = splitScheme(bytes) {
                switch scheme.lowercased() {
                case "redis":
                    return try parseRedisURL(rest)
                case "rediss":
                    throw Failure(tlsUnsupported)
                case "unix":
                    return try parseUnixURL(rest)
                default:
                    throw Failure("unsupported scheme \"\(scheme)://\" (expected redis:// or unix://)")
                }
            }
            if let rest = droppingUnixPrefix(bytes) {
                try rejectQueryAndFragment(rest, hint: "")
                return RedisServer(unixSocket: try unixSocketPath(rest))
            }
            return try parseHostPortForm(bytes)
        }

        static func checkCharacters(_ address: String) throws(Failure) {
            for scalar in address.unicodeScalars {
                if scalar.value == 0 {
                    throw Failure("contains a NUL byte")
                }
                if scalar.properties.isWhitespace {
                    throw Failure(
                        "contains whitespace (percent-encode a space in a password or a path as %20)")
                }
                if scalar.properties.generalCategory == .control {
                    let hex = String(scalar.value, radix: 16, uppercase: true)
                    let padded = String(repeating: "0", count: max(0, 4 - hex.count)) + hex
                    throw Failure("contains the control character U+\(padded)")
                }
            }
        }

        /// `scheme` and what follows `scheme://`, when the address starts with a valid scheme.
        static func splitScheme(_ bytes: Bytes) -> (scheme: String, rest: Bytes)? {
            guard let separator = bytes.firstRange(of: "://".utf8) else {
                return nil
            }
            let scheme = bytes[..<separator.lowerBound]
            guard let first = scheme.first, ASCII.isLetter(first),
                scheme.allSatisfy({
                    ASCII.isLetter($0) || ASCII.isDigit($0) || $0 == ASCII.plus || $0 == ASCII.minus
                        || $0 == ASCII.dot
                })
            else {
                return nil
            }
            return (text(scheme), bytes[separator.upperBound...])
        }

        /// What follows `unix:`, when the address starts with it (in any case).
        static func droppingUnixPrefix(_ bytes: Bytes) -> Bytes? {
            let prefix = bytes.prefix(5)
            guard prefix.count == 5, text(prefix).lowercased() == "unix:" else {
                return nil
            }
            return bytes.dropFirst(5)
        }

        /// `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address, without a scheme.
        static func parseHostPortForm(_ bytes: Bytes) throws(Failure) -> RedisServer {
            if bytes.contains(ASCII.at) {
                throw Failure("user info needs the redis:// scheme, as in redis://user:password@host:6379")
            }
            try rejectQueryAndFragment(bytes, hint: "; use redis://host:6379/2 to select a database")
            if bytes.contains(ASCII.slash) {
                throw Failure("unexpected '/'; use redis://host:6379/2 to select a database")
            }
            let (host, port) = try hostAndPort(bytes, allowBareIPv6: true)
            return RedisServer(host: host, port: port)
        }

        /// What follows `redis://`: `[user[:password]@]host[:port][/db]`.
        static func parseRedisURL(_ rest: Bytes) throws(Failure) -> RedisServer {
            var authorityAndPath = rest
            var credentials: (username: String?, password: String?) = (nil, nil)
            // The last '@': a password may contain a raw '@' (or '/', '?', '#'), a host never does.
            if let at = rest.lastIndex(of: ASCII.at) {
                credentials = try userInfo(rest[..<at])
                authorityAndPath = rest[rest.index(after: at)...]
            }
            try rejectQueryAndFragment(
                authorityAndPath,
                hint: "; write the database as a path (redis://host:6379/2) and credentials before the host"
                    + " (redis://user:password@host)"
            )
            let slash = authorityAndPath.firstIndex(of: ASCII.slash) ?? authorityAndPath.endIndex
            let (host, port) = try hostAndPort(authorityAndPath[..<slash], allowBareIPv6: false)
            let database = try databaseNumber(authorityAndPath[slash...])
            return RedisServer(
                host: host,
                port: port,
                password: credentials.password,
                username: credentials.username,
                database: database
            )
        }

        /// What follows `unix://`: `/path` or `[user[:password]@]/path`.
        static func parseUnixURL(_ rest: Bytes) throws(Failure) -> RedisServer {
            var pathPart = rest
            var credentials: (username: String?, password: String?) = (nil, nil)
            if rest.first != ASCII.slash {
                // Credentials end at the last "@/", as the path starts with '/'.
                var at: Bytes.Index?
                var index = rest.endIndex
                while index > rest.startIndex {
                    index = rest.index(before: index)
                    if rest[index] == ASCII.at, rest.index(after: index) < rest.endIndex,
                        rest[rest.index(after: index)] == ASCII.slash
                    {
                        at = index
                        break
                    }
                }
                guard let at else {
                    throw Failure(
                        "expected an absolute socket path after unix://, as in unix:///tmp/redis.sock")
                }
                credentials = try userInfo(rest[..<at])
                pathPart = rest[rest.index(after: at)...]
            }
            try rejectQueryAndFragment(pathPart, hint: "")
            return RedisServer(
                unixSocket: try unixSocketPath(pathPart),
                password: credentials.password,
                username: credentials.username
            )
        }

        static func rejectQueryAndFragment(_ bytes: Bytes, hint: String) throws(Failure) {
            guard let index = bytes.firstIndex(where: { $0 == ASCII.question || $0 == ASCII.hash }) else {
                return
            }
            if bytes[index] == ASCII.question {
                throw Failure("query strings (\"?...\") are not supported" + hint)
            }
            throw Failure("fragments (\"#...\") are not supported")
        }

        // MARK: Parts

        /// `user:password`, percent-decoded; empty parts are `nil`.
        static func userInfo(_ bytes: Bytes) throws(Failure) -> (username: String?, password: String?) {
            if bytes.isEmpty {
                return (nil, nil)
            }
            guard let colon = bytes.firstIndex(of: ASCII.colon) else {
                // redis-cli reads this as a password, redis-py as a user name: refuse to guess.
                throw Failure(
                    "user info without ':' is ambiguous: write redis://:PASSWORD@host for a password,"
                        + " or redis://USER:PASSWORD@host for an ACL user")
            }
            let username = try percentDecoded(bytes[..<colon], what: "username", secret: false)
            let password = try percentDecoded(
                bytes[bytes.index(after: colon)...], what: "password", secret: true)
            if !username.isEmpty && password.isEmpty {
                throw Failure("username \"\(username)\" has no password; AUTH needs both (user:password@)")
            }
            return (username.isEmpty ? nil : username, password.isEmpty ? nil : password)
        }

        static func percentDecoded(_ bytes: Bytes, what: String, secret: Bool) throws(Failure) -> String {
            var decoded: [UInt8] = []
            decoded.reserveCapacity(bytes.count)
            var index = bytes.startIndex
            while index < bytes.endIndex {
                let byte = bytes[index]
                guard byte == ASCII.percent else {
                    decoded.append(byte)
                    index += 1
                    continue
                }
                guard index + 2 < bytes.endIndex,
                    let high = ASCII.hexValue(bytes[index + 1]),
                    let low = ASCII.hexValue(bytes[index + 2])
                else {
                    if secret {
                        throw Failure("invalid percent-escape in \(what) (expected '%' and two hex digits)")
                    }
                    let escape = text(bytes[index..<min(index + 3, bytes.endIndex)])
                    throw Failure(
                        "invalid percent-escape \"\(escape)\" in \(what) (expected '%' and two hex digits)")
                }
                decoded.append(high << 4 | low)
                index += 3
            }
            if decoded.contains(ASCII.nul) {
                throw Failure("\(what) contains a NUL byte (%00)")
            }
            let string = String(decoding: decoded, as: UTF8.self)
            guard string.utf8.elementsEqual(decoded) else {
                throw Failure("\(what) is not valid UTF-8 once percent-decoded")
            }
            return string
        }

        static func hostAndPort(_ bytes: Bytes, allowBareIPv6: Bool) throws(Failure) -> (String, Int) {
            guard let first = bytes.first else {
                throw Failure("empty host")
            }
            if first == ASCII.openBracket {
                guard let close = bytes.firstIndex(of: ASCII.closeBracket) else {
                    throw Failure("unterminated '[' (missing ']' after the IPv6 address)")
                }
                let inside = bytes[bytes.index(after: bytes.startIndex)..<close]
                guard !inside.isEmpty else {
                    throw Failure("empty IPv6 address in brackets")
                }
                guard inside.contains(ASCII.colon) else {
                    throw Failure("brackets are only for IPv6 addresses, not \"\(text(inside))\"")
                }
                guard let host = ipv6Host(inside) else {
                    throw Failure("\"\(text(inside))\" is not a valid IPv6 address")
                }
                let after = bytes[bytes.index(after: close)...]
                guard let separator = after.first else {
                    return (host, RedisServer.defaultPort)
                }
                guard separator == ASCII.colon else {
                    throw Failure("unexpected \"\(text(after))\" after ']' (expected ':' and a port)")
                }
                return (host, try portNumber(after.dropFirst()))
            }
            if bytes.contains(ASCII.closeBracket) {
                throw Failure("unexpected ']' without a matching '['")
            }
            let colons = bytes.lazy.filter { $0 == ASCII.colon }.count
            switch colons {
            case 0:
                return (try hostName(bytes), RedisServer.defaultPort)
            case 1:
                let colon = bytes.firstIndex(of: ASCII.colon)!
                let name = bytes[..<colon]
                guard !name.isEmpty else {
                    throw Failure("empty host")
                }
                let host = try hostName(name)
                return (host, try portNumber(bytes[bytes.index(after: colon)...]))
            default:
                guard allowBareIPv6 else {
                    throw Failure("an IPv6 address must be in brackets, as in redis://[::1]:6379")
                }
                guard let host = ipv6Host(bytes) else {
                    throw Failure(
                        "\"\(text(bytes))\" has more than one ':' but is not an IPv6 address"
                            + " (write an IPv6 address with a port in brackets, as in [::1]:6380)")
                }
                return (host, RedisServer.defaultPort)
            }
        }

        static func portNumber(_ bytes: Bytes) throws(Failure) -> Int {
            guard !bytes.isEmpty else {
                throw Failure("empty port after ':'")
            }
            guard bytes.allSatisfy(ASCII.isDigit) else {
                throw Failure("port \"\(text(bytes))\" is not a number")
            }
            guard let port = Int(text(bytes)), (1...65535).contains(port) else {
                throw Failure("port \(text(bytes)) is out of range 1...65535")
            }
            return port
        }

        /// `""` or `"/"`: none; `"/N"`: database N.
        static func databaseNumber(_ path: Bytes) throws(Failure) -> Int? {
            let digits = path.dropFirst()
            if digits.isEmpty {
                return nil
            }
            if digits.first == ASCII.minus, digits.count > 1, digits.dropFirst().allSatisfy(ASCII.isDigit) {
                throw Failure("database \(text(digits)) is negative")
            }
            guard digits.allSatisfy(ASCII.isDigit) else {
                throw Failure("database \"\(text(digits))\" is not a number (expected a path like /0 or /2)")
            }
            guard let database = Int(text(digits)) else {
                throw Failure("database \(text(digits)) is too large")
            }
            return database
        }

        /// A percent-decoded absolute path.
        static func unixSocketPath(_ bytes: Bytes) throws(Failure) -> String {
            guard !bytes.isEmpty else {
                throw Failure("empty unix socket path")
            }
            let path = try percentDecoded(bytes, what: "unix socket path", secret: false)
            guard path.hasPrefix("/") else {
                // Not echoed: whatever this is, it is not a path, and could be user info.
                throw Failure("the unix socket path must be absolute, as in unix:/tmp/redis.sock")
            }
            guard !path.hasSuffix("/") else {
                throw Failure("unix socket path \"\(path)\" ends with '/'")
            }
            return path
        }

        // MARK: Hosts

        /// A host name or an IPv4 address.
        static func hostName(_ bytes: Bytes) throws(Failure) -> String {
            let name = text(bytes)
            if let bad = bytes.first(where: {
                !(ASCII.isLetter($0) || ASCII.isDigit($0) || $0 == ASCII.minus || $0 == ASCII.dot
                    || $0 == ASCII.underscore)
            }) {
                let character = bad < 0x80 ? "\"\(Character(Unicode.Scalar(bad)))\"" : "non-ASCII character"
                throw Failure("invalid \(character) in host \"\(name)\"")
            }
            if bytes.allSatisfy({ ASCII.isDigit($0) || $0 == ASCII.dot }) {
                if let problem = ipv4Problem(bytes) {
                    throw Failure("\"\(name)\" is not a valid IPv4 address (\(problem))")
                }
                return name
            }
            guard bytes.count <= 253 else {
                throw Failure("host name is \(bytes.count) characters long; the limit is 253")
            }
            var labels = bytes.split(separator: ASCII.dot, omittingEmptySubsequences: false)
            if labels.count > 1, labels.last!.isEmpty {
                labels.removeLast()  // a fully qualified "host.example."
            }
            for label in labels {
                if label.isEmpty {
                    throw Failure("empty label in host \"\(name)\"")
                }
                if label.count > 63 {
                    throw Failure("a label of host \"\(name)\" is longer than 63 characters")
                }
            }
            return name
        }

        /// Why `bytes` is not a dotted-quad IPv4 address, or `nil` when it is one.
        static func ipv4Problem(_ bytes: Bytes) -> String? {
            let octets = bytes.split(separator: ASCII.dot, omittingEmptySubsequences: false)
            guard octets.count == 4, octets.allSatisfy({ !$0.isEmpty && $0.allSatisfy(ASCII.isDigit) }) else {
                return "expected four numbers, as in 127.0.0.1"
            }
            for octet in octets {
                guard octet.count <= 3, let value = Int(text(octet)), value <= 255 else {
                    return "\(text(octet)) is out of range 0...255"
                }
                if octet.count > 1 && octet.first == UInt8(ascii: "0") {
                    return "\"\(text(octet))\" has a leading zero, which some resolvers read as octal"
                }
            }
            return nil
        }

        /// `bytes` as a host string when it is an IPv6 address with an optional zone (`%eth0`, or
        /// `%25eth0` as in URLs), else `nil`.
        static func ipv6Host(_ bytes: Bytes) -> String? {
            var address = bytes
            var zone = ""
            if let percent = bytes.firstIndex(of: ASCII.percent) {
                var zoneBytes = bytes[bytes.index(after: percent)...]
                if zoneBytes.count > 2 && zoneBytes.starts(with: "25".utf8) {
                    zoneBytes = zoneBytes.dropFirst(2)
                }
                guard !zoneBytes.isEmpty, zoneBytes.allSatisfy(ASCII.isUnreserved) else {
                    return nil
                }
                zone = "%" + text(zoneBytes)
                address = bytes[..<percent]
            }
            return isIPv6Address(address) ? text(address) + zone : nil
        }

        static func isIPv6Address(_ bytes: Bytes) -> Bool {
            var pieces = [bytes]
            if let gap = bytes.firstRange(of: "::".utf8) {
                let tail = bytes[gap.upperBound...]
                if tail.firstRange(of: "::".utf8) != nil {
                    return false
                }
                pieces = [bytes[..<gap.lowerBound], tail]
            }
            var groups = 0
            for (pieceIndex, piece) in pieces.enumerated() where !piece.isEmpty {
                let parts = piece.split(separator: ASCII.colon, omittingEmptySubsequences: false)
                for (partIndex, part) in parts.enumerated() {
                    let isLast = pieceIndex == pieces.count - 1 && partIndex == parts.count - 1
                    if isLast && part.contains(ASCII.dot) {
                        guard ipv4Problem(part) == nil else {
                            return false
                        }
                        groups += 2
                    } else {
                        guard (1...4).contains(part.count), part.allSatisfy({ ASCII.hexValue($0) != nil })
                        else {
                            return false
                        }
                        groups += 1
                    }
                }
            }
            return pieces.count == 2 ? groups <= 7 : groups == 8
        }

        // MARK: Validation

        /// What ``RedisServer/validate()`` checks; ``RedisServer/init(parsing:)`` results pass it.
        static func check(_ server: RedisServer) throws(Failure) {
            if let path = server.unixSocketPath {
                guard !path.isEmpty else {
                    throw Failure("empty unix socket path")
                }
                guard !path.utf8.contains(ASCII.nul) else {
                    throw Failure("unix socket path contains a NUL byte")
                }
                let length = path.utf8.count
                guard length <= maxUnixSocketPathBytes else {
                    throw Failure(
                        "unix socket path is \(length) bytes long; the limit is \(maxUnixSocketPathBytes)")
                }
            } else {
                try checkHost(server.host)
                guard (1...65535).contains(server.port) else {
                    throw Failure("port \(server.port) is out of range 1...65535")
                }
            }
            if let database = server.database, database < 0 {
                throw Failure("database \(database) is negative")
            }
            if let username = server.username {
                guard !username.isEmpty else {
                    throw Failure("empty username (use nil for the default user)")
                }
                guard !username.utf8.contains(ASCII.nul) else {
                    throw Failure("username contains a NUL byte")
                }
                guard server.password != nil else {
                    throw Failure("username \"\(username)\" has no password; AUTH needs both")
                }
            }
            if let password = server.password {
                guard !password.isEmpty else {
                    throw Failure("empty password (use nil to skip AUTH)")
                }
                guard !password.utf8.contains(ASCII.nul) else {
                    throw Failure("password contains a NUL byte")
                }
            }
        }

        static func checkHost(_ host: String) throws(Failure) {
            let bytes = Array(host.utf8)[...]
            guard let first = bytes.first else {
                throw Failure("empty host")
            }
            guard !bytes.contains(ASCII.nul) else {
                throw Failure("host contains a NUL byte")
            }
            guard !host.unicodeScalars.contains(where: { $0.properties.isWhitespace }) else {
                throw Failure("host \"\(host)\" contains whitespace")
            }
            if first == ASCII.openBracket {
                let inner = bytes.dropFirst().prefix(while: { $0 != ASCII.closeBracket })
                throw Failure("host \"\(host)\" must not be in brackets; use \"\(text(inner))\"")
            }
            if bytes.contains(ASCII.colon) {
                guard ipv6Host(bytes) != nil else {
                    throw Failure(
                        "host \"\(host)\" contains ':' but is not an IPv6 address (give the port separately)")
                }
                return
            }
            _ = try hostName(bytes)
        }

        // MARK: Printing

        /// `[host]` for an IPv6 address, writing a zone that starts with "25" as `%25` so that it
        /// reads back unchanged; else `host`.
        static func bracketedIfIPv6(_ host: String) -> String {
            guard host.utf8.contains(ASCII.colon) else {
                return host
            }
            guard let percent = host.firstIndex(of: "%") else {
                return "[\(host)]"
            }
            let zone = host[host.index(after: percent)...]
            return "[" + host[..<percent] + (zone.hasPrefix("25") ? "%25" : "%") + zone + "]"
        }

        static func percentEncoded(_ string: String, keeping keep: (UInt8) -> Bool) -> String {
            var result = ""
            for byte in string.utf8 {
                if keep(byte) {
                    result.unicodeScalars.append(Unicode.Scalar(byte))
                } else {
                    let hex = String(byte, radix: 16, uppercase: true)
                    result += "%" + (hex.count == 1 ? "0" + hex : hex)
                }
            }
            return result
        }
    }
}
