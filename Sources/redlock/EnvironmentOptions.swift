import ArgumentParser

/// An environment variable for every option: the command line wins, then the variable, then the
/// default. A variable that cannot be read is a usage error naming it.
enum EnvironmentOptions {
    static let servers = "REDLOCK_SERVERS"
    static let password = "REDLOCK_PASSWORD"
    static let ttl = "REDLOCK_TTL"
    static let retries = "REDLOCK_RETRIES"
    static let retryWait = "REDLOCK_RETRY_WAIT"
    static let drift = "REDLOCK_DRIFT"
    static let nodeTimeout = "REDLOCK_NODE_TIMEOUT"
    static let id = "REDLOCK_ID"
    static let wait = "REDLOCK_WAIT"
    static let verbose = "REDLOCK_VERBOSE"
    static let fencing = "REDLOCK_FENCING"
    static let signal = "REDLOCK_SIGNAL"
    static let killAfter = "REDLOCK_KILL_AFTER"

    /// The `--help` text's ENVIRONMENT section.
    static let helpSection = """
        ENVIRONMENT (an option on the command line wins over its variable)
          REDLOCK_SERVERS       --servers
          REDLOCK_PASSWORD      the password of every server without one of its own
          REDLOCK_TTL           --ttl
          REDLOCK_RETRIES       --retries
          REDLOCK_RETRY_WAIT    --retry-wait
          REDLOCK_DRIFT         --drift
          REDLOCK_NODE_TIMEOUT  --node-timeout
          REDLOCK_WAIT          --wait
          REDLOCK_ID            --id
          REDLOCK_VERBOSE       --verbose (1, true, yes, on; 0, false, no, off)
          REDLOCK_FENCING       --fencing (as REDLOCK_VERBOSE)
          REDLOCK_SIGNAL        run --signal
          REDLOCK_KILL_AFTER    run --kill-after

        DURATIONS
          \(DurationParsing.helpNote).
        """

    /// `given` if the command line had it, else the variable read as a duration, else nil.
    static func duration(_ given: Int?, _ name: String, in environment: [String: String]) throws -> Int? {
        if let given { return given }
        guard let text = nonEmpty(name, environment) else { return nil }
        do {
            return try DurationParsing.milliseconds(text)
        } catch {
            throw ValidationError("$\(name): \(error)")
        }
    }

    /// `given`, else the variable read as a whole number, else nil.
    static func count(_ given: Int?, _ name: String, in environment: [String: String]) throws -> Int? {
        if let given { return given }
        guard let text = nonEmpty(name, environment) else { return nil }
        guard let value = Int(text.trimmingWhitespace) else {
            throw ValidationError("$\(name): \"\(text)\" is not a whole number")
        }
        return value
    }

    /// `given`, else the variable as it is, else nil.
    static func string(_ given: String?, _ name: String, in environment: [String: String]) -> String? {
        given ?? nonEmpty(name, environment)
    }

    /// true if the flag was given or the variable says yes.
    static func flag(_ given: Bool, _ name: String, in environment: [String: String]) throws -> Bool {
        if given { return true }
        guard let text = environment[name] else { return false }
        switch text.trimmingWhitespace.lowercased() {
        case "1", "true", "yes", "on": return true
        case "", "0", "false", "no", "off": return false
        default:
            throw ValidationError("$\(name): \"\(text)\" is not a yes or no (1/true/yes/on, 0/false/no/off)")
        }
    }

    /// `given`, else the variable read as a signal, else nil.
    static func signal(_ given: Int32?, _ name: String, in environment: [String: String]) throws -> Int32? {
        if let given { return given }
        guard let text = nonEmpty(name, environment) else { return nil }
        do {
            return try SignalParsing.signal(text)
        } catch {
            throw ValidationError("$\(name): \(error)")
        }
    }

    private static func nonEmpty(_ name: String, _ environment: [String: String]) -> String? {
        guard let text = environment[name], !text.allSatisfy(\.isWhitespace) else { return nil }
        return text
    }
}
