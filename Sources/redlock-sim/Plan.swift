/// A seed's plan: the shape (nodes, clients, options) and every step (client operations and faults,
/// each at a time in milliseconds from the start), all drawn from the seed before anything runs, so a
/// seed always replays the same plan whatever happens while it runs.

/// SplitMix64: a small, fast generator whose sequence depends on the seed only.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) {
        state = seed
    }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func int(_ range: ClosedRange<Int>) -> Int { Int.random(in: range, using: &self) }

    mutating func chance(_ probability: Double) -> Bool {
        Double.random(in: 0..<1, using: &self) < probability
    }

    /// One of `choices`, each picked with a chance proportional to its weight.
    mutating func weighted<T>(_ choices: [(Int, T)]) -> T {
        let total = choices.reduce(0) { $0 + $1.0 }
        var pick = int(0...(total - 1))
        for (weight, choice) in choices {
            if pick < weight { return choice }
            pick -= weight
        }
        return choices[choices.count - 1].1
    }
}

/// Switches that break one of Redlock's assumptions on purpose (the negative controls).
struct Modes: Sendable {
    /// Restarts keep the quarantine (a restarted node's grants do not count for a while). Off: every
    /// restart loses the node's data and its grants count at once (`--no-quarantine`).
    var quarantine = true
    /// Each client ends a restarted node's quarantine after the longest ttl it used itself
    /// (`RestartQuarantine.longestTTL`, the library's default; `--client-quarantine`), instead of the
    /// longest ttl of all clients (`.fixed`, as a fleet with several ttls should set it).
    var clientQuarantine = false
}

/// What one client (one `Redlock`) is configured with.
struct ClientConfig: Sendable {
    var name: String
    var retries: Int
    var retryWaitMs: Int
    var fencing: Bool
    /// The ttls its operations pick from, in milliseconds.
    var ttls: [Int]
}

/// A client operation. `pick` chooses among the locks the client holds when the step runs (modulo
/// their count), so the plan does not depend on which earlier operations succeeded.
enum Op: Sendable {
    case lock([Int], ttl: Int)
    case tryLock(Int, ttl: Int)
    case lockWaiting(Int, ttl: Int, waitMs: Int)
    /// `lock(waitingUpTo:)` in a task that is cancelled after `cancelAfterMs`.
    case cancelWaiting(Int, ttl: Int, waitMs: Int, cancelAfterMs: Int)
    /// `withLock` with a body that runs `bodyMs` (often longer than the ttl: it relies on renewals).
    case withLock([Int], ttl: Int, bodyMs: Int)
    case renew(pick: Int)
    case release(pick: Int)
    case unlock(pick: Int)
    case close

    var text: String {
        func names(_ resources: [Int]) -> String { resources.map { "r\($0)" }.joined(separator: ",") }
        return switch self {
        case .lock(let resources, let ttl): "lock(\(names(resources)), ttl \(ttl)ms)"
        case .tryLock(let resource, let ttl): "tryLock(r\(resource), ttl \(ttl)ms)"
        case .lockWaiting(let resource, let ttl, let wait):
            "lock(r\(resource), ttl \(ttl)ms, waitingUpTo \(wait)ms)"
        case .cancelWaiting(let resource, let ttl, let wait, let after):
            "lock(r\(resource), ttl \(ttl)ms, waitingUpTo \(wait)ms) cancelled after \(after)ms"
        case .withLock(let resources, let ttl, let body):
            "withLock(\(names(resources)), ttl \(ttl)ms, body \(body)ms)"
        case .renew(let pick): "renew(held #\(pick))"
        case .release(let pick): "release(held #\(pick))"
        case .unlock(let pick): "unlock(held #\(pick))"
        case .close: "close()"
        }
    }
}

/// A fault on one node; those with a duration end by themselves.
enum Fault: Sendable {
    case down(Int, ms: Int)
    /// Like SIGSTOP: no answers; the commands received run on resume (timed-out ones only when
    /// `apply`).
    case hang(Int, ms: Int, apply: Bool)
    case latency(Int, ms: Int, amountMs: Int)
    /// Every command runs, but its reply is lost: the caller sees a timeout.
    case loseReplies(Int, ms: Int)
    case errorReply(Int, ms: Int, message: String)
    /// Releases (compare-and-delete) answer an error and do nothing.
    case failReleases(Int, ms: Int)
    case restart(Int, keepData: Bool, quarantine: Bool)
    /// The node's clock jumps forward (its keys expire that much sooner).
    case clockJump(Int, ms: Int)

