// Signals: SIGINT, SIGTERM and SIGHUP are blocked in every thread from the start and received by one
// thread with sigwaitinfo(2), which is deterministic (no async-signal-safety concerns, no signal lost to
// a thread that happens not to block it). `run` forwards them to COMMAND; the other subcommands stop
// what they are doing, release what they acquired and exit with 128 + the signal's number.
import Foundation
import MultiRedlock

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

final class SignalCenter: Sendable {
    static let shared = SignalCenter()

    /// The signals the tool receives: SIGINT, SIGTERM and SIGHUP, except those ignored at start (as
    /// SIGHUP under nohup(1), or SIGINT in a shell's background job), which stay ignored.
    let handled: [Int32]
    /// The signal mask at start, which COMMAND gets back.
    let startupMask: sigset_t
    /// The signals that were at their default action at start and that the tool may change (hiredis
    /// ignores SIGPIPE): COMMAND gets them back at their default action.
    let startupDefaults: [Int32]

    private let state = Locked<State>(State())

    private struct State {
        var first: Received?
        var handler: (@Sendable (Received) -> Void)?
    }

    private init() {
        handled = [SIGINT, SIGTERM, SIGHUP].filter { !Self.isIgnored($0) }
        var mask = sigset_t()
        sigemptyset(&mask)
        pthread_sigmask(SIG_BLOCK, nil, &mask)
        startupMask = mask
        startupDefaults = Self.isDefault(SIGPIPE) ? [SIGPIPE] : []
    }

    /// Blocks the handled signals in this thread (and so in every thread started later) and starts
    /// the thread that receives them. Call first thing in `main`, before any other thread exists.
    func start() {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in handled { sigaddset(&set, signal) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
        let waited = set
        Thread.detachNewThread { [self] in
            var set = waited
            while true {
                var info = siginfo_t()
                let signal = sigwaitinfo(&set, &info)
                if signal > 0 { deliver(Received(number: signal, fromTerminal: info.si_code == SI_KERNEL)) }
            }
        }
    }

    /// The first signal received, if any.
    var received: Int32? { state.withLock { $0.first?.number } }

    /// A signal as received.
    struct Received: Sendable {
        var number: Int32
        /// Sent by the kernel, as the terminal's SIGINT (Ctrl-C) or SIGHUP (hangup) are: those go
        /// to the whole foreground process group, COMMAND included, not to `redlock` alone.
        var fromTerminal: Bool
    }

    /// Calls `handler` with every signal from now on, and at once with one already received.
    func onSignal(_ handler: @escaping @Sendable (Received) -> Void) {
        let pending = state.withLock { state in
            state.handler = handler
            return state.first
        }
        if let pending { handler(pending) }
    }

    private func deliver(_ signal: Received) {
        let handler = state.withLock { state in
            if state.first == nil { state.first = signal }
            return state.handler
        }
        handler?(signal)
    }

    private static func handlerValue(_ signal: Int32) -> Int? {
        var current = sigaction()
        guard sigaction(signal, nil, &current) == 0 else { return nil }
        #if canImport(Glibc)
            return unsafeBitCast(current.__sigaction_handler.sa_handler, to: Int.self)
        #else
            return unsafeBitCast(current.__sigaction_u.__sa_handler, to: Int.self)
        #endif
    }

    private static func isIgnored(_ signal: Int32) -> Bool { handlerValue(signal) == 1 }  // SIG_IGN

    private static func isDefault(_ signal: Int32) -> Bool { handlerValue(signal) == 0 }  // SIG_DFL
}
