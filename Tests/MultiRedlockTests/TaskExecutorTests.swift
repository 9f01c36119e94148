import LocalRedis
import MultiRedlock
import MultiRedlockTesting
import Synchronization
import TestSupport
import Testing

@testable import Hiredis

/// `Redlock.taskExecutor`: tasks that run on the connections' queue take, renew and release locks
/// against real servers as tasks on the global executor do, with mutual exclusion kept and nothing
/// left behind, and a failed attempt's release never touches the next lock.
@Suite(.serialized)
struct TaskExecutorTests {
    /// A Redlock over nodes of its own has no connection queue: its executor is the global one.
    @Test func aRedlockOverNodesOfItsOwnUsesTheGlobalExecutor() throws {
        let redlock = try Redlock(nodes: [MockRedlockNode(name: "a")])
        #expect(!(redlock.taskExecutor is ConnectionQueueExecutor))
    }

    /// 8 workers on the executor contend for one resource while each also locks and releases keys
    /// of its own: every hold is exclusive, every worker got the contended lock, and no key is left
    /// on any server.
    @Test func contendingWorkersOnTheExecutorKeepMutualExclusion() async throws {
        let group = try await RedisServerGroup.start(count: 3)
        defer { group.stopInBackground() }
        let redlock = try await Fault.connectedRedlock(
            group.ports,
            Fault.options(retries: 200, nodeTimeout: .milliseconds(500), retryWait: .milliseconds(2)))
        #expect(redlock.taskExecutor is ConnectionQueueExecutor)
        let resource = Fault.resource()
        let checker = MutualExclusionChecker()
        let executor = redlock.taskExecutor
        let held = await withTaskExecutorPreference(executor) {
            await withTaskGroup(of: Int.self) { tasks in
                for worker in 0..<8 {
                    tasks.addTask {
                        var held = 0
                        for round in 0..<10 {
                            guard let lock = try? await redlock.lock(resource, ttl: .seconds(5)) else {
                                continue
                            }
                            let ticket = checker.acquired(lock, client: "worker-\(worker)")
                            try? await Task.sleep(for: .milliseconds(1))
                            checker.released(ticket)
                            _ = try? await redlock.release(lock)
                            held += 1
                            if let own = try? await redlock.lock(
                                "\(resource)-\(worker)-\(round)", ttl: .seconds(5))
                            {
                                _ = try? await redlock.release(own)
                            }
                        }
                        return held
                    }
                }
                return await tasks.reduce(0, +)
            }
        }
        #expect(checker.violations().isEmpty, "\(checker.report())")
        #expect(held == 80, "every worker should get the contended lock 10 times (retries: 200)")
        for server in group.servers {
            #expect(
                try await Fault.dbsize(server) == 0, "a key was left on the server on port \(server.port)")
        }
        await redlock.close()
    }

    /// A losing attempt made on the executor is released on the nodes that may hold it; that
    /// release, run on the queue, never deletes the lock the same task takes next.
    @Test func aFailedAttemptsReleaseNeverTouchesTheNextLock() async throws {
        let group = try await RedisServerGroup.start(count: 3)
        defer { group.stopInBackground() }
        let holder = try await Fault.connectedRedlock(group.ports)
        let redlock = try await Fault.connectedRedlock(group.ports)
        let resource = Fault.resource()
        let held = try await holder.lock(resource, ttl: .seconds(10))
        let outcome: (RedlockError.Kind?, String?) = await withTaskExecutorPreference(redlock.taskExecutor) {
            var kind: RedlockError.Kind?
            do {
                _ = try await redlock.lock(resource, ttl: .seconds(10))
            } catch {
                kind = (error as? RedlockError)?.kind
            }
            _ = try? await holder.release(held)
            let next = try? await redlock.lock(resource, ttl: .seconds(10))
            return (kind, next?.value)
        }
        #expect(outcome.0 == .taken)
        let value = try #require(outcome.1, "the lock after the holder's release was not granted")
        // Whatever the failed attempt's release still does in the background, the new value stays.
        try await Task.sleep(for: .milliseconds(300))
        for server in group.servers {
            #expect(
                try await Fault.get(server, resource) == value,
                "the next lock's key is gone on port \(server.port)")
        }
        await holder.close()
        await redlock.close()
    }
}

/// The tests' `.ownExecutor` trait: the test and its child tasks run on the test's own queue, also
/// when they resume from a sleep or from a mock node's answer; a `Task {}` must be told.
@Suite("the tests' own executor", .ownExecutor)
struct OwnExecutorTraitTests {
    @Test func theTestItsTasksAndTheirResumptionsRunOnItsQueue() async throws {
        let executor = try #require(OwnExecutorTrait.executor)
        #expect(executor.isCurrent)
        try await Task.sleep(for: .milliseconds(5))
        #expect(executor.isCurrent, "after a sleep")
        let child = await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                try? await Task.sleep(for: .milliseconds(5))
                return executor.isCurrent
            }
            return await group.next() ?? false
        }
        #expect(child, "a child task")
        // A `Task {}` does not inherit the preference: it runs on the global executor unless told.
        let unstructured = await Task {
            try? await Task.sleep(for: .milliseconds(5))
            return executor.isCurrent
        }.value
        #expect(!unstructured, "a Task {}")
        let told = await Task(executorPreference: executor) {
            try? await Task.sleep(for: .milliseconds(5))
            return executor.isCurrent
        }.value
        #expect(told, "a Task(executorPreference:)")
        let redlock = try Redlock(nodes: [MockRedlockNode(name: "a")])
        let lock = try await redlock.lock("r", ttl: .seconds(5))
        #expect(executor.isCurrent, "after a lock's fan-out")
        _ = try await redlock.release(lock)
        #expect(executor.isCurrent, "after a release")
    }

    /// Under another executor preference, the code is off the queue, and `isCurrent` says so.
    @Test func anotherPreferenceLeavesTheQueue() async {
        #expect(OwnExecutorTrait.executor?.isCurrent == true)
        await withTaskExecutorPreference(globalConcurrentExecutor) {
            #expect(OwnExecutorTrait.executor?.isCurrent == false)
        }
    }
}
