// How configurations print: every password shown as `***`, in `description`, `debugDescription`,
// string interpolation, `dump()` and any other use of reflection (a custom mirror), so that a test's
// failure message or log never shows a server's password.

extension ACLUser: CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    /// `ACLUser(name: "alice", password: ***)`
    public var description: String { "ACLUser(name: \(String(reflecting: name)), password: ***)" }

    public var debugDescription: String { description }

    public var customMirror: Mirror {
        Mirror(self, children: ["name": name, "password": "***"], displayStyle: .struct)
    }
}

extension RedisServerConfiguration: CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    /// Whether it has a password (shown as `***`), then the fields that differ from the defaults.
    public var description: String {
        var fields: [String] = [password == nil ? "password: nil" : "password: ***"]
        if !aclUsers.isEmpty {
            fields.append("aclUsers: [\(aclUsers.map(\.description).joined(separator: ", "))]")
        }
        if enableDebugCommand { fields.append("enableDebugCommand: true") }
        if appendOnly { fields.append("appendOnly: true") }
        if unixSocket { fields.append("unixSocket: true") }
        if !extraConfig.isEmpty { fields.append("extraConfig: \(extraConfig.count) lines") }
        return "RedisServerConfiguration(\(fields.joined(separator: ", ")))"
    }

    public var debugDescription: String { description }

    public var customMirror: Mirror {
        Mirror(
            self,
            children: [
                "password": password.map { _ in "***" } as Any,
                "aclUsers": aclUsers,
                "enableDebugCommand": enableDebugCommand,
                "appendOnly": appendOnly,
                "unixSocket": unixSocket,
                // Raw lines may hold secrets too (a `user … >password` rule): counted, not shown.
                "extraConfig": "\(extraConfig.count) lines",
            ],
            displayStyle: .struct)
    }
}
