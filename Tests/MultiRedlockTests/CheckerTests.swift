import Foundation
import LocalRedis
import MultiRedlock
import MultiRedlockTesting
import TestSupport
import Testing

/// `MutualExclusionChecker` on hand-made histories, and its line format.
struct CheckerTests {
    typealias Hold = MutualExclusionChecker.Hold

    static func hold(
        _ client: String, _ acquired: UInt64, _ validUntil: UInt64, released: UInt64? = nil,
        value: String? = nil
    ) -> Hold {
        Hold(
            client: client, value: value ?? "\(client)-\(acquired)", acquired: acquired,
            validUntil: validUntil,
            released: released)
    }

    static func pairs(_ holds: [Hold]) -> [String] {
        MutualExclusionChecker.violations(in: holds).map { "\($0.0.client)+\($0.1.client)" }
    }

    @Test func disjointHoldsAreFine() {
        let holds = [Self.hold("a", 0, 100, released: 50), Self.hold("b", 60, 200, released: 150)]
        #expect(Self.pairs(holds).isEmpty)
    }

    @Test func overlappingHoldsAreFound() {
        let holds = [Self.hold("a", 0, 100, released: 80), Self.hold("b", 60, 200, released: 150)]
        #expect(Self.pairs(holds) == ["a+b"])
        // Order of recording does not matter.
        #expect(Self.pairs(holds.reversed()) == ["a+b"])
    }

    @Test func touchingHoldsAreNotAnOverlap() {
        // a's window is [0, 50): b acquiring at 50 follows it.
        let released = [Self.hold("a", 0, 100, released: 50), Self.hold("b", 50, 200)]
        #expect(Self.pairs(released).isEmpty)
        // Expired at 100, b acquired at 100.
        let expired = [Self.hold("a", 0, 100), Self.hold("b", 100, 200)]
        #expect(Self.pairs(expired).isEmpty)
        // One nanosecond earlier is an overlap.
        #expect(Self.pairs([Self.hold("a", 0, 100), Self.hold("b", 99, 200)]) == ["a+b"])
    }

    @Test func nestedHoldsAreFound() {
        let holds = [
            Self.hold("outer", 0, 1_000, released: 900), Self.hold("inner", 100, 1_000, released: 200),
            Self.hold("later", 950, 2_000),
        ]
        #expect(Self.pairs(holds) == ["outer+inner"])
    }

    @Test func unreleasedHoldLastsUntilItsValidity() {
        let holds = [Self.hold("a", 0, 100), Self.hold("b", 90, 200, released: 95), Self.hold("c", 100, 300)]
        #expect(Self.pairs(holds) == ["a+b"])
        #expect(holds[0].end == 100)
        #expect(holds[0].overran)
    }

    @Test func releaseAfterExpiryIsCutAtTheValidity() {
        // a released at 500, but its validity ended at 100: from 100 on b may legitimately hold it.
        let a = Self.hold("a", 0, 100, released: 500)
        let b = Self.hold("b", 150, 400, released: 300)
        #expect(a.end == 100)
        #expect(Self.pairs([a, b]).isEmpty)
        let checker = MutualExclusionChecker(holds: [a, b])
        #expect(checker.violations().isEmpty)
        // The checker still reports that a kept going past its validity.
        #expect(checker.overruns() == [a])
    }

    @Test func emptyWindowsNeverOverlap() {
        // Validity gone before the lock was even acquired.
        let stale = Self.hold("stale", 100, 50)
        #expect(stale.isEmpty)
        #expect(Self.pairs([stale, Self.hold("b", 0, 200)]).isEmpty)
    }

    @Test func sameGrantRecordedTwiceIsNotAConflict() {
        let first = Self.hold("a", 0, 100, value: "v1")
        let renewed = Self.hold("a", 80, 200, value: "v1")
        #expect(Self.pairs([first, renewed]).isEmpty)
        // The same value held by another client is a conflict (two processes sharing a value).
        #expect(Self.pairs([first, Self.hold("b", 80, 200, value: "v1")]) == ["a+b"])
    }

    @Test func everyOverlappingPairIsReportedOnce() {
        let holds = [Self.hold("a", 0, 100), Self.hold("b", 10, 100), Self.hold("c", 20, 100)]
        #expect(Self.pairs(holds).sorted() == ["a+b", "a+c", "b+c"])
    }

