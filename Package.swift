// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "multiredlock",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "MultiRedlock", targets: ["MultiRedlock"]),
        .library(name: "MultiRedlockTesting", targets: ["MultiRedlockTesting"]),
        .library(name: "Hiredis", targets: ["Hiredis"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
    ],
    targets: [
        // Layer 1: Debian's libhiredis-dev (0.14.1), mapped as a system library.
        .systemLibrary(
            name: "CHiredis",
            path: "Modules/CHiredis",
            providers: [.apt(["libhiredis-dev"])]
        ),
        // Layer 2: hiredis async contexts driven by a Dispatch event loop.
        .target(name: "Hiredis", dependencies: ["CHiredis"]),
        // Layer 3: the Redlock algorithm.
        .target(
            name: "MultiRedlock",
            dependencies: [
                "Hiredis",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),
        // In-memory nodes for users' unit tests.
        .target(name: "MultiRedlockTesting", dependencies: ["MultiRedlock"]),
        // Starts and controls local redis-server processes: tests, demo, benchmarks.
        .target(name: "LocalRedis"),
        .executableTarget(name: "multiredlock-demo", dependencies: ["MultiRedlock", "LocalRedis"]),
        .testTarget(name: "HiredisTests", dependencies: ["Hiredis", "CHiredis", "LocalRedis"]),
        .testTarget(
            name: "MultiRedlockTests",
            dependencies: ["MultiRedlock", "MultiRedlockTesting", "LocalRedis"]
        ),
        .testTarget(name: "LocalRedisTests", dependencies: ["LocalRedis"]),
    ],
    swiftLanguageModes: [.v6]
)
