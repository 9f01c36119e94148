// Standard output carries the JSON lines only; everything else goes to standard error, with every
// password masked.
import JSONText
import MultiRedlock

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

    /// Writes one line to standard error, prefixed with `redlock: `, with passwords masked and
    /// control characters escaped (a line may hold a server's error text).
    static func stderr(_ line: String) {
        writeAll(2, Redactor.escapingControlCharacters(Redactor.redact("redlock: " + line)) + "\n")
    }

    /// Writes text to standard error as it is, except for masking passwords (ArgumentParser's
    /// messages already say who they come from).
    static func stderrRaw(_ text: String) {
        writeAll(2, Redactor.redact(text))
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

/// Masks passwords in what the tool prints, by the address syntax: the library's
/// `RedisServer.maskingPasswords(inText:)`, the same rule as every address description and error,
/// which also covers addresses echoed back in ArgumentParser's messages. A password is never
/// searched for as text: that would show it by which words turn into `***`.
enum Redactor {
    /// `text` with the passwords of every address in it masked.
    static func redact(_ text: String) -> String {
        RedisServer.maskingPasswords(inText: text)
    }

    /// Control characters (C0, DEL, C1: escape sequences, carriage returns, line breaks) written as
    /// `\u{1B}`, so that text from a server cannot move the cursor, rewrite the terminal or forge
    /// lines of output.
    static func escapingControlCharacters(_ text: String) -> String {
        var result = ""
        result.unicodeScalars.reserveCapacity(text.unicodeScalars.count)
        for scalar in text.unicodeScalars {
            if scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) {
                result += "\\u{" + String(scalar.value, radix: 16, uppercase: true) + "}"
            } else {
                result.unicodeScalars.append(scalar)
            }
        }
        return result
    }
}

extension JSON {
    /// A lock as the tool prints it: resource, value and validity first, then the details.
    static func lock(_ lock: Lock) -> JSON {
        .object(
            [
                ("resource", .string(lock.resource)),
                ("value", .string(lock.value)),
                ("validity_ms", .int(Int(max(0, lock.validity.wholeMilliseconds)))),
                ("ttl_ms", .int(Int(max(0, lock.ttl.wholeMilliseconds)))),
                ("attempts", .int(lock.attempts)),
                ("nodes", .array(lock.nodes.map { .string($0) })),
            ] + (lock.fencingToken.map { [("fencing_token", JSON.int(Int($0)))] } ?? []))
    }
}

extension Duration {
    /// Milliseconds, rounded to the nearest.
    var roundedMilliseconds: Int64 { Int64(milliseconds.rounded()) }

    /// Milliseconds, rounded, for messages: `1234 ms`.
    var millisecondsText: String { "\(roundedMilliseconds) ms" }
}
