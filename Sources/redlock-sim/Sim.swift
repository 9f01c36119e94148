#if canImport(Glibc)
    import Glibc
#endif

/// `redlock-sim`: randomized fault simulation of Redlock over mock nodes (see the README, `make sim`).
@main
struct Sim {
    struct Arguments {
        var firstSeed: UInt64 = 1
        var seeds = 1
        var single = false
        /// One seed per core by default: more seeds than cores share the cooperative pool's threads,
        /// and a simulated client then waits for a thread long enough to overrun its time bound (8
        /// at a time on 2 cores: 2–4 bound violations in 400 seeds per run; 2 at a time: none).
        var jobs = max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        var steps: Set<Int>?
        var modes = Modes()
        var slackMs = 150
        var shrinkRuns = 40
        var verbose = false
        var repeats = 1
    }

    static let usage = """
        usage: redlock-sim [--seeds N] [--first-seed S] [--seed S [--steps ID,ID,…]] [--jobs J]
                           [--no-quarantine] [--slack-ms MS] [--shrink-runs R] [--verbose]
          --seeds N          run seeds first-seed … first-seed+N-1 (default 1)
          --seed S           run seed S alone and print its history (a replay)
          --steps IDS        with --seed: run only these steps of its plan (a shortened history)
          --repeat K         with --seed: replay it K times (timing varies: how often it fails)
          --jobs J           seeds run at once (default: one per core)
          --no-quarantine    negative control: restarts lose data and are counted at once
          --client-quarantine  each client quarantines a restarted node for its own longest ttl
                             (as RedisNode does), not the longest ttl of all clients (the mock's)
          --slack-ms MS      scheduling slack allowed on every operation bound (default 150)
          --shrink-runs R    reruns spent shortening the first failing seed's history (default 40)
        """

    static func parse() -> Arguments {
        var arguments = Arguments()
        var list = Array(CommandLine.arguments.dropFirst())[...]
        func value(_ flag: String) -> String {
            guard let value = list.popFirst() else { fail("\(flag) needs a value") }
            return value
        }
        func number<T: FixedWidthInteger>(_ flag: String) -> T {
            let text = value(flag)
            guard let number = T(text), number >= 0 else {
                fail("\(flag): not a non-negative number: \(text)")
            }
            return number
        }
        while let flag = list.popFirst() {
            switch flag {
            case "--seeds": arguments.seeds = number(flag)
            case "--first-seed": arguments.firstSeed = number(flag)
            case "--seed":
                arguments.firstSeed = number(flag)
                arguments.seeds = 1
                arguments.single = true
            case "--steps":
                let ids = value(flag).split(separator: ",").map { Int($0) }
                guard ids.allSatisfy({ $0 != nil }) else {
                    fail("--steps: a comma-separated list of step ids")
                }
                arguments.steps = Set(ids.compactMap { $0 })
            case "--repeat": arguments.repeats = max(1, number(flag))
            case "--jobs": arguments.jobs = max(1, number(flag))
            case "--no-quarantine": arguments.modes.quarantine = false
            case "--client-quarantine": arguments.modes.clientQuarantine = true
            case "--slack-ms": arguments.slackMs = number(flag)
            case "--shrink-runs": arguments.shrinkRuns = number(flag)
            case "--verbose": arguments.verbose = true
            case "-h", "--help":
                say(usage)
                exit(0)
            default: fail("unknown argument \(flag)")
            }
        }
        if arguments.steps != nil && !arguments.single { fail("--steps needs --seed") }
        return arguments
    }

    static func fail(_ message: String) -> Never {
        say("redlock-sim: \(message)\n\(usage)")
        exit(64)
    }

