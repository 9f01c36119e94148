import Hiredis
import MultiRedlock

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// Checks mutual exclusion after the fact: record every grant of a lock as a ``Hold`` on one
/// `CLOCK_MONOTONIC`, then ask for the ``violations()``: pairs of holds whose windows overlap.
///
/// A hold's window is `[acquired, end)` with `end = min(released ?? validUntil, validUntil)`: a holder
/// is protected from the moment it learns it has the lock until it releases it or the validity runs
/// out, whichever comes first. The window is half-open, so one hold ending at the very nanosecond the
/// next begins ("touching") is not a violation. Record `released` *before* sending the release, and
/// `acquired` *after* the lock call returned: then a correct lock service never shows an overlap.
/// Holds that share a value (the same grant, e.g. recorded again after a renewal) never conflict.
///
/// Every process on one host sees the same `CLOCK_MONOTONIC`, so several processes can append holds to
/// one file (``appendLine(_:toFileAt:)``, one `write(2)` with `O_APPEND` per hold) and a test reads
/// them all back (``parse(_:)``, ``load(fileAt:)``). The line format is
///
///     client value acquired validUntil released
///
/// with times in nanoseconds of `CLOCK_MONOTONIC`, `-` for a hold not (yet) released, fields separated
/// by spaces or tabs, `%` escapes (`%20`, `%25`, …) for whitespace and `%` inside client and value, and
/// blank lines and lines starting with `#` ignored. A shell script can write one with
/// `echo "worker-1 $VALUE $(monotonic-ns) $UNTIL $(monotonic-ns)" >> holds.txt`, taking the time from
/// e.g. Python's `time.monotonic_ns()`, which reads the same clock.
///
/// ```swift
/// let checker = MutualExclusionChecker()
/// let lock = try await redlock.lock("invoice-42", ttl: .seconds(10))
/// let hold = checker.acquired(lock, client: "worker-1")
/// // … work …
/// checker.released(hold)
/// redlock.unlock(lock.resource, value: lock.value)
/// #expect(checker.violations().isEmpty)
/// ```
///
/// Thread-safe: record from any thread or task.
public final class MutualExclusionChecker: Sendable {
    /// One grant of the lock to one client.
    public struct Hold: Sendable, Hashable, CustomStringConvertible {
        /// Who held it (a worker or process name).
        public var client: String
        /// The lock's value (unique per grant).
        public var value: String
        /// When the client learned it held the lock, in ns of `CLOCK_MONOTONIC`.
        public var acquired: UInt64
        /// When the lock's validity ran out, in ns of `CLOCK_MONOTONIC`.
        public var validUntil: UInt64
        /// When the client stopped relying on the lock (before releasing it), or nil if it never did.
        public var released: UInt64?

        public init(
            client: String, value: String, acquired: UInt64, validUntil: UInt64, released: UInt64? = nil
        ) {
            self.client = client
            self.value = value
            self.acquired = acquired
            self.validUntil = validUntil
            self.released = released
        }

        /// The end of the protected window: the release or the end of validity, whichever is first.
        public var end: UInt64 { min(released ?? validUntil, validUntil) }

        /// Whether the window is empty (the validity ran out before the lock was even acquired).
        public var isEmpty: Bool { end <= acquired }

        /// Whether the holder went on past its validity (released after `validUntil`, or never).
        public var overran: Bool { (released ?? .max) > validUntil }

        /// Whether the windows of `self` and `other` overlap (and they are distinct grants).
        public func overlaps(_ other: Hold) -> Bool {
            guard !(client == other.client && value == other.value), !isEmpty, !other.isEmpty else {
                return false
            }
            return acquired < other.end && other.acquired < end
        }

        /// The hold as one line of the file format, without the line break.
        public var line: String {
            [
                Self.escaped(client), Self.escaped(value), String(acquired), String(validUntil),
                released.map { String($0) } ?? "-",
            ].joined(separator: " ")
        }

        /// Reads one line of the file format.
        /// - Throws: ``MutualExclusionChecker/FormatError`` when the line is malformed.
        public init(parsing line: String) throws(FormatError) {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            guard fields.count == 5 else {
                throw FormatError(line: line, reason: "expected 5 fields, got \(fields.count)")
            }
            guard let client = Self.unescaped(fields[0]), let value = Self.unescaped(fields[1]) else {
                throw FormatError(line: line, reason: "bad % escape in client or value")
            }
            guard let acquired = UInt64(fields[2]) else {
                throw FormatError(line: line, reason: "acquired is not a number of nanoseconds")
            }
            guard let validUntil = UInt64(fields[3]) else {
                throw FormatError(line: line, reason: "validUntil is not a number of nanoseconds")
            }
            var released: UInt64?
            if fields[4] != "-" {
                guard let time = UInt64(fields[4]) else {
                    throw FormatError(line: line, reason: "released is neither a number of nanoseconds nor -")
                }
                released = time
            }
            self.init(
                client: client, value: value, acquired: acquired, validUntil: validUntil, released: released)
        }

