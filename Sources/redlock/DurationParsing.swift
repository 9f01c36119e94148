import ArgumentParser

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Durations as people write them for flock(1) and timeout(1): `500ms`, `10s`, `1.5s`, `2m`, `1h`.
/// A bare number stays milliseconds, as the tool has always read it.
enum DurationParsing {
    /// The units, and how many milliseconds each is.
    static let units: [(suffix: String, milliseconds: Int)] = [
        ("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000),
    ]

    /// How `--help` describes the form.
    static let helpNote = "a number with a unit: 500ms, 10s, 1.5s, 2m, 1h; a bare number is milliseconds"

    /// The number of milliseconds `text` says.
    /// - Throws: `DurationParsingError` saying what is wrong (no number, a negative or fractional
    ///   millisecond count, an unknown unit, too large).
    static func milliseconds(_ text: String) throws(DurationParsingError) -> Int {
        let trimmed = text.trimmingWhitespace
        guard !trimmed.isEmpty else { throw DurationParsingError(text, "it is empty") }
        let numberEnd = trimmed.firstIndex { !($0.isASCII && ($0.isNumber || $0 == ".")) } ?? trimmed.endIndex
        let number = trimmed[..<numberEnd]
        let unitText = trimmed[numberEnd...].lowercased()
        if trimmed.hasPrefix("-") {
            throw DurationParsingError(text, "a duration cannot be negative")
        }
        let parts = number.split(separator: ".", omittingEmptySubsequences: false)
        guard !number.isEmpty, parts.count <= 2, !parts[0].isEmpty,
            parts.count == 1 || !parts[1].isEmpty
        else {
            throw DurationParsingError(text, "expected a number such as 500ms, 10s, 1.5s, 2m or 1h")
        }
        guard let unit = unitText.isEmpty ? units[0] : units.first(where: { $0.suffix == unitText }) else {
            throw DurationParsingError(
                text, "unknown unit \"\(unitText)\" (use ms, s, m or h; a bare number is milliseconds)")
        }
        // Whole part × unit, plus the fraction's digits × unit / 10^digits, all in integers.
        let tooLarge = DurationParsingError(text, "it is too large")
        var total = 0
        for digit in parts[0] {
            let (times10, overflow1) = total.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = times10.addingReportingOverflow(Int(digit.asciiValue! - 48))
            if overflow1 || overflow2 { throw tooLarge }
            total = sum
        }
        let (whole, overflow) = total.multipliedReportingOverflow(by: unit.milliseconds)
        if overflow { throw tooLarge }
        guard parts.count == 2 else { return whole }
        var numerator = 0
        var denominator = 1
        for digit in parts[1] {
            // More than 9 decimals cannot name a whole millisecond the coarser digits did not.
            guard denominator < 1_000_000_000 else {
                throw DurationParsingError(text, "too many decimals")
            }
            numerator = numerator * 10 + Int(digit.asciiValue! - 48)
            denominator *= 10
        }
        let scaled = numerator * unit.milliseconds
        guard scaled % denominator == 0 else {
            throw DurationParsingError(text, "not a whole number of milliseconds")
        }
        let (result, overflowSum) = whole.addingReportingOverflow(scaled / denominator)
        if overflowSum { throw tooLarge }
        return result
    }

    /// `milliseconds(_:)` for ArgumentParser's `transform:`.
    @Sendable static func option(_ text: String) throws -> Int {
        try milliseconds(text)
    }
}

/// A duration that could not be read.
struct DurationParsingError: Error, CustomStringConvertible {
    let text: String
    let reason: String

    init(_ text: String, _ reason: String) {
        self.text = text
        self.reason = reason
    }

    var description: String { "\"\(text)\" is not a duration: \(reason)" }
}

/// Signal names for `run --signal`, as kill(1) and timeout(1) take them: `TERM`, `SIGTERM`, `term`
/// or the number.
enum SignalParsing {
    static let names: [(name: String, number: Int32)] = [
        ("HUP", SIGHUP), ("INT", SIGINT), ("QUIT", SIGQUIT), ("KILL", SIGKILL), ("USR1", SIGUSR1),
        ("USR2", SIGUSR2), ("ALRM", SIGALRM), ("TERM", SIGTERM), ("CONT", SIGCONT), ("STOP", SIGSTOP),
        ("TSTP", SIGTSTP), ("WINCH", SIGWINCH), ("PIPE", SIGPIPE), ("ABRT", SIGABRT),
    ]

    /// The signal `text` names.
    /// - Throws: `SignalParsingError` for an unknown name or a number that is not a signal.
    static func signal(_ text: String) throws(SignalParsingError) -> Int32 {
        let trimmed = text.trimmingWhitespace.uppercased()
        if let number = Int32(trimmed) {
            guard number >= 1, number <= 64 else { throw SignalParsingError(text) }
            return number
        }
        let name = trimmed.hasPrefix("SIG") ? String(trimmed.dropFirst(3)) : trimmed
        guard let entry = names.first(where: { $0.name == name }) else { throw SignalParsingError(text) }
        return entry.number
    }

    /// `SIGTERM` for 15, else `signal N`.
    static func name(of number: Int32) -> String {
        names.first { $0.number == number }.map { "SIG" + $0.name } ?? "signal \(number)"
    }

    /// `signal(_:)` for ArgumentParser's `transform:`.
    @Sendable static func option(_ text: String) throws -> Int32 {
        try signal(text)
    }
}

struct SignalParsingError: Error, CustomStringConvertible {
    let text: String

    init(_ text: String) { self.text = text }

    var description: String {
        "\"\(text)\" is not a signal: give a name such as TERM, INT, HUP, KILL or USR1 (with or without"
            + " SIG), or a number from 1 to 64"
    }
}

extension StringProtocol {
    var trimmingWhitespace: String {
        String(drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed())
    }
}
