import Foundation
import JSONText
import MultiRedlock

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// `redlock run`: acquires the lock, runs COMMAND, renews the lock while COMMAND runs, releases it
/// when COMMAND exits and returns COMMAND's status. When the lock is lost (renewals fail until
/// `killAfter` — at most a third of the validity — is left, or the servers say it is no longer
/// held) COMMAND gets the loss signal (SIGTERM by default), then SIGKILL `killAfter` later but never
/// after the validity ends, so COMMAND is gone before another client can hold the lock; the status
/// is 124. SIGINT, SIGTERM and SIGHUP are forwarded to COMMAND.
struct Supervisor {
    /// How long COMMAND has to exit after SIGTERM before it gets SIGKILL.
    static let killGrace: Duration = .seconds(2)

    let session: Session
    let resource: String
    let command: [String]
    /// The descriptors the tool was started with: COMMAND inherits those and no others.
    let inheritedDescriptors: Set<Int32>
    /// What COMMAND gets when the lock is lost (`run --signal`).
    var lossSignal: Int32 = SIGTERM
    /// How long COMMAND may run on after `lossSignal` before SIGKILL (`run --kill-after`).
    var killAfter: Duration = Self.killGrace

    /// `--pass-env`: COMMAND also gets `REDLOCK_PASSWORD` and a `REDLOCK_SERVERS` with passwords.
    var passCredentials = false

    private enum Event: Sendable {
        case exited(Int32)
        case signal(SignalCenter.Received)
        case timer(Int)
        case renewed(Result<Lock, RedlockError>)
    }

    func run() async throws -> Int32 {
        let (events, sink) = AsyncStream.makeStream(of: Event.self)

        // Acquire; a signal meanwhile cancels the attempts (and releases what they got).
        let acquiring = Task { try await session.acquire(resource) }
        SignalCenter.shared.onSignal { signal in
            sink.yield(.signal(signal))
            acquiring.cancel()
        }
        let acquired: Lock
        do {
            acquired = try await acquiring.value
        } catch is CancellationError {
            return interrupted()
        }
        if SignalCenter.shared.received != nil {
            await session.release(acquired)
            return interrupted()
        }

        var environment = ChildEnvironment.make(from: Environment.current, passCredentials: passCredentials)
        environment["REDLOCK_RESOURCE"] = resource
        environment["REDLOCK_VALUE"] = acquired.value
        if let token = acquired.fencingToken { environment["REDLOCK_FENCING_TOKEN"] = String(token) }
        let child: Child
        do {
            child = try Child.spawn(
                command, environment: environment, inheritedDescriptors: inheritedDescriptors
            ) { status in
                sink.yield(.exited(status))
            }
        } catch {
            await session.release(acquired)
            throw ToolExit(error.status, error.message)
        }
        session.note(
            "started \(JSON.quoted(command[0])) (pid \(child.pid)) holding \(JSON.quoted(resource)),"
                + " validity \(acquired.remainingValidity.millisecondsText)")

        var state = LoopState(lock: acquired, ttl: session.settings.ttl, killAfter: killAfter)
        var timer: Task<Void, Never>?
        var generation = 0
        func schedule() {
            timer?.cancel()
            generation += 1
            guard let next = state.nextDeadline else { return }
            let current = generation
            timer = Task {
                try? await Task.sleep(until: next, clock: .continuous)
                if !Task.isCancelled { sink.yield(.timer(current)) }
            }
        }
        func lose(_ reason: String) {
            state.lost = true
            // COMMAND must be gone by the end of the validity: past it another client may hold the lock.
            state.killAt = min(.now + killAfter, state.lock.validUntil)
            Output.stderr(
                "lost the lock on \(JSON.quoted(resource)): \(reason); sending \(SignalParsing.name(of: lossSignal))"
                    + " to \(JSON.quoted(command[0])) (pid \(child.pid))")
            child.send(lossSignal)
        }

        schedule()
        var waitStatus: Int32 = 0
        loop: for await event in events {
            let now = ContinuousClock.now
            switch event {
            case .exited(let status):
                waitStatus = status
                break loop
            case .signal(let signal):
                // Ctrl-C reaches COMMAND from the terminal already, unless it left the process group.
                if signal.fromTerminal && getpgid(child.pid) == getpgrp() {
                    session.note("signal \(signal.number) from the terminal reached pid \(child.pid) too")
                } else {
                    session.note("forwarding signal \(signal.number) to pid \(child.pid)")
                    child.send(signal.number)
                }
            case .timer(let tick):
                guard tick == generation else { continue }
                if !state.lost && now >= state.stopAt {
                    lose(
                        "the renewal failed and \(state.lock.remainingValidity.millisecondsText) of validity is left;"
                            + " COMMAND must be gone before it ends")
                } else if state.lost, let killAt = state.killAt, now >= killAt {
                    Output.stderr(
                        "\(JSON.quoted(command[0])) (pid \(child.pid)) still runs"
                            + " at the end of the validity (\(SignalParsing.name(of: lossSignal)) was sent"
                            + " up to \(killAfter.millisecondsText) before): sending SIGKILL")
                    child.send(SIGKILL)
                    state.killAt = nil
                } else if !state.lost && !state.renewing && now >= state.nextRenew {
                    state.renewing = true
                    let lock = state.lock
                    Task {
                        do throws(RedlockError) {
                            sink.yield(.renewed(.success(try await session.redlock.renew(lock))))
                        } catch {
                            sink.yield(.renewed(.failure(error)))
                        }
                    }
                }
                schedule()
            case .renewed(let result):
                state.renewing = false
                guard !state.lost else { continue }
                switch result {
                case .success(let renewed):
                    state.lock = renewed
                    state.nextRenew = now + state.renewInterval
                    session.note(
                        "renewed \(JSON.quoted(resource)) on \(renewed.nodes.count) of"
                            + " \(session.redlock.nodes.count), validity \(renewed.validity.millisecondsText)"
                    )
                case .failure(let error) where [.notHeld, .invalidArgument, .closed].contains(error.kind):
                    lose("renew: \(error)")
                case .failure(let error):
                    let left = state.lock.remainingValidity
                    state.nextRenew = now + state.retryDelay
                    Output.stderr(
                        "renewing \(JSON.quoted(resource)) failed, retrying (validity left"
                            + " \(left.millisecondsText)): \(error)")
                }
                schedule()
            }
        }
        timer?.cancel()
        session.note(
            "\(JSON.quoted(command[0])) (pid \(child.pid)) \(Child.describe(waitStatus: waitStatus))")
        await session.release(state.lock)
        return state.lost ? ExitStatus.lockLost : Child.exitCode(ofWaitStatus: waitStatus)
    }

