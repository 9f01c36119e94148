// The entry point. It is synchronous so that the signals are blocked before any other thread
// exists; the subcommands then run as `AsyncParsableCommand`s on the global executor while the main
// thread sleeps, its signal mask intact.
import ArgumentParser
import Dispatch
import MultiRedlock

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

@main
enum RedlockMain {
    static func main() {
        // Dispatch cannot work without a few descriptors of its own (with none it traps, with too
        // few its timers never fire and the tool would hang): check before anything uses it.
        let free = Startup.freeDescriptors(upTo: Startup.neededDescriptors)
        if free < Startup.neededDescriptors {
            Output.stderrRaw(
                "redlock: too few free file descriptors (\(free), needs \(Startup.neededDescriptors)): "
                    + "raise the limit (ulimit -n) or close some\n")
            exit(ExitStatus.osError)
        }
        _ = Startup.descriptors
        SignalCenter.shared.start()
        Task.detached {
            let status = await execute(Array(CommandLine.arguments.dropFirst()))
            exit(status)
        }
        // Not dispatchMain(): on Linux it waits in sigsuspend(2) with every signal unblocked, and a
        // SIGTERM would end the process there instead of reaching the signal thread.
        while true { DispatchSemaphore(value: 0).wait() }
    }

    /// Parses `arguments`, runs the subcommand and returns the exit status.
    static func execute(_ arguments: [String]) async -> Int32 {
        let parsed: any ParsableCommand
        do {
            parsed = try RedlockCommand.parseAsRoot(arguments)
        } catch {
            return report(error)
        }
        ArgvScrubber.scrub()
        guard let command = SendableCommand(parsed) else {
            if !(parsed is RedlockCommand) {
                // ArgumentParser's own commands, such as `redlock help run`.
                do {
                    var other = parsed
                    try other.run()
                    return ExitStatus.success
                } catch {
                    return report(error)
                }
            }
            Output.stderrRaw(
                RedlockCommand.fullMessage(
                    for: ValidationError("missing subcommand: acquire, renew, release or run"))
                    + "\n")
            return ExitStatus.usage
        }
        let work = Task { try await command.run() }
        if !(parsed is Run) {
            SignalCenter.shared.onSignal { _ in work.cancel() }
        }
        do {
            try await work.value
            return ExitStatus.success
        } catch let exit as ToolExit {
            if let message = exit.message { Output.stderr(message) }
            return exit.status
        } catch is CancellationError {
            return 128 + (SignalCenter.shared.received ?? SIGINT)
        } catch {
            return report(error)
        }
    }

    /// ArgumentParser's errors: help on standard output with status 0, anything else on standard
    /// error with status 64 (EX_USAGE).
    static func report(_ error: any Error) -> Int32 {
        let message = RedlockCommand.fullMessage(for: error)
        if RedlockCommand.exitCode(for: error) == .success {
            Output.writeAll(1, message + "\n")
            return ExitStatus.success
        }
        Output.stderrRaw(message + "\n")
        return ExitStatus.usage
    }
}

/// The parsed subcommand, which the main task hands to the task that runs it.
enum SendableCommand: Sendable {
    case acquire(Acquire)
    case renew(Renew)
    case release(Release)
    case run(Run)

    init?(_ command: any ParsableCommand) {
        switch command {
        case let command as Acquire: self = .acquire(command)
        case let command as Renew: self = .renew(command)
        case let command as Release: self = .release(command)
        case let command as Run: self = .run(command)
        default: return nil
        }
    }

    func run() async throws {
        switch self {
        case .acquire(let command): try await command.run()
        case .renew(let command): try await command.run()
        case .release(let command): try await command.run()
        case .run(let command): try await command.run()
        }
    }
}

enum Startup {
    /// Dispatch's own (epoll, eventfd, timers), two per server connection, the signal thread's, and
    /// some room; a larger server list fails later with a typed error that says so.
    static let neededDescriptors = 16

    /// How many more descriptors this process can open, counting up to `limit`.
    static func freeDescriptors(upTo limit: Int) -> Int {
        var opened: [Int32] = []
        defer { for descriptor in opened { close(descriptor) } }
        while opened.count < limit {
            let descriptor = open("/dev/null", O_RDONLY | O_CLOEXEC)
            guard descriptor >= 0 else { break }
            opened.append(descriptor)
        }
        return opened.count
    }

    /// The descriptors open when the tool started, which COMMAND inherits.
    static let descriptors = Child.openDescriptors()
}

/// Overwrites the passwords of `redis://user:password@host` addresses in this process's own argv
/// with `*`, so that ps(1) and /proc/PID/cmdline do not show them once the tool has parsed them.
/// Each argument is read whole, by the address syntax (`RedisServer.passwordRanges(inText:)`), so
/// that a password with quotes, commas or '@' is found as a whole.
enum ArgvScrubber {
    static func scrub() {
        let argv = CommandLine.unsafeArgv
        for index in 1..<Int(CommandLine.argc) {
            guard let argument = argv[index] else { continue }
            let length = strlen(argument)
            guard let text = String(validatingCString: argument) else {
                // Not UTF-8 (the offsets of a repaired copy would not match): hide all of an
                // argument that may hold user info.
                if memchr(argument, Int32(UInt8(ascii: "@")), length) != nil {
                    memset(argument, Int32(UInt8(ascii: "*")), length)
                }
                continue
            }
            for range in RedisServer.passwordRanges(inText: text) where range.upperBound <= length {
                for offset in range { argument[offset] = CChar(bitPattern: UInt8(ascii: "*")) }
            }
        }
    }
}