    @Test func sweepAgreesWithBruteForce() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            let holds = (0..<12).map { index -> Hold in
                let acquired = UInt64.random(in: 0...1_000, using: &generator)
                let validUntil = acquired + UInt64.random(in: 0...200, using: &generator)
                let released = Bool.random(using: &generator) ? acquired + UInt64.random(in: 0...300) : nil
                return Self.hold("c\(index)", acquired, validUntil, released: released)
            }
            var expected = 0
            for i in holds.indices {
                for j in holds.indices where i < j {
                    let (a, b) = (holds[i], holds[j])
                    if a.end > a.acquired && b.end > b.acquired && a.acquired < b.end && b.acquired < a.end {
                        expected += 1
                    }
                }
            }
            #expect(MutualExclusionChecker.violations(in: holds).count == expected)
        }
    }

    @Test func recordsLocksOnTheMonotonicClock() async throws {
        let checker = MutualExclusionChecker()
        // Validities of a minute: the hold must not overrun however slow the machine is.
        let before = MutualExclusionChecker.now()
        let now = ContinuousClock.now
        let lock = Lock(
            resource: "r", value: "v", validity: .seconds(60), ttl: .seconds(61),
            validUntil: now + .seconds(60),
            attempts: 1, nodes: [])
        let ticket = checker.acquired(lock, client: "me")
        let after = MutualExclusionChecker.now()
        try await Task.sleep(for: .milliseconds(20))
        checker.released(ticket)
        let hold = try #require(checker.holds.first)
        #expect(hold.acquired >= before && hold.acquired <= after)
        // validUntil is 60 s after `now`, which was read between `before` and `after`; the checker's
        // conversion to its clock (two reads inside `acquired`) adds at most that span again.
        let expected = Int64(before) + 60_000_000_000
        let slack = 2 * Int64(after - before) + 1_000_000
        #expect(abs(Int64(hold.validUntil) - expected) <= slack, "slack \(slack) ns")
        let released = try #require(hold.released)
        #expect(released >= hold.acquired + 20_000_000)
        #expect(!hold.overran)
        // A renewal moves the validity forward.
        let renewed = Lock(
            resource: "r", value: "v", validity: .seconds(120), ttl: .seconds(121),
            validUntil: now + .seconds(120),
            attempts: 1, nodes: [])
        checker.renewed(ticket, to: renewed)
        #expect(Int64(checker.holds[0].validUntil) >= Int64(hold.validUntil) + 60_000_000_000 - slack)
    }

    @Test func concurrentRecordingKeepsEveryHold() async {
        let checker = MutualExclusionChecker()
        await withTaskGroup(of: Void.self) { group in
            for worker in 0..<8 {
                group.addTask {
                    for index in 0..<250 {
                        let start = UInt64(worker * 1_000_000 + index * 10)
                        checker.record(Self.hold("w\(worker)", start, start + 5, released: start + 4))
                    }
                }
            }
        }
        #expect(checker.holds.count == 2_000)
        #expect(checker.violations().isEmpty)
    }

    // MARK: Line format

    @Test func lineFormatRoundTrips() throws {
        let holds = [
            Self.hold("worker-1", 10, 20, released: 15, value: "host_1700000000000_00ff"),
            Self.hold("with space", 30, 40, value: "100% sure\ttab"),
            Self.hold("", 50, 60, released: 55, value: "ключ-🔒"),
            Self.hold("unicode-breaks", 70, 80, value: "a\u{2028}b\u{85}c\r\nd"),
        ]
        let text = MutualExclusionChecker.format(holds)
        #expect(text.utf8.split(separator: UInt8(ascii: "\n")).count == 4)
        #expect(text.hasPrefix("worker-1 host_1700000000000_00ff 10 20 15\n"))
        #expect(text.contains("with%20space 100%25%20sure%09tab 30 40 -\n"))
        #expect(try MutualExclusionChecker.parse(text) == holds)
    }

    @Test func parseSkipsCommentsAndBlankLinesAndReportsBadLines() throws {
        let text = "# client value acquired validUntil released\n\n  a v1 1 2 -\r\nb v2 3 4 5\n"
        let holds = try MutualExclusionChecker.parse(text)
        #expect(holds == [Self.hold("a", 1, 2, value: "v1"), Self.hold("b", 3, 4, released: 5, value: "v2")])

        for bad in [
            "a v1 1 2", "a v1 x 2 -", "a v1 1 2 3 4", "a v1 1 -2 -", "a v%zz 1 2 -", "a v1 1 2 later",
        ] {
            let error = try #require(throws: MutualExclusionChecker.FormatError.self) {
                try MutualExclusionChecker.parse("a v0 0 1 -\n" + bad + "\n")
            }
            #expect(error.lineNumber == 2, "\(bad): \(error)")
        }
    }

    @Test func processesAppendToOneFile() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "checker-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("holds.txt").path

        // Eight writers append concurrently, as separate processes would.
        await withTaskGroup(of: Void.self) { group in
            for worker in 0..<8 {
                group.addTask {
                    for index in 0..<100 {
                        let start = UInt64(worker * 100_000 + index * 100)
                        let hold = Self.hold("w\(worker)", start, start + 50, released: start + 40)
                        try? MutualExclusionChecker.appendLine(hold, toFileAt: path)
                    }
                }
            }
        }
        // A shell script's line, with the same clock as Python's time.monotonic_ns().
        try "# from a shell\nsh-1 v-sh 900000 900010 -\n".data(using: .utf8).map {
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
            defer { try? handle.close() }
            try handle.seekToEnd()
            try handle.write(contentsOf: $0)
        }

        let checker = MutualExclusionChecker()
        #expect(try checker.load(fileAt: path) == 801)
        #expect(checker.violations().isEmpty)

        // Written back, read again: the same holds.
        let copy = directory.appendingPathComponent("copy.txt").path
        try checker.write(toFileAt: copy)
        let reread = MutualExclusionChecker()
        try reread.load(fileAt: copy)
        #expect(reread.holds == checker.holds)

        // An overlapping line from another process is found.
        try MutualExclusionChecker.appendLine(Self.hold("intruder", 100_010, 100_020), toFileAt: path)
        let again = MutualExclusionChecker()
        try again.load(fileAt: path)
        #expect(again.violations().map { $0.1.client } == ["intruder"])
        #expect(again.report().contains("intruder"))

        #expect(throws: MutualExclusionChecker.FileError.self) {
            try MutualExclusionChecker().load(fileAt: directory.appendingPathComponent("missing").path)
        }
    }

    @Test func pythonReadsTheSameClock() async throws {
        let python = "/usr/bin/python3"
        try #require(FileManager.default.isExecutableFile(atPath: python), "needs \(python)")
        let before = MutualExclusionChecker.now()
        let output = try await Subprocess.run(
            python, ["-S", "-c", "import time; print(time.monotonic_ns())"]
        )
        .stdout
        let after = MutualExclusionChecker.now()
        let theirs = try #require(UInt64(output.trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(before <= theirs && theirs <= after, "\(before) \(theirs) \(after)")
    }
}