    static func main() async {
        let arguments = parse()
        let started = ContinuousClock.now
        let modeText =
            arguments.modes.quarantine ? "" : " (negative control: no quarantine, restarts lose data)"
        let last = arguments.firstSeed + UInt64(arguments.seeds) - 1
        if arguments.single {
            let times = arguments.repeats > 1 ? ", \(arguments.repeats) times" : ""
            say("sim: replaying seed \(arguments.firstSeed)\(times)\(modeText)")
        } else {
            say("sim: seeds \(arguments.firstSeed)…\(last), \(arguments.jobs) at a time\(modeText)")
        }
        var replays = arguments.single ? arguments.repeats : 1

        var totals = Outcome()
        var failed: [(seed: UInt64, plan: Plan, steps: [Step], outcome: Outcome)] = []
        var done = 0
        var nextSeed = arguments.firstSeed
        await withTaskGroup(of: (Plan, [Step], Outcome).self) { group in
            func launch() {
                guard nextSeed <= last else { return }
                let plan = Plan.make(seed: nextSeed, modes: arguments.modes)
                replays -= 1
                if replays <= 0 { nextSeed += 1 }
                let steps =
                    arguments.steps.map { ids in plan.steps.filter { ids.contains($0.id) } } ?? plan.steps
                group.addTask {
                    (plan, steps, await Run(plan: plan, steps: steps, slackMs: arguments.slackMs).execute())
                }
            }
            // Replays of one seed run one at a time, as the seed ran alone.
            for _ in 0..<(arguments.single ? 1 : arguments.jobs) { launch() }
            while let (plan, steps, outcome) = await group.next() {
                done += 1
                totals.operations += outcome.operations
                totals.faults += outcome.faults
                totals.grants += outcome.grants
                totals.unjudged += outcome.unjudged
                totals.violations += outcome.violations
                if !outcome.violations.isEmpty {
                    failed.append((plan.seed, plan, steps, outcome))
                    say(
                        "seed \(plan.seed): \(outcome.violations.count) violation(s), first: "
                            + "\(outcome.violations[0].kind.rawValue): \(outcome.violations[0].text)")
                }
                if arguments.single && (done == 1 || !outcome.violations.isEmpty) {
                    say("seed \(plan.seed): \(plan.shape)")
                    if arguments.verbose || (!outcome.violations.isEmpty && failed.count == 1) {
                        say(outcome.history.map(\.line).joined(separator: "\n"))
                    }
                }
                if done % 50 == 0 { say("sim: \(done) seeds, \(failed.count) failed") }
                launch()
            }
        }
        let elapsed = Recorder.ms(ContinuousClock.now - started) / 1000
        failed.sort { $0.seed < $1.seed }

        if let first = failed.first {
            await report(first, arguments: arguments)
        }
        let rate = String(format1: Double(done) / max(elapsed, 0.001))
        say("")
        say("seeds run: \(done) in \(String(format1: elapsed))s (\(rate) seeds/s)")
        say("operations: \(totals.operations), faults: \(totals.faults), grants: \(totals.grants)")
        if totals.unjudged > 0 {
            say(
                "bounds not judged: \(totals.unjudged) operations (the process stalled ≥ \(arguments.slackMs / 3)ms meanwhile)"
            )
        }
        var kinds: [String: Int] = [:]
        for violation in totals.violations { kinds[violation.kind.rawValue, default: 0] += 1 }
        let kindText = kinds.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(
            separator: ", ")
        say("\(totals.violations.count) violations\(kindText.isEmpty ? "" : " (\(kindText))")")
        if !failed.isEmpty {
            say("failed seeds: \(failed.map { String($0.seed) }.joined(separator: " "))")
        }
        say("sim: \(done - failed.count) passed, \(failed.count) failed")
        exit(failed.isEmpty ? 0 : 1)
    }

    /// Prints a failing seed: the first violation, a history shortened by rerunning smaller plans,
    /// and how to replay both.
    static func report(
        _ failure: (seed: UInt64, plan: Plan, steps: [Step], outcome: Outcome), arguments: Arguments
    ) async {
        let (seed, plan, steps, outcome) = failure
        let first = outcome.violations[0]
        let before = outcome.started.filter { $0.time <= first.time }
        say("")
        say("== seed \(seed) FAILED: \(first.kind.rawValue): \(first.text)")
        say("   shape: \(plan.shape)")
        say(
            "   found after \(before.count) steps (\(countOperations(before.map(\.id), in: plan)) operations), "
                + "\(String(format1: first.time))ms into the run")
        var shortest = (steps: steps, outcome: outcome)
        if arguments.shrinkRuns > 0 {
            var shrinker = Shrinker(
                plan: plan, kind: first.kind, slackMs: arguments.slackMs, runs: arguments.shrinkRuns)
            shortest = await shrinker.shrink(steps, outcome)
        }
        let violation = shortest.outcome.violations.first { $0.kind == first.kind } ?? first
        say("   shortened to \(shortest.steps.count) of \(plan.steps.count) planned steps:")
        for step in shortest.steps { say("     step \(step.id) at \(step.time)ms: \(step.text)") }
        say("   history of the shortened run (faults, and the violating clients' calls):")
        for entry in relevant(shortest.outcome.history, violation) { say("     \(entry.line)") }
        say("   \(violation.kind.rawValue): \(violation.text)")
        let modeArgs =
            !arguments.modes.quarantine
            ? " SIM_ARGS=--no-quarantine"
            : arguments.modes.clientQuarantine ? " SIM_ARGS=--client-quarantine" : ""
        say("   replay: make sim SEED=\(seed)\(modeArgs)")
        let ids = shortest.steps.map { String($0.id) }.joined(separator: ",")
        say("   replay the shortened history: make sim SEED=\(seed) STEPS=\(ids)\(modeArgs)")
    }

