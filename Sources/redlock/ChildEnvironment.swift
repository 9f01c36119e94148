import MultiRedlock

/// The environment `run` gives COMMAND: the tool's own, without the credentials it was given, plus
/// the lock's variables.
enum ChildEnvironment {
    /// The variables that may hold a password: `REDLOCK_PASSWORD` always; `REDLOCK_SERVERS` only when
    /// it holds one (a list of plain host:port addresses is no secret, and a nested `redlock` may
    /// want it).
    static func credentialVariables(in environment: [String: String]) -> [String] {
        var names = ["REDLOCK_PASSWORD"]
        if let servers = environment["REDLOCK_SERVERS"], !RedisServer.passwordRanges(inText: servers).isEmpty
        {
            names.append("REDLOCK_SERVERS")
        }
        return names.filter { environment[$0] != nil }
    }

    /// `environment` without its credential variables, unless `passCredentials` (`--pass-env`).
    static func make(from environment: [String: String], passCredentials: Bool) -> [String: String] {
        guard !passCredentials else { return environment }
        var result = environment
        for name in credentialVariables(in: environment) { result[name] = nil }
        return result
    }
}
