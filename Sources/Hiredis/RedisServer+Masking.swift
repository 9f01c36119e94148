// Where passwords are in an address, and in free text that shows addresses, found by the address
// syntax; and the one masker that replaces them with `***`. Every description, every
// `RedisAddressError` and the tools built on this library (`redlock`, `redlock-bench`) mask by these
// rules, never by searching for a password's text (which would show, by what turns into `***`, what
// the password is).

extension RedisServer {
    /// `text` with every password that the address syntax can find in it replaced by `***`.
    ///
    /// Each whitespace-separated word of `text` that contains `@` or `://` is read as an address
    /// list (quotes and parentheses around it, and an `--option=` before it, are left as they are)
    /// and masked the way ``description`` and ``RedisAddressError`` mask addresses. Nothing else is
    /// touched.
    public static func maskingPasswords(inText text: String) -> String {
        masking(text, at: passwordRanges(inText: text))
    }

    /// The UTF-8 offsets of the passwords ``maskingPasswords(inText:)`` masks, in order (a range
    /// may be empty). For overwriting passwords in place, as in a process's own argv.
    public static func passwordRanges(inText text: String) -> [Range<Int>] {
        let bytes = Array(text.utf8)
        var ranges: [Range<Int>] = []
        for word in words(in: bytes) {
            var start = word.lowerBound
            let slice = bytes[word]
            guard slice.contains(ASCII.at) || slice.firstRange(of: "://".utf8) != nil else { continue }
            // `--servers=LIST`: the list starts after the '='.
            if slice.first == ASCII.minus, let equals = slice.firstIndex(of: ASCII.equals),
                !bytes[word.lowerBound..<equals].contains(where: { $0 == ASCII.at || $0 == ASCII.colon })
            {
                start = equals + 1
            }
            while start < word.upperBound && openers.contains(bytes[start]) { start += 1 }
            for entry in entryRanges(in: bytes[start..<word.upperBound]) where !entry.isEmpty {
                for range in secretRanges(in: bytes[entry]) {
                    ranges.append(range)
                }
            }
        }
        return ranges
    }

    /// One address (as a ``RedisAddressError`` shows it) with every password, and every query or
    /// fragment value, replaced by `***`.
    ///
    /// Conservative: it masks whatever *could* hold a password in any way ``init(parsing:)``
    /// might read the address, even when the address does not parse. Unlike
    /// ``maskingPasswords(inText:)``, the whole string is one address, whitespace and commas included.
    static func maskingPasswords(in address: String) -> String {
        masking(address, at: passwordRanges(in: address))
    }

    /// The UTF-8 offsets in `address` that ``maskingPasswords(in:)`` replaces with `***`.
    static func passwordRanges(in address: String) -> [Range<Int>] {
        secretRanges(in: Array(address.utf8)[...])
    }

    /// The masker: `text` with each of `ranges` (UTF-8 offsets, in order, not overlapping; a range
    /// may be empty) replaced by `***`.
    private static func masking(_ text: String, at ranges: [Range<Int>]) -> String {
        let bytes = Array(text.utf8)
        var output: [UInt8] = []
        output.reserveCapacity(bytes.count)
        var index = 0
        for range in ranges {
            output += bytes[index..<range.lowerBound]
            output += "***".utf8
            index = range.upperBound
        }
        output += bytes[index...]
        return String(decoding: output, as: UTF8.self)
    }

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

    /// Where a password (or a query or fragment value) may be in `bytes`, in order; a range may
    /// be empty (an empty password is still shown as `***`).
    private static func secretRanges(in bytes: Bytes) -> [Range<Int>] {
        var body = bytes
        if let (_, rest) = Syntax.splitScheme(bytes) {
            body = rest
        } else if let rest = Syntax.droppingUnixPrefix(bytes) {
            body = rest
            if rest.first == ASCII.slash {
                // unix:/path has no user info; a '@' there belongs to the path.
                return queryRanges(body)
            }
        }
        var ranges: [Range<Int>] = []
        // Everything before the last '@' may be user info, as in parseRedisURL.
        if let at = body.lastIndex(of: ASCII.at) {
            let userInfo = body[..<at]
            if let colon = userInfo.firstIndex(of: ASCII.colon),
                !userInfo[..<colon].contains(where: {
                    $0 == ASCII.slash || $0 == ASCII.question || $0 == ASCII.hash
                })
            {
                ranges.append((colon + 1)..<at)
            } else if !userInfo.isEmpty {
                // No ':' (redis-cli would read a password), or not user info at all.
                ranges.append(userInfo.startIndex..<at)
            }
            body = body[body.index(after: at)...]
        }
        return ranges + queryRanges(body)
    }

    /// Where each query value (and any fragment) is in `bytes`.
    private static func queryRanges(_ bytes: Bytes) -> [Range<Int>] {
        guard let start = bytes.firstIndex(where: { $0 == ASCII.question || $0 == ASCII.hash }) else {
            return []
        }
        var ranges: [Range<Int>] = []
        var rest = bytes[start...]
        if rest.first == ASCII.question {
            let end = rest.firstIndex(of: ASCII.hash) ?? rest.endIndex
            let items = rest[rest.index(after: start)..<end].split(
                separator: ASCII.ampersand, omittingEmptySubsequences: false)
            for item in items {
                if let equals = item.firstIndex(of: ASCII.equals) {
                    ranges.append((equals + 1)..<item.endIndex)
                } else if !item.isEmpty {
                    ranges.append(item.startIndex..<item.endIndex)
                }
            }
            rest = rest[end...]
        }
        if !rest.isEmpty {
            ranges.append((rest.startIndex + 1)..<rest.endIndex)
        }
        return ranges
    }
}