    static func countOperations(_ ids: [Int], in plan: Plan) -> Int {
        let set = Set(ids)
        return plan.steps.filter {
            guard set.contains($0.id), case .client = $0.action else { return false }
            return true
        }.count
    }

    /// The lines that explain a violation: every fault, the involved clients' operations, and the
    /// node calls carrying the involved values, up to the violation.
    static func relevant(_ history: [Entry], _ violation: Violation) -> [Entry] {
        history.filter { entry in
            guard entry.time <= violation.time + 1 else { return false }
            switch entry.kind {
            case .fault, .note: return true
            case .op: return entry.client.map { violation.clients.contains($0) } ?? false
            case .node:
                // A bound is about the client's own calls, whatever their value.
                if violation.values.isEmpty {
                    return entry.client.map { violation.clients.contains($0) } ?? false
                }
                return entry.value.map { violation.values.contains($0) } ?? false
            }
        }
    }
}

/// Shortens a failing plan: drops the steps after the violation, then chunks of steps (delta
/// debugging), keeping each cut that still fails (within two tries: timing varies between runs).
struct Shrinker {
    let plan: Plan
    let kind: Violation.Kind
    let slackMs: Int
    var runs: Int

    mutating func attempt(_ steps: [Step]) async -> Outcome? {
        for _ in 0..<2 where runs > 0 {
            runs -= 1
            let outcome = await Run(plan: plan, steps: steps, slackMs: slackMs).execute()
            if outcome.violations.contains(where: { $0.kind == kind }) { return outcome }
        }
        return nil
    }

    func truncated(_ steps: [Step], _ outcome: Outcome) -> [Step] {
        guard let violation = outcome.violations.first(where: { $0.kind == kind }) else { return steps }
        return steps.filter { Double($0.time) <= violation.time }
    }

    mutating func shrink(_ steps: [Step], _ outcome: Outcome) async -> (steps: [Step], outcome: Outcome) {
        var best = (steps: steps, outcome: outcome)
        let cut = truncated(steps, outcome)
        if cut.count < steps.count, let outcome = await attempt(cut) {
            best = (truncated(cut, outcome), outcome)
        }
        // The clients the violation is not about, all at once.
        if let violation = best.outcome.violations.first(where: { $0.kind == kind }) {
            let involved = best.steps.filter { step in
                guard case .client(let client, _) = step.action else { return true }
                return violation.clients.contains(client)
            }
            if involved.count < best.steps.count, let outcome = await attempt(involved) {
                best = (truncated(involved, outcome), outcome)
            }
        }
        var chunk = max(1, best.steps.count / 2)
        while runs > 0 {
            var index = 0
            var removed = false
            while index < best.steps.count && runs > 0 {
                var candidate = best.steps
                candidate.removeSubrange(index..<min(index + chunk, candidate.count))
                if let outcome = await attempt(candidate) {
                    best = (truncated(candidate, outcome), outcome)
                    removed = true
                } else {
                    index += chunk
                }
            }
            if chunk == 1 && !removed { break }
            chunk = max(1, chunk / 2)
        }
        return best
    }
}

/// Prints a line at once (unbuffered: progress shows while seeds run, also through a pipe).
func say(_ text: String) {
    let bytes = Array((text + "\n").utf8)
    var offset = 0
    while offset < bytes.count {
        let written = bytes.withUnsafeBytes { write(1, $0.baseAddress! + offset, $0.count - offset) }
        if written <= 0 { return }
        offset += written
    }
}
