/// The JSON text of one value, written by hand (no Foundation) so that object fields keep the order
/// given: the one-line output of `redlock` and `redlock-bench`.
public enum JSON: Sendable {
    case string(String)
    case int(Int)
    /// A number written with `digits` decimals; `null` when not finite.
    case number(Double, digits: Int)
    case bool(Bool)
    case array([JSON])
    /// An object whose keys keep the order given.
    case object([(String, JSON)])

    public var text: String {
        switch self {
        case .string(let string): Self.quoted(string)
        case .int(let value): String(value)
        case .number(let value, let digits): Self.fixed(value, digits: digits)
        case .bool(let value): value ? "true" : "false"
        case .array(let items): "[" + items.map(\.text).joined(separator: ", ") + "]"
        case .object(let fields):
            "{" + fields.map { Self.quoted($0.0) + ": " + $0.1.text }.joined(separator: ", ") + "}"
        }
    }

    /// A JSON string literal: quotes, backslashes and control characters escaped (RFC 8259), and
    /// DEL, U+2028 and U+2029 too, so that the text is also safe to paste into JavaScript.
    public static func quoted(_ string: String) -> String {
        var result = "\""
        for scalar in string.unicodeScalars {
            switch scalar {
            case "\"": result += "\\\""
            case "\\": result += "\\\\"
            case "\n": result += "\\n"
            case "\r": result += "\\r"
            case "\t": result += "\\t"
            case "\u{08}": result += "\\b"
            case "\u{0C}": result += "\\f"
            case "\u{00}"..."\u{1F}", "\u{7F}", "\u{2028}", "\u{2029}":
                let hex = String(scalar.value, radix: 16)
                result += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: result.unicodeScalars.append(scalar)
            }
        }
        return result + "\""
    }

    /// `value` with `digits` decimals; `null` when not finite.
    static func fixed(_ value: Double, digits: Int) -> String {
        guard value.isFinite else { return "null" }
        var scale = 1.0
        for _ in 0..<digits { scale *= 10 }
        let scaled = (abs(value) * scale).rounded()
        guard scaled < 9e18 else { return String(value) }
        let units = Int64(scaled)
        let whole = units / Int64(scale)
        var text = (value < 0 && units != 0 ? "-" : "") + String(whole)
        if digits > 0 {
            let fraction = String(units % Int64(scale))
            text += "." + String(repeating: "0", count: digits - fraction.count) + fraction
        }
        return text
    }
}