        public var description: String {
            let releasedText = released.map { "released \($0)" } ?? "never released"
            return "\(client) [\(value)] from \(acquired) valid until \(validUntil), \(releasedText)"
        }

        /// Percent-escapes whitespace, control bytes and `%`; an empty field is written as a lone `%`.
        private static func escaped(_ field: String) -> String {
            guard !field.isEmpty else { return "%" }
            var bytes: [UInt8] = []
            for byte in field.utf8 {
                if byte <= 0x20 || byte == UInt8(ascii: "%") || byte == 0x7f {
                    let hex = Array(String(byte, radix: 16, uppercase: true).utf8)
                    bytes.append(UInt8(ascii: "%"))
                    if hex.count == 1 { bytes.append(UInt8(ascii: "0")) }
                    bytes += hex
                } else {
                    bytes.append(byte)
                }
            }
            return String(decoding: bytes, as: UTF8.self)
        }

        private static func unescaped(_ field: String) -> String? {
            if field == "%" { return "" }
            var bytes: [UInt8] = []
            var input = Array(field.utf8)[...]
            while let byte = input.popFirst() {
                guard byte == UInt8(ascii: "%") else {
                    bytes.append(byte)
                    continue
                }
                guard input.count >= 2,
                    let value = UInt8(String(decoding: input.prefix(2), as: UTF8.self), radix: 16)
                else { return nil }
                bytes.append(value)
                input = input.dropFirst(2)
            }
            return String(decoding: bytes, as: UTF8.self)
        }
    }

    /// A line of the hold file that could not be read.
    public struct FormatError: Error, Sendable, Hashable, CustomStringConvertible {
        /// The line (without its line break).
        public var line: String
        /// What is wrong with it.
        public var reason: String
        /// The 1-based line number within the text, when known.
        public var lineNumber: Int?

        public init(line: String, reason: String, lineNumber: Int? = nil) {
            self.line = line
            self.reason = reason
            self.lineNumber = lineNumber
        }

        public var description: String {
            let location = lineNumber.map { "line \($0): " } ?? ""
            return "malformed hold \(location)\(reason): \(String(reflecting: line))"
        }
    }

    /// A file of holds could not be read or written.
    public struct FileError: Error, Sendable, Hashable, CustomStringConvertible {
        /// The file.
        public var path: String
        /// What failed, with the system's reason.
        public var reason: String

        public init(path: String, reason: String) {
            self.path = path
            self.reason = reason
        }

        public var description: String { "\(path): \(reason)" }
    }

    /// A hold recorded with ``acquired(_:client:at:)``, to mark released later.
    public struct Ticket: Sendable, Hashable {
        fileprivate let index: Int
    }

    private let storage: Locked<[Hold]>

    /// A checker with the given holds already recorded (none by default).
    public init(holds: [Hold] = []) {
        storage = Locked(holds)
    }

    // MARK: Clock

