// A `Redlock` in a swift-service-lifecycle `ServiceGroup`, beside an application service that holds
// a lock: SIGTERM shuts the group down gracefully, the application releases its lock, and the
// Redlock closes once that release has reached the servers.
//
//     REDLOCK_PASSWORD=… multiredlock-service-example PORT[,PORT…] RESOURCE
//
// Prints `locked VALUE` once it holds RESOURCE and `stopped` when the group has returned. The
// tests start it against local redis-servers and send it SIGTERM (ServiceLifecycleTests).
import Logging
import MultiRedlock
import ServiceLifecycle

#if canImport(Glibc)
    import Glibc
#endif

/// The application: holds one lock while it runs and releases it when the group shuts down.
struct Application: Service {
    let redlock: Redlock
    let lock: Lock

    func run() async throws {
        // Serve until the group shuts down gracefully (SIGTERM), then release what is held.
        try? await gracefulShutdown()
        redlock.unlock(lock)
    }
}

/// Writes one line to a descriptor unbuffered (stdout is a file in the tests, read while this runs).
func say(_ text: String, to descriptor: Int32 = STDOUT_FILENO) {
    var line = text + "\n"
    line.withUTF8 { bytes in _ = write(descriptor, bytes.baseAddress, bytes.count) }
}

let arguments = CommandLine.arguments
guard arguments.count == 3 else {
    say(
        "usage: multiredlock-service-example PORT[,PORT…] RESOURCE (password, if any, in REDLOCK_PASSWORD)",
        to: STDERR_FILENO)
    exit(2)
}
let ports = arguments[1].split(separator: ",").compactMap { Int($0) }
// The password comes from the environment, never from the command line.
let password = getenv("REDLOCK_PASSWORD").map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 }
let redlock = try Redlock(
    servers: ports.map { RedisServer(host: "127.0.0.1", port: $0, password: password) },
    options: RedlockOptions(retries: 20, nodeTimeout: .milliseconds(500)))
let lock = try await redlock.lock(arguments[2], ttl: .seconds(60))
say("locked \(lock.value)")

// The Redlock first: a group shuts its services down in reverse order, so the application's
// release is issued before the Redlock is asked to close.
let group = ServiceGroup(
    services: [redlock, Application(redlock: redlock, lock: lock)],
    gracefulShutdownSignals: [.sigterm],
    cancellationSignals: [],
    logger: Logger(label: "multiredlock-service-example"))
try await group.run()
say("stopped")