    private func interrupted() -> Int32 {
        let signal = SignalCenter.shared.received ?? SIGINT
        session.note("interrupted by signal \(signal) before COMMAND started")
        return 128 + signal
    }
}

/// What the supervision loop knows about the lock.
private struct LoopState {
    var lock: Lock
    let ttl: Duration
    var nextRenew: ContinuousClock.Instant
    var renewing = false
    var lost = false
    /// When COMMAND gets SIGKILL, once the lock is lost: never after the end of the validity.
    var killAt: ContinuousClock.Instant?
    /// How long COMMAND may take to stop after the loss signal (`run --kill-after`).
    let killAfter: Duration

    init(lock: Lock, ttl: Duration, killAfter: Duration) {
        self.lock = lock
        self.ttl = ttl
        self.killAfter = killAfter
        nextRenew = .now
        nextRenew = .now + renewInterval
    }

    /// When the lock counts as lost if no renewal succeeded: early enough that COMMAND gets the loss
    /// signal `killAfter` before the validity ends (at most a third of the validity before, so that
    /// renewals have their time), and SIGKILL at the end, before another client can hold the lock.
    var stopAt: ContinuousClock.Instant { lock.validUntil - min(killAfter, lock.validity / 3) }

    /// Renew every third of the ttl, and at the latest when half the validity is left.
    var renewInterval: Duration { min(ttl / 3, lock.remainingValidity / 2) }

    /// After a failed renewal: soon, but not in a busy loop.
    var retryDelay: Duration { max(.milliseconds(10), min(ttl / 10, lock.remainingValidity / 3)) }

    /// When the loop must look again: the next renewal or the stop point; once the lock is lost,
    /// the SIGKILL.
    var nextDeadline: ContinuousClock.Instant? {
        if lost { return killAt }
        return renewing ? stopAt : min(nextRenew, stopAt)
    }
}
