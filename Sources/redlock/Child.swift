// COMMAND of `redlock run`: spawned with posix_spawnp, inheriting standard input, output and error.
import Foundation
import MultiRedlock

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// posix_spawnp failed: COMMAND could not be started.
struct SpawnFailure: Error {
    var command: String
    var code: Int32

    /// 127 when COMMAND was not found, 126 when it was found but could not be run.
    var status: Int32 {
        code == ENOENT || code == ENOTDIR || code == ENAMETOOLONG || code == ELOOP
            ? ExitStatus.notFound : ExitStatus.notExecutable
    }

    var message: String {
        let reason = String(cString: strerror(code))
        return status == ExitStatus.notFound
            ? "\(command): command not found (\(reason))" : "\(command): cannot run (\(reason))"
    }
}

/// A running COMMAND, in a process group of its own (as timeout(1) runs its command), so that a
/// signal reaches every process it started, such as the programs a `sh -c` script runs. Signals are
/// sent only until the child has exited: it is not reaped before `exited` is set, so its pid (the
/// group's id) cannot have been reused by another process.
///
/// When `redlock` runs in the foreground of a terminal (standard input is the terminal and its
/// process group is the terminal's foreground group), COMMAND's group gets the foreground for as long
/// as COMMAND runs, so that COMMAND can read from the terminal and the terminal's Ctrl-C reaches
/// every process of the group; the foreground comes back to `redlock` when COMMAND exits.
final class Child: Sendable {
    let pid: pid_t
    private let exited = Locked(false)
    /// COMMAND's group has the terminal's foreground.
    private let holdsTerminal: Bool

    private init(pid: pid_t, holdsTerminal: Bool) {
        self.pid = pid
        self.holdsTerminal = holdsTerminal
    }

    /// Starts `arguments` (looked up in PATH) with `environment`, the signal mask and the signal
    /// actions the tool started with, and none of the tool's own descriptors (its connections).
    /// `onExit` is called once, from another thread, with the wait status.
    static func spawn(
        _ arguments: [String], environment: [String: String], inheritedDescriptors: Set<Int32>,
        onExit: @escaping @Sendable (Int32) -> Void
    ) throws(SpawnFailure) -> Child {
        closeOnExec(except: inheritedDescriptors)
        // Marking is not enough on its own: a connection that (re)connects on another thread
        // between the marking and the spawn has a socket that is not close-on-exec yet. Have the
        // child close everything it should not inherit, whenever it was opened.
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let addCloseFrom {
            let highest = inheritedDescriptors.max() ?? 2
            for descriptor in 3..<max(3, highest) where !inheritedDescriptors.contains(descriptor) {
                // glibc ignores EBADF here: the descriptor need not be open.
                posix_spawn_file_actions_addclose(&actions, descriptor)
            }
            _ = addCloseFrom(&actions, max(3, highest + 1))
        }

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var mask = SignalCenter.shared.startupMask
        posix_spawnattr_setsigmask(&attributes, &mask)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in SignalCenter.shared.startupDefaults { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        // A new process group, whose id is the child's pid.
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(
            &attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP))

        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.sorted { $0.key < $1.key }.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for pointer in argv { free(pointer) }
            for pointer in envp { free(pointer) }
        }
        let inForeground = isatty(STDIN_FILENO) != 0 && tcgetpgrp(STDIN_FILENO) == getpgrp()
        var pid: pid_t = 0
        let code = posix_spawnp(&pid, arguments[0], &actions, &attributes, argv, envp)
        guard code == 0 else { throw SpawnFailure(command: arguments[0], code: code) }
        // Still the foreground group, so no SIGTTOU. A COMMAND that read from the terminal before
        // this stopped (SIGTTIN): SIGCONT lets it go on, and does nothing to one that did not.
        let holdsTerminal = inForeground && tcsetpgrp(STDIN_FILENO, pid) == 0
        if holdsTerminal { kill(-pid, SIGCONT) }
        let child = Child(pid: pid, holdsTerminal: holdsTerminal)
        Thread.detachNewThread { child.wait(then: onExit) }
        return child
    }

    /// Sends `signal` to COMMAND's process group (COMMAND and every process it started that stayed
    /// in its group) unless COMMAND has exited.
    func send(_ signal: Int32) {
        exited.withLock { exited in
            if !exited { kill(-pid, signal) }
        }
    }

    private func wait(then onExit: @Sendable (Int32) -> Void) {
        #if os(Linux)
            // Wait without reaping, mark the child exited, and only then reap it.
            var info = siginfo_t()
            while waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT) != 0 && errno == EINTR {}
        #endif
        exited.withLock { $0 = true }
        if holdsTerminal { Self.takeBackTerminal() }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        onExit(status)
    }

    /// Makes `redlock`'s group the terminal's foreground again. From a background group that needs
    /// SIGTTOU blocked (else the kernel stops the process); this thread blocks it while it asks.
    private static func takeBackTerminal() {
        var ttou = sigset_t()
        sigemptyset(&ttou)
        sigaddset(&ttou, SIGTTOU)
        var previous = sigset_t()
        pthread_sigmask(SIG_BLOCK, &ttou, &previous)
        _ = tcsetpgrp(STDIN_FILENO, getpgrp())
        pthread_sigmask(SIG_SETMASK, &previous, nil)
    }

    /// The shell's convention for a wait status: the exit code, or 128 + the signal's number.
    static func exitCode(ofWaitStatus status: Int32) -> Int32 {
        let signal = status & 0x7f
        return signal == 0 ? (status >> 8) & 0xff : 128 + signal
    }

    /// How the child ended, in words.
    static func describe(waitStatus status: Int32) -> String {
        let signal = status & 0x7f
        if signal == 0 { return "exited with status \((status >> 8) & 0xff)" }
        let name = strsignal(signal).map { String(cString: $0) } ?? "signal \(signal)"
        return "was killed by signal \(signal) (\(name))"
    }

    /// The descriptors open now: those the tool was started with, which COMMAND inherits.
    static func openDescriptors() -> Set<Int32> {
        #if os(Linux)
            let names = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
            // The listing's own descriptor is closed by now: keep only those still open.
            return Set(names.compactMap { Int32($0) }.filter { fcntl($0, F_GETFD) >= 0 })
        #else
            return [0, 1, 2]
        #endif
    }

    /// Marks every descriptor the tool opened (hiredis's sockets are not close-on-exec) so that
    /// COMMAND does not inherit it.
    private static func closeOnExec(except inherited: Set<Int32>) {
        for descriptor in openDescriptors().subtracting(inherited) where descriptor > 2 {
            let flags = fcntl(descriptor, F_GETFD)
            if flags >= 0 { _ = fcntl(descriptor, F_SETFD, flags | FD_CLOEXEC) }
        }
    }
}

private typealias AddCloseFrom =
    @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, Int32) -> Int32

/// glibc ≥ 2.34 (bookworm has 2.36) has posix_spawn_file_actions_addclosefrom_np, but its header
/// declaration is not visible to Swift, so it is looked up at run time. Nil on older C libraries.
private let addCloseFrom: AddCloseFrom? = {
    guard let handle = dlopen(nil, RTLD_NOW),
        let symbol = dlsym(handle, "posix_spawn_file_actions_addclosefrom_np")
    else { return nil }
    return unsafeBitCast(symbol, to: AddCloseFrom.self)
}()