    /// Now, in nanoseconds of `CLOCK_MONOTONIC`: the clock every hold is measured on.
    public static func now() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }

    /// `instant` of Swift's `ContinuousClock` (e.g. ``Lock/validUntil``) on `CLOCK_MONOTONIC`.
    ///
    /// On Linux `ContinuousClock` reads `CLOCK_BOOTTIME`, which differs from `CLOCK_MONOTONIC` by the
    /// time the machine slept: the instant is converted through the distance from now on both clocks,
    /// read back to back (within microseconds of each other).
    public static func monotonic(_ instant: ContinuousClock.Instant) -> UInt64 {
        let continuousNow = ContinuousClock.now
        let monotonicNow = now()
        let offset = instant - continuousNow
        let (seconds, attoseconds) = offset.components
        let nanoseconds = Double(seconds) * 1e9 + Double(attoseconds) / 1e9
        let result = Double(monotonicNow) + nanoseconds
        if result <= 0 { return 0 }
        if result >= Double(UInt64.max) { return .max }
        return UInt64(result)
    }

    // MARK: Recording

    /// Records a hold as it is.
    public func record(_ hold: Hold) {
        storage.withLock { $0.append(hold) }
    }

    /// Records several holds (e.g. read from a file).
    public func record(contentsOf holds: [Hold]) {
        storage.withLock { $0.append(contentsOf: holds) }
    }

    /// Records that `client` now holds `lock` (call it right after the lock call returned), valid
    /// until the lock's `validUntil`. Mark it released with ``released(_:at:)``.
    @discardableResult
    public func acquired(_ lock: Lock, client: String, at time: UInt64 = now()) -> Ticket {
        let hold = Hold(
            client: client, value: lock.value, acquired: time, validUntil: Self.monotonic(lock.validUntil))
        return storage.withLock { holds in
            holds.append(hold)
            return Ticket(index: holds.count - 1)
        }
    }

    /// Records that the holder of `ticket` stopped relying on the lock (call it before releasing).
    public func released(_ ticket: Ticket, at time: UInt64 = now()) {
        storage.withLock { holds in
            guard holds.indices.contains(ticket.index) else { return }
            holds[ticket.index].released = time
        }
    }

    /// Records a renewal: the hold's validity now ends at `lock.validUntil` (a renewal never
    /// shortens a window already recorded).
    public func renewed(_ ticket: Ticket, to lock: Lock) {
        let until = Self.monotonic(lock.validUntil)
        storage.withLock { holds in
            guard holds.indices.contains(ticket.index) else { return }
            holds[ticket.index].validUntil = max(holds[ticket.index].validUntil, until)
        }
    }

    /// Every hold recorded so far, in the order recorded.
    public var holds: [Hold] { storage.withLock { $0 } }

    // MARK: Checking

    /// Every pair of holds whose windows overlap, each pair once, the earlier-acquired hold first.
    /// Empty when mutual exclusion held.
    public func violations() -> [(Hold, Hold)] {
        Self.violations(in: holds)
    }

    /// The overlapping pairs among `holds` (see ``violations()``).
    public static func violations(in holds: [Hold]) -> [(Hold, Hold)] {
        let sorted = holds.filter { !$0.isEmpty }.sorted {
            ($0.acquired, $0.end) < ($1.acquired, $1.end)
        }
        var result: [(Hold, Hold)] = []
        // Sweep in order of acquisition, keeping the holds whose window is still open.
        var open: [Hold] = []
        for hold in sorted {
            open.removeAll { $0.end <= hold.acquired }
            for earlier in open where earlier.overlaps(hold) {
                result.append((earlier, hold))
            }
            open.append(hold)
        }
        return result
    }

    /// The holds whose holder went on past the validity (released after `validUntil`, or never
    /// released): not violations in themselves, but each is a window in which another client may
    /// legitimately hold the lock while this one still acts on it.
    public func overruns() -> [Hold] {
        holds.filter(\.overran)
    }

    /// A readable account of the violations, one pair per line (empty when there are none).
    public func report() -> String {
        violations().map { "overlap: \($0.0) and \($0.1)" }.joined(separator: "\n")
    }

    // MARK: The line format

    /// Parses holds in the line format; blank lines and `#` comments are skipped.
    /// - Throws: ``FormatError`` with the line number of the first malformed line.
    public static func parse(_ text: String) throws(FormatError) -> [Hold] {
        var holds: [Hold] = []
        // Lines end at "\n" bytes only (a "\r" before it is dropped), whatever Unicode calls a line break.
        let lines = text.utf8.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).map {
            String(decoding: $0.last == UInt8(ascii: "\r") ? $0.dropLast() : $0, as: UTF8.self)
        }
        for (number, line) in lines.enumerated() {
            let trimmed = line.drop { $0 == " " || $0 == "\t" }
            if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
            do throws(FormatError) {
                holds.append(try Hold(parsing: String(trimmed)))
            } catch {
                var located = error
                located.lineNumber = number + 1
                throw located
            }
        }
        return holds
    }

    /// The holds in the line format, one per line, each ending with a line break.
    public static func format(_ holds: [Hold]) -> String {
        holds.map { $0.line + "\n" }.joined()
    }

    /// Reads a file of holds (as appended by several processes) and records them all.
    /// - Returns: how many holds were read.
    @discardableResult
    public func load(fileAt path: String) throws -> Int {
        let holds = try Self.parse(try Self.readFile(path))
        record(contentsOf: holds)
        return holds.count
    }

    /// Writes every hold recorded so far to `path`, replacing the file.
    public func write(toFileAt path: String) throws(FileError) {
        try Self.writeAll(Self.format(holds), to: path, flags: O_WRONLY | O_CREAT | O_TRUNC)
    }

    /// Appends one hold to `path` (created if missing) with a single `write(2)` on a descriptor opened
    /// with `O_APPEND`, so lines from concurrent processes never interleave.
    public static func appendLine(_ hold: Hold, toFileAt path: String) throws(FileError) {
        try writeAll(hold.line + "\n", to: path, flags: O_WRONLY | O_CREAT | O_APPEND)
    }

    private static func writeAll(_ text: String, to path: String, flags: Int32) throws(FileError) {
        let fd = open(path, flags | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw FileError(path: path, reason: "open failed: \(errorText(errno))") }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { raw in
                systemWrite(fd, raw.baseAddress! + offset, raw.count - offset)
            }
            if written < 0 {
                if errno == EINTR { continue }
                throw FileError(path: path, reason: "write failed: \(errorText(errno))")
            }
            offset += written
        }
    }

    private static func readFile(_ path: String) throws(FileError) -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw FileError(path: path, reason: "open failed: \(errorText(errno))") }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw FileError(path: path, reason: "read failed: \(errorText(errno))")
            }
            if count == 0 { break }
            bytes += chunk[0..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func errorText(_ code: Int32) -> String {
        String(cString: strerror(code))
    }
}

private func systemWrite(_ fd: Int32, _ pointer: UnsafeRawPointer, _ count: Int) -> Int {
    write(fd, pointer, count)
}
