// swift-tools-version: 6.1
import PackageDescription

// Linux only: the socket watcher (Sources/Hiredis/SocketWatcher.swift) is built on epoll(7), which
// the CEpoll module maps; no Apple platform is claimed, because none builds or is tested.
let package = Package(
    name: "multiredlock",
    products: [
        .library(name: "MultiRedlock", targets: ["MultiRedlock"]),
        .library(name: "MultiRedlockTesting", targets: ["MultiRedlockTesting"]),
        .library(name: "Hiredis", targets: ["Hiredis"]),
        .executable(name: "redlock", targets: ["redlock"]),
        .executable(name: "redlock-bench", targets: ["redlock-bench"]),
        .executable(name: "redlock-sim", targets: ["redlock-sim"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.7.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-distributed-tracing", from: "1.7.3"),
    ],
    targets: [
        // Layer 1: Debian's libhiredis-dev (0.14.1), mapped as a system library.
        .systemLibrary(
            name: "CHiredis",
            path: "Modules/CHiredis",
            providers: [.apt(["libhiredis-dev"])]
        ),
        // Linux's epoll(7), which the Glibc module leaves out: the socket watcher of layer 2.
        .systemLibrary(name: "CEpoll", path: "Modules/CEpoll"),
        // Layer 2: hiredis async contexts driven by a Dispatch event loop.
        .target(name: "Hiredis", dependencies: ["CHiredis", "CEpoll"]),
        // Layer 3: the Redlock algorithm.
        .target(
            name: "MultiRedlock",
            dependencies: [
                "Hiredis",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ]
        ),
        // In-memory nodes for users' unit tests.
        .target(name: "MultiRedlockTesting", dependencies: ["MultiRedlock", "Hiredis"]),
        // Starts and controls local redis-server processes: tests, demo, benchmarks. Depends on
        // Hiredis only for `Locked`, the package's one lock (every user of LocalRedis links Hiredis).
        .target(name: "LocalRedis", dependencies: ["Hiredis"]),
        .executableTarget(name: "multiredlock-demo", dependencies: ["MultiRedlock", "LocalRedis"]),
        // A Redlock in a ServiceGroup (README; the signal test of ServiceLifecycleTests runs it).
        .executableTarget(
            name: "multiredlock-service-example",
            dependencies: [
                "MultiRedlock",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // One-line JSON output, shared by the command-line tool and the benchmark.
        .target(name: "JSONText"),
        // The command-line tool: locks for shell scripts, cron jobs and deploy steps.
        .executableTarget(
            name: "redlock",
            dependencies: [
                "MultiRedlock", "JSONText",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The benchmark behind `make bench`.
        .executableTarget(
            name: "redlock-bench",
            dependencies: [
                "MultiRedlock", "JSONText",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
        // The randomized fault simulation behind `make sim`: clients over mock nodes, the checker as
        // oracle, driven by a seed.
        .executableTarget(name: "redlock-sim", dependencies: ["MultiRedlock", "MultiRedlockTesting"]),
        // What the test targets share: polling, the built executables, child processes (on
        // LocalRedis's spawning), private scratch files. Only test targets depend on it.
        .target(name: "TestSupport", dependencies: ["LocalRedis", "Hiredis"], path: "Tests/TestSupport"),
        .testTarget(
            name: "HiredisTests", dependencies: ["Hiredis", "CHiredis", "LocalRedis", "TestSupport"]),
        .testTarget(
            name: "MultiRedlockTests",
            dependencies: [
                "MultiRedlock", "MultiRedlockTesting", "LocalRedis", "TestSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "InMemoryLogging", package: "swift-log"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
            ]
        ),
        .testTarget(name: "LocalRedisTests", dependencies: ["LocalRedis", "Hiredis", "TestSupport"]),
        .testTarget(
            name: "RedlockCLITests", dependencies: ["redlock", "JSONText", "LocalRedis", "TestSupport"]),
    ],
    swiftLanguageModes: [.v6]
)
