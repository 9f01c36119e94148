// Lists of addresses (`a,b,c`) and passwords in free text, found by the address syntax.
//
// Both work on UTF-8 bytes, like the parser, and both use the parser's own idea of where a password
// may be (`RedisServer.passwordRanges(in:)`), so that the tools built on this library have one
// masking rule, not copies of it.

extension RedisServer {
    /// Splits a comma-separated list of addresses, such as `$REDLOCK_SERVERS`, into its entries.
    ///
    /// A comma is a separator except inside the user info of an address: in
    /// `redis://:pa,ss@h1,h2:6380` the entries are `redis://:pa,ss@h1` and `h2:6380`. The user info
    /// of an entry runs to the last `@` before the next `scheme://` (the start of the next URL), so
    /// a password's comma never splits it in two, and half a password is never read as an address.
    /// Empty entries are kept (as empty strings), for the caller to report.
    public static func splitList(_ list: String) -> [String] {
        let bytes = Array(list.utf8)
        return entryRanges(in: bytes[...]).map { String(decoding: bytes[$0], as: UTF8.self) }
    }

    /// `text` with every password that the address syntax can find in it replaced by `***`.
    ///
    /// Each whitespace-separated word of `text` that contains `@` or `://` is read as an address
    /// list (quotes and parentheses around it, and an `--option=` before it, are left as they are)
    /// and masked the way ``description`` and ``RedisAddressError`` mask addresses. Nothing else is
    /// touched: a password is masked where an address shows it, never by searching for its text
    /// (which would show, by what turns into `***`, what the password is).
    public static func maskingPasswords(inText text: String) -> String {
        let bytes = Array(text.utf8)
        var output: [UInt8] = []
        output.reserveCapacity(bytes.count)
        var index = 0
        for range in passwordRanges(inText: text) {
            output += bytes[index..<range.lowerBound]
            output += "***".utf8
            index = range.upperBound
        }
        output += bytes[index...]
        return String(decoding: output, as: UTF8.self)
    }

    /// The UTF-8 offsets of the passwords ``maskingPasswords(inText:)`` masks, in order (a range
    /// may be empty). For overwriting passwords in place, as in a process's own argv.
    public static func passwordRanges(inText text: String) -> [Range<Int>] {
        let bytes = Array(text.utf8)
        var ranges: [Range<Int>] = []
        for word in words(in: bytes) {
            var start = word.lowerBound
            let slice = bytes[word]
            guard slice.contains(at) || slice.firstRange(of: "://".utf8) != nil else { continue }
            // `--servers=LIST`: the list starts after the '='.
            if slice.first == minus, let equals = slice.firstIndex(of: equalsSign),
                !bytes[word.lowerBound..<equals].contains(where: { $0 == at || $0 == colon })
            {
                start = equals + 1
            }
            while start < word.upperBound && openers.contains(bytes[start]) { start += 1 }
            for entry in entryRanges(in: bytes[start..<word.upperBound]) where !entry.isEmpty {
                let address = String(decoding: bytes[entry], as: UTF8.self)
                for range in passwordRanges(in: address) {
                    ranges.append(
                        (entry.lowerBound + range.lowerBound)..<(entry.lowerBound + range.upperBound))
                }
            }
        }
        return ranges
    }

    private static let at = UInt8(ascii: "@")
    private static let comma = UInt8(ascii: ",")
    private static let colon = UInt8(ascii: ":")
    private static let minus = UInt8(ascii: "-")
    private static let equalsSign = UInt8(ascii: "=")
    /// What may stand before an address in a message: quotes and an opening parenthesis.
    private static let openers: Set<UInt8> = [UInt8(ascii: "'"), UInt8(ascii: "\""), UInt8(ascii: "(")]

    /// The maximal runs of bytes other than ASCII whitespace (which no parseable address contains).
    private static func words(in bytes: [UInt8]) -> [Range<Int>] {
        var words: [Range<Int>] = []
        var start: Int?
        for (index, byte) in bytes.enumerated() {
            let isSpace = byte == 0x20 || (0x09...0x0D).contains(byte)
            if isSpace, let begun = start {
                words.append(begun..<index)
                start = nil
            } else if !isSpace && start == nil {
                start = index
            }
        }
        if let start { words.append(start..<bytes.count) }
        return words
    }

    /// The entries of the list in `bytes` (see ``splitList(_:)``), as ranges of `bytes`' indices.
    private static func entryRanges(in bytes: ArraySlice<UInt8>) -> [Range<Int>] {
        var entries: [Range<Int>] = []
        var start = bytes.startIndex
        while true {
            // The next URL begins at a comma followed by `scheme://`; user info cannot reach past it.
            let limit = nextURLStart(in: bytes[start...]) ?? bytes.endIndex
            let lastAt = bytes[start..<limit].lastIndex(of: at)
            let searchFrom = lastAt.map { $0 + 1 } ?? start
            let end = bytes[searchFrom...].firstIndex(of: comma) ?? bytes.endIndex
            entries.append(start..<end)
            if end == bytes.endIndex { return entries }
            start = end + 1
        }
    }

    /// The index of the first comma in `bytes` that is followed by `scheme://`.
    private static func nextURLStart(in bytes: ArraySlice<UInt8>) -> Int? {
        var index = bytes.startIndex
        while let found = bytes[index...].firstIndex(of: comma) {
            var cursor = found + 1
            while cursor < bytes.endIndex, isSchemeByte(bytes[cursor], first: cursor == found + 1) {
                cursor += 1
            }
            if cursor > found + 1, bytes[cursor...].starts(with: "://".utf8) { return found }
            index = found + 1
        }
        return nil
    }

    private static func isSchemeByte(_ byte: UInt8, first: Bool) -> Bool {
        let isLetter = (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte | 0x20)
        if first { return isLetter }
        return isLetter || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
            || byte == UInt8(ascii: "+") || byte == minus || byte == UInt8(ascii: ".")
    }
}
