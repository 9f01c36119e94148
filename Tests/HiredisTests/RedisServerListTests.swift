import Hiredis
import Testing

// Issue 14: address lists whose passwords hold commas, and passwords masked in free text by the
// address syntax (the rule `redlock` and `redlock-bench` print with).
@Suite("RedisServer lists and masking in text")
struct RedisServerListTests {
    @Test(arguments: [
        ("h1,h2:6380", ["h1", "h2:6380"]),
        ("redis://:pa,ss@h1,h2:6380", ["redis://:pa,ss@h1", "h2:6380"]),
        ("h0,redis://:a,b,c@h1,redis://u:d,e@h2/1", ["h0", "redis://:a,b,c@h1", "redis://u:d,e@h2/1"]),
        ("unix://:p,w@/tmp/r.sock,h", ["unix://:p,w@/tmp/r.sock", "h"]),
        ("h1,,h2", ["h1", "", "h2"]),
        ("", [""]),
    ])
    func listsSplitOutsideUserInfo(list: String, entries: [String]) throws {
        #expect(RedisServer.splitList(list) == entries)
    }

    @Test func aPasswordWithACommaParsesWhole() throws {
        let servers = try RedisServer.splitList("redis://:pa,ss@127.0.0.1:7000,127.0.0.1:7001").map {
            try RedisServer(parsing: $0)
        }
        #expect(servers.map(\.password) == ["pa,ss", nil])
        #expect(servers.map(\.port) == [7000, 7001])
    }

    @Test(arguments: [
        ("x redis://:a@h,redis://:b@g y", "x redis://:***@h,redis://:***@g y"),
        (#"Unexpected argument 'redis://:pa"s'@h:1'"#, #"Unexpected argument 'redis://:***@h:1'"#),
        ("(redis://u:p,w@h/2)", "(redis://u:***@h/2)"),
        ("--servers=redis://:pw@h", "--servers=redis://:***@h"),
        ("redis://:pw@h?password=x#frag", "redis://:***@h?password=***#***"),
        ("unix:/tmp/a@b.sock stays", "unix:/tmp/a@b.sock stays"),
        ("no address: not enough nodes answered", "no address: not enough nodes answered"),
        ("redis://h:6379 and http://example.com", "redis://h:6379 and http://example.com"),
    ])
    func passwordsInTextAreMaskedByStructure(text: String, masked: String) {
        #expect(RedisServer.maskingPasswords(inText: text) == masked)
    }

    /// The ranges are where the masked text has `***`: overwriting them hides the password in place.
    @Test func rangesCoverThePasswords() {
        let text = #"--servers=redis://:q"u'o@h1,redis://u:x,y@h2"#
        var bytes = Array(text.utf8)
        for range in RedisServer.passwordRanges(inText: text) {
            for index in range { bytes[index] = UInt8(ascii: "*") }
        }
        #expect(String(decoding: bytes, as: UTF8.self) == #"--servers=redis://:*****@h1,redis://u:***@h2"#)
    }
}