    var node: Int {
        switch self {
        case .down(let node, _), .hang(let node, _, _), .latency(let node, _, _), .loseReplies(let node, _),
            .errorReply(let node, _, _), .failReleases(let node, _), .restart(let node, _, _),
            .clockJump(let node, _):
            node
        }
    }

    /// How long the fault lasts (zero for instant ones).
    var durationMs: Int {
        switch self {
        case .down(_, let ms), .hang(_, let ms, _), .latency(_, let ms, _), .loseReplies(_, let ms),
            .errorReply(_, let ms, _), .failReleases(_, let ms):
            ms
        case .restart, .clockJump: 0
        }
    }

    /// Whether the fault loses data the lock relies on.
    var losesData: Bool {
        if case .restart(_, let keepData, _) = self { return !keepData }
        return false
    }

    var text: String {
        switch self {
        case .down(let node, let ms): "n\(node) down for \(ms)ms"
        case .hang(let node, let ms, let apply):
            "n\(node) hangs for \(ms)ms (timed-out writes \(apply ? "applied" : "dropped") on resume)"
        case .latency(let node, let ms, let amount): "n\(node) latency \(amount)ms for \(ms)ms"
        case .loseReplies(let node, let ms): "n\(node) loses replies (commands applied) for \(ms)ms"
        case .errorReply(let node, let ms, let message): "n\(node) answers \"\(message)\" for \(ms)ms"
        case .failReleases(let node, let ms): "n\(node) fails releases for \(ms)ms"
        case .restart(let node, let keepData, let quarantine):
            "n\(node) restarts \(keepData ? "keeping" : "losing") its data, \(quarantine ? "with" : "without") quarantine"
        case .clockJump(let node, let ms): "n\(node) clock jumps \(ms)ms forward"
        }
    }
}

enum Action: Sendable {
    case client(Int, Op)
    case fault(Fault)
}

/// One planned step: `id` is its place in the full plan (for `--steps`), `time` when it is due.
struct Step: Sendable {
    var id: Int
    var time: Int
    var action: Action

    var text: String {
        switch action {
        case .client(let client, let op): "c\(client) \(op.text)"
        case .fault(let fault): fault.text
        }
    }
}

struct Plan: Sendable {
    var seed: UInt64
    var nodes: Int
    var resources: Int
    var nodeTimeoutMs: Int
    /// The fixed part of the drift allowance, in milliseconds (the factor is 0.01).
    var driftMs: Int
    var clients: [ClientConfig]
    var durationMs: Int
    var steps: [Step]
    var modes: Modes

    /// Whether some planned restart loses data (then fencing tokens may go back: see the options).
    var losesData: Bool {
        steps.contains {
            if case .fault(let fault) = $0.action { return fault.losesData }
            return false
        }
    }

    /// The longest fault, in milliseconds (a hung write may land that much later).
    var longestFaultMs: Int {
        steps.map {
            if case .fault(let fault) = $0.action { return fault.durationMs }
            return 0
        }.max() ?? 0
    }

    var longestTTLMs: Int { clients.flatMap(\.ttls).max() ?? 0 }

    static let ttlChoices = [80, 120, 200, 300]

