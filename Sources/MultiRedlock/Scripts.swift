/// The Lua scripts Redlock runs, and their SHA1 digests for EVALSHA.
///
/// The digests are checked against a real server's `SCRIPT LOAD` in the tests.
enum Scripts {
    /// Compare-and-delete: never touches another owner's lock.
    static let release = Script(
        source:
            #"if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) else return 0 end"#,
        sha1: "cf0e94b2e9ffc7e04395cf88f7583fc309985910")

    /// Compare-and-pexpire: extends only a key that still holds this lock's value, so it can never
    /// re-create an expired or released lock.
    static let extend = Script(
        source:
            #"if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("pexpire", KEYS[1], ARGV[2]) else return 0 end"#,
        sha1: "a7aba3bc5d6e99b3003da8b9d80a63b9f4092ecf")
}

struct Script: Sendable {
    let source: String
    let sha1: String
}
