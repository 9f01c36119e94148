// The address of one Redis server, as a value type. Its syntax (parsing, validation, printing)
// is in RedisServer+Syntax.swift, where passwords hide in it in RedisServer+Masking.swift.

/// The address of one Redis server: a TCP host and port, or a unix socket path, plus the
/// optional credentials and database number to use once connected.
///
/// Build one with ``init(host:port:password:username:database:)`` or
/// ``init(unixSocket:password:username:database:)``, or parse one from a command line or a
/// configuration file with ``init(parsing:)``:
///
/// - `host`, `host:port`, `1.2.3.4:6380`, `[::1]:6380`, `::1`
/// - `redis://[user[:password]@]host[:port][/db]` (user and password percent-encoded)
/// - `unix:/path/to.sock`, `unix:///path/to.sock`, `unix://[user[:password]@]/path/to.sock`
///
/// The password never appears in ``description``, ``debugDescription`` or in a
/// ``RedisAddressError``: it is always shown as `***`.
public struct RedisServer: Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible,
    CustomReflectable
{
    /// The port Redis listens on unless told otherwise.
    public static let defaultPort = 6379

    /// A host name, an IPv4 address, or an IPv6 address without brackets (`"::1"`).
    /// Empty, and ignored, for unix sockets.
    public var host: String
    /// The TCP port; ignored for unix sockets.
    public var port: Int
    /// The path of the server's unix socket. When set, ``host`` and ``port`` are ignored.
    public var unixSocketPath: String?
    /// The password sent with `AUTH` once connected; `nil` to skip `AUTH`.
    public var password: String?
    /// The ACL user name sent with `AUTH username password`; `nil` for the default user.
    public var username: String?
    /// The database selected with `SELECT` once connected; `nil` to keep the default (0).
    public var database: Int?

    /// The `AUTH` password: another name for ``password``.
    public var auth: String? {
        get { password }
        set { password = newValue }
    }

    /// Whether this address names a unix socket rather than a TCP host and port.
    public var isUnixSocket: Bool { unixSocketPath != nil }

    /// A TCP address. Call ``validate()`` to check values that do not come from
    /// ``init(parsing:)``.
    public init(
        host: String,
        port: Int = RedisServer.defaultPort,
        password: String? = nil,
        username: String? = nil,
        database: Int? = nil
    ) {
        self.host = host
        self.port = port
        self.unixSocketPath = nil
        self.password = password
        self.username = username
        self.database = database
    }

    /// A unix socket address. Call ``validate()`` to check values that do not come from
    /// ``init(parsing:)``.
    public init(
        unixSocket path: String,
        password: String? = nil,
        username: String? = nil,
        database: Int? = nil
    ) {
        self.host = ""
        self.port = RedisServer.defaultPort
        self.unixSocketPath = path
        self.password = password
        self.username = username
        self.database = database
    }

    /// Parses an address given on a command line or in a configuration file.
    ///
    /// Leading and trailing whitespace is ignored. The result always passes ``validate()``.
    public init(parsing address: String) throws(RedisAddressError) {
        let trimmed = Syntax.trimmingWhitespace(address)
        do throws(Syntax.Failure) {
            self = try Syntax.parse(trimmed)
            try Syntax.check(self)
        } catch {
            throw RedisAddressError(address: trimmed, reason: error.reason)
        }
    }

    /// Checks a value built with the memberwise initializers: a port in 1...65535, a non-empty
    /// host (or socket path) without NUL bytes or whitespace, a non-negative database, and no
    /// user name without a password.
    public func validate() throws(RedisAddressError) {
        do throws(Syntax.Failure) {
            try Syntax.check(self)
        } catch {
            throw RedisAddressError(address: description, reason: error.reason)
        }
    }

    /// `host:port`, `[::1]:6379` or `unix:/path`, or a `redis://` URL when there are credentials
    /// or a database; the password is always shown as `***`.
    public var description: String {
        var userInfo = ""
        if username != nil || password != nil {
            let user = username.map { Syntax.percentEncoded($0, keeping: ASCII.isUnreserved) } ?? ""
            userInfo = user + (password == nil ? "" : ":***") + "@"
        }
        if let unixSocketPath {
            let path = Syntax.percentEncoded(unixSocketPath, keeping: ASCII.isPathCharacter)
            // "unix:" + "//path" would read as a unix:// URL; spell those out in full.
            let short = userInfo.isEmpty && !path.hasPrefix("//")
            let base = (short ? "unix:" : "unix://" + userInfo) + path
            return database.map { base + " (db \($0))" } ?? base
        }
        let hostPort = Syntax.bracketedIfIPv6(host) + ":\(port)"
        // A host named "unix" would read as a unix socket path.
        if userInfo.isEmpty && database == nil && host.lowercased() != "unix" {
            return hostPort
        }
        return "redis://" + userInfo + hostPort + (database.map { "/\($0)" } ?? "")
    }

    /// All the fields, with the password shown as `***`.
    public var debugDescription: String {
        var fields: [String] = []
        if let unixSocketPath {
            fields.append("unixSocket: \(String(reflecting: unixSocketPath))")
        } else {
            fields.append("host: \(String(reflecting: host))")
            fields.append("port: \(port)")
        }
        if password != nil {
            fields.append("password: ***")
        }
        if let username {
            fields.append("username: \(String(reflecting: username))")
        }
        if let database {
            fields.append("database: \(database)")
        }
        return "RedisServer(" + fields.joined(separator: ", ") + ")"
    }

    /// Equal when they name the same server with the same credentials and database; ``host``
    /// and ``port`` are ignored for unix sockets.
    public static func == (lhs: RedisServer, rhs: RedisServer) -> Bool {
        guard
            lhs.unixSocketPath == rhs.unixSocketPath, lhs.password == rhs.password,
            lhs.username == rhs.username, lhs.database == rhs.database
        else {
            return false
        }
        return lhs.unixSocketPath != nil || (lhs.host == rhs.host && lhs.port == rhs.port)
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(unixSocketPath)
        hasher.combine(password)
        hasher.combine(username)
        hasher.combine(database)
        if unixSocketPath == nil {
            hasher.combine(host)
            hasher.combine(port)
        }
    }
}

/// Why a Redis address is invalid.
public struct RedisAddressError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The address, with any password replaced by `***`.
    public var address: String
    /// What exactly is wrong, e.g. `port 70000 is out of range 1...65535`.
    public var reason: String

    /// Masks any password in `address` before storing it.
    public init(address: String, reason: String) {
        self.address = RedisServer.maskingPasswords(in: address)
        self.reason = reason
    }

    /// `invalid Redis address "redis://:***@h:70000": port 70000 is out of range 1...65535`
    public var description: String {
        "invalid Redis address \"\(address)\": \(reason)"
    }
}

extension RedisServer {
    /// The fields for `dump()`, mirrors and debuggers, with the password shown as `***`.
    public var customMirror: Mirror {
        var children: [(label: String?, value: Any)] = []
        if let unixSocketPath {
            children.append(("unixSocketPath", unixSocketPath))
        } else {
            children.append(("host", host))
            children.append(("port", port))
        }
        if password != nil { children.append(("password", "***")) }
        if let username { children.append(("username", username)) }
        if let database { children.append(("database", database)) }
        return Mirror(self, children: children, displayStyle: .struct)
    }
}