    /// The plan for `seed`.
    static func make(seed: UInt64, modes: Modes) -> Plan {
        var random = SplitMix64(seed: seed)
        let nodes = random.int(1...7)
        let resources = random.int(1...3)
        let nodeTimeoutMs = random.int(8...25)
        let driftMs = 5
        let clients = (0..<random.int(1...5)).map { index in
            ClientConfig(
                name: "c\(index)",
                // Mostly with retries: the interesting histories have several attempts per call.
                retries: random.weighted([(1, 0), (3, 1), (2, 2), (2, 3)]),
                retryWaitMs: random.weighted([(1, 0), (3, 5), (3, 20), (1, 60)]),
                fencing: random.chance(0.3),
                ttls: Array(ttlChoices.shuffled(using: &random).prefix(random.int(1...3))))
        }
        let durationMs = random.int(600...1200)
        var steps: [(time: Int, action: Action)] = []

        for (index, client) in clients.enumerated() {
            var time = random.int(0...30)
            let closeAt = random.chance(0.3) ? random.int(durationMs / 2...durationMs) : nil
            while time < durationMs {
                if let closeAt, time >= closeAt {
                    steps.append((time, .client(index, .close)))
                    // One call after close: it must fail at once with `closed`.
                    steps.append((time + 5, .client(index, .lock([0], ttl: client.ttls[0]))))
                    break
                }
                let resource = random.int(0...(resources - 1))
                let ttl = client.ttls[random.int(0...(client.ttls.count - 1))]
                let many: [Int] =
                    resources >= 2 && !client.fencing
                    ? Array((0..<resources).shuffled(using: &random).prefix(random.int(2...resources)))
                    : [resource]
                let op: Op = random.weighted([
                    (20, .lock([resource], ttl: ttl)),
                    (10, .tryLock(resource, ttl: ttl)),
                    (8, .lockWaiting(resource, ttl: ttl, waitMs: random.int(0...150))),
                    (4, .cancelWaiting(resource, ttl: ttl, waitMs: 300, cancelAfterMs: random.int(0...60))),
                    (8, .withLock([resource], ttl: ttl, bodyMs: random.int(ttl / 4...ttl * 5 / 2))),
                    (many.count > 1 ? 6 : 0, .lock(many, ttl: ttl)),
                    (
                        many.count > 1 ? 3 : 0,
                        .withLock(many, ttl: ttl, bodyMs: random.int(ttl / 4...ttl * 2))
                    ),
                    (12, .renew(pick: random.int(0...3))),
                    (12, .release(pick: random.int(0...3))),
                    (8, .unlock(pick: random.int(0...3))),
                ])
                steps.append((time, .client(index, op)))
                time += random.int(2...40)
            }
        }

        // Faults: many short ones (a node flapping between two attempts of one call) and some long.
        var lastJump = Array(repeating: -1_000_000, count: nodes)
        let maxTTL = clients.flatMap(\.ttls).max() ?? 0
        var time = 0
        while true {
            time += random.int(3...60)
            guard time < durationMs else { break }
            let node = random.int(0...(nodes - 1))
            let ms = random.chance(0.7) ? random.int(2...50) : random.int(50...300)
            let keepData = modes.quarantine ? random.chance(0.5) : false
            let quarantine = modes.quarantine ? (keepData ? random.chance(0.5) : true) : false
            let messages = [
                "OOM command not allowed when used memory > 'maxmemory'",
                "READONLY You can't write against a read only replica.",
                "NOSCRIPT No matching script. Please use EVAL.",
            ]
            let message = messages[random.int(0...2)]
            let fault: Fault = random.weighted([
                (12, .down(node, ms: ms)),
                (12, .hang(node, ms: ms, apply: random.chance(0.7))),
                (10, .latency(node, ms: ms, amountMs: random.int(nodeTimeoutMs / 2...nodeTimeoutMs * 3))),
                (8, .loseReplies(node, ms: ms)),
                (12, .errorReply(node, ms: ms, message: message)),
                (8, .failReleases(node, ms: ms)),
                (modes.quarantine ? 6 : 12, .restart(node, keepData: keepData, quarantine: quarantine)),
                (4, .clockJump(node, ms: random.int(1...driftMs))),
            ])
            if case .clockJump = fault {
                // At most one jump within any two longest ttls, of at most the fixed drift: within
                // the drift allowance, so the assumptions hold.
                guard time - lastJump[node] > 2 * maxTTL else { continue }
                lastJump[node] = time
            }
            steps.append((time, .fault(fault)))
        }
        let ordered = steps.enumerated().sorted {
            ($0.element.time, $0.offset) < ($1.element.time, $1.offset)
        }
        return Plan(
            seed: seed, nodes: nodes, resources: resources, nodeTimeoutMs: nodeTimeoutMs, driftMs: driftMs,
            clients: clients, durationMs: durationMs,
            steps: ordered.enumerated().map {
                Step(id: $0.offset, time: $0.element.element.time, action: $0.element.element.action)
            },
            modes: modes)
    }

    /// The shape in one line.
    var shape: String {
        let clientText = clients.map {
            "\($0.name)(retries \($0.retries), wait ≤\($0.retryWaitMs)ms\($0.fencing ? ", fenced" : ""), ttls \($0.ttls.map(String.init).joined(separator: "/"))ms)"
        }.joined(separator: " ")
        return
            "N=\(nodes) (quorum \(nodes / 2 + 1)), \(resources) resource(s), node timeout \(nodeTimeoutMs)ms, drift \(driftMs)ms+1%, clients: \(clientText)"
    }
}
