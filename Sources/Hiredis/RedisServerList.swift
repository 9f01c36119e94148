// Lists of addresses (`a,b,c`), split where the address syntax says an entry ends (on UTF-8 bytes,
// like the parser). RedisServer+Masking.swift finds passwords in text with the same split.

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

    /// The entries of the list in `bytes` (see ``splitList(_:)``), as ranges of `bytes`' indices.
    static func entryRanges(in bytes: ArraySlice<UInt8>) -> [Range<Int>] {
        var entries: [Range<Int>] = []
        var start = bytes.startIndex
        while true {
            // The next URL begins at a comma followed by `scheme://`; user info cannot reach past it.
            let limit = nextURLStart(in: bytes[start...]) ?? bytes.endIndex
            let lastAt = bytes[start..<limit].lastIndex(of: ASCII.at)
            let searchFrom = lastAt.map { $0 + 1 } ?? start
            let end = bytes[searchFrom...].firstIndex(of: ASCII.comma) ?? bytes.endIndex
            entries.append(start..<end)
            if end == bytes.endIndex { return entries }
            start = end + 1
        }
    }

    /// The index of the first comma in `bytes` that is followed by `scheme://`.
    private static func nextURLStart(in bytes: ArraySlice<UInt8>) -> Int? {
        var index = bytes.startIndex
        while let found = bytes[index...].firstIndex(of: ASCII.comma) {
            var cursor = found + 1
            while cursor < bytes.endIndex, isSchemeByte(bytes[cursor], first: cursor == found + 1) {
                cursor += 1
            }
            if cursor > found + 1, bytes[cursor...].starts(with: "://".utf8) { return found }
            index = found + 1
        }
        return nil
    }

    /// A letter, or after the first byte also a digit, '+', '-' or '.' (as in `splitScheme`).
    private static func isSchemeByte(_ byte: UInt8, first: Bool) -> Bool {
        ASCII.isLetter(byte)
            || (!first
                && (ASCII.isDigit(byte) || byte == ASCII.plus || byte == ASCII.minus || byte == ASCII.dot))
    }
}
