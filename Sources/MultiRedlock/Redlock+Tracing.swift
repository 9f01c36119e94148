import Tracing

/// What a span records of an operation's outcome.
struct SpanOutcome {
    /// `granted`, `renewed`, `released`, `cancelled`, or the error's kind.
    var kind: String
    /// How many attempts were made.
    var attempts: Int
    /// How many nodes granted (lock, renew) or released (release).
    var nodes: Int

    init(kind: String, attempts: Int, nodes: Int) {
        self.kind = kind
        self.attempts = attempts
        self.nodes = nodes
    }

    init(_ error: any Error) {
        if let error = error as? RedlockError {
            self.init(kind: error.kind.rawValue, attempts: error.attempts, nodes: error.grantedCount)
        } else if error is CancellationError {
            self.init(kind: "cancelled", attempts: 0, nodes: 0)
        } else {
            self.init(kind: "error", attempts: 0, nodes: 0)
        }
    }
}

extension RedlockError {
    /// How many nodes granted in the last attempt, by the evidence.
    var grantedCount: Int { nodes.count { $0.outcome == .granted } }
}

extension Redlock {
    /// Span attribute names.
    enum SpanAttribute {
        static let resource = "multiredlock.resource"
        static let attempts = "multiredlock.attempts"
        static let outcome = "multiredlock.outcome"
        static let nodes = "multiredlock.nodes_granted"
        static let nodeCount = "multiredlock.nodes"
    }

    /// Runs `body` in a span named `name` of the options' tracer (or the bootstrapped one). With
    /// the default no-op tracer no span is made at all (not even the task-local context binding
    /// `withSpan` does); otherwise the attributes are only worked out when the span records.
    func traced<T, E: Error>(
        _ name: String, _ keys: [String], options: RedlockOptions,
        outcome: (Result<T, E>) -> SpanOutcome, _ body: () async -> Result<T, E>
    ) async -> Result<T, E> {
        // The usual case first, cheaply: no tracer of the options' and no instrument at all (the
        // default `NoOpInstrument`, which is no tracer). Looking for a tracer among the instruments
        // (`InstrumentationSystem.tracer`) costs two protocol casts, about 2,400 instructions.
        if options.tracer == nil && InstrumentationSystem.instrument is NoOpInstrument { return await body() }
        let tracer = options.tracer ?? InstrumentationSystem.tracer
        if tracer is NoOpTracer { return await body() }
        let nodeCount = nodes.count
        return await tracer.withAnySpan(name, ofKind: .client) { span in
            let result = await body()
            if span.isRecording {
                let recorded = outcome(result)
                span.attributes[SpanAttribute.resource] = Lock.name(of: keys)
                span.attributes[SpanAttribute.attempts] = recorded.attempts
                span.attributes[SpanAttribute.outcome] = recorded.kind
                span.attributes[SpanAttribute.nodes] = recorded.nodes
                span.attributes[SpanAttribute.nodeCount] = nodeCount
                if case .failure(let error) = result {
                    span.recordError(error)
                    span.setStatus(SpanStatus(code: .error, message: recorded.kind))
                }
            }
            return result
        }
    }
}
