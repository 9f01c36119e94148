// Standard output carries the JSON lines only; everything else goes to standard error, with every
// password masked.
import JSONText
import MultiRedlock
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

enum Output {
    /// Writes one line to standard output (a JSON line), unbuffered.
    static func stdout(_ line: String) {
        writeAll(1, line + "\n")
    }

    /// Writes one line to standard error, prefixed with `redlock: `, with passwords masked.
    static func stderr(_ line: String) {
        writeAll(2, Redactor.shared.redact("redlock: " + line) + "\n")
    }

    /// Writes text to standard error as it is, except for masking passwords (ArgumentParser's
    /// messages already say who they come from).
    static func stderrRaw(_ text: String) {
        writeAll(2, Redactor.shared.redact(text))
    }

    static func writeAll(_ descriptor: Int32, _ text: String) {
        var bytes = Array(text.utf8)[...]
        while !bytes.isEmpty {
            let written = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
            if written < 0 {
                if errno == EINTR { continue }
                return
            }
            bytes = bytes.dropFirst(written)
        }
    }
}

/// Masks passwords in what the tool prints: every password it knows of (from the server list and
/// `$REDLOCK_PASSWORD`), and the user info of anything that looks like a URL (`scheme://user:pw@`),
/// which also covers addresses echoed back in ArgumentParser's messages.
final class Redactor: Sendable {
    static let shared = Redactor()

    private let secrets = Mutex<Set<String>>([])

    func add(_ secret: String?) {
        guard let secret, !secret.isEmpty else { return }
        secrets.withLock { _ = $0.insert(secret) }
    }

    func redact(_ text: String) -> String {
        var result = Self.maskingURLUserInfo(in: text)
        // Longest first, so that a password containing another one is masked whole.
        for secret in secrets.withLock({ $0 }).sorted(by: { $0.count > $1.count }) {
            result = result.replacing(secret, with: "***")
        }
        return result
    }

    /// `redis://user:secret@host` → `redis://user:***@host`; `x://secret@host` → `x://***@host`.
    static func maskingURLUserInfo(in text: String) -> String {
        let bytes = Array(text.utf8)
        var output: [UInt8] = []
        output.reserveCapacity(bytes.count)
        var index = 0
        for range in secretRanges(in: bytes) {
            output += bytes[index..<range.lowerBound]
            output += Array("***".utf8)
            index = range.upperBound
        }
        output += bytes[index...]
        return String(decoding: output, as: UTF8.self)
    }

    /// Where the passwords are in anything that looks like a URL with user info: after
    /// `scheme://user:` up to the last `@` before the next whitespace, quote, comma or the end (or
    /// the whole user info when it has no `:`).
    static func secretRanges(in bytes: [UInt8]) -> [Range<Int>] {
        let separators: Set<UInt8> = [0x20, 0x09, 0x0A, 0x0D, UInt8(ascii: "\""), UInt8(ascii: "'"), 0x2C]
        var ranges: [Range<Int>] = []
        var index = 0
        while index + 2 < bytes.count {
            guard
                bytes[index] == UInt8(ascii: ":") && bytes[index + 1] == UInt8(ascii: "/")
                    && bytes[index + 2] == UInt8(ascii: "/")
            else {
                index += 1
                continue
            }
            let start = index + 3
            var end = start
            while end < bytes.count && !separators.contains(bytes[end]) { end += 1 }
            index = start
            guard let at = bytes[start..<end].lastIndex(of: UInt8(ascii: "@")), at > start else { continue }
            let colon = bytes[start..<at].firstIndex(of: UInt8(ascii: ":"))
            let secretStart = colon.map { $0 + 1 } ?? start
            if secretStart < at { ranges.append(secretStart..<at) }
            index = at
        }
        return ranges
    }
}

extension JSON {
    /// A lock as the tool prints it: resource, value and validity first, then the details.
    static func lock(_ lock: Lock) -> JSON {
        .object(
            [
                ("resource", .string(lock.resource)),
                ("value", .string(lock.value)),
                ("validity_ms", .int(Int(lock.validity.wholeMillisecondsValue))),
                ("ttl_ms", .int(Int(lock.ttl.wholeMillisecondsValue))),
                ("attempts", .int(lock.attempts)),
                ("nodes", .array(lock.nodes.map { .string($0) })),
            ] + (lock.fencingToken.map { [("fencing_token", JSON.int(Int($0)))] } ?? []))
    }
}

extension Duration {
    /// Whole milliseconds, rounded down (never negative).
    var wholeMillisecondsValue: Int64 {
        let (seconds, attoseconds) = components
        return max(0, seconds * 1000 + attoseconds / 1_000_000_000_000_000)
    }

    /// Milliseconds, rounded, for messages: `1234 ms`.
    var millisecondsText: String {
        let (seconds, attoseconds) = components
        let value = Double(seconds) * 1000 + Double(attoseconds) / 1e15
        return "\(Int64(value.rounded())) ms"
    }
}
