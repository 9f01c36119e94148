/// The Lua scripts Redlock runs, and their SHA1 digests for EVALSHA.
///
/// The digests are checked against a real server's `SCRIPT LOAD` in the tests. The scripts that set
/// keys (``acquireAll``, ``acquireFenced``) are always sent as EVAL (see `RedisNode.evaluate`).
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
    /// Whether the script may set a key that was absent (an acquire): such a script is always sent
    /// as `EVAL source …`, never as EVALSHA with a fallback that could land after later commands.
    var setsKeys = false
}

extension Scripts {
    /// Multi-resource acquire: on one node, all keys are set or none.
    static let acquireAll = Script(
        source:
            #"for _, key in ipairs(KEYS) do if redis.call("exists", key) == 1 then return 0 end end for _, key in ipairs(KEYS) do redis.call("set", key, ARGV[1], "PX", ARGV[2]) end return 1"#,
        sha1: "dc4d7c29de229e329ab4e4455922fc17df149110", setsKeys: true)

    /// Multi-resource extend: only when every key still holds this lock's value, and then all of them.
    static let extendAll = Script(
        source:
            #"for _, key in ipairs(KEYS) do if redis.call("get", key) ~= ARGV[1] then return 0 end end for _, key in ipairs(KEYS) do redis.call("pexpire", key, ARGV[2]) end return 1"#,
        sha1: "e6dbf2704951c988e02a12c40ab22e485f4ee925")

    /// Multi-resource release: deletes each key that holds this lock's value; answers how many.
    static let releaseAll = Script(
        source:
            #"local released = 0 for _, key in ipairs(KEYS) do if redis.call("get", key) == ARGV[1] then released = released + redis.call("del", key) end end return released"#,
        sha1: "894bbf5c600d099b66610f8abae477121e342b3a")

    /// Fenced acquire: SET NX PX the lock key and, when granted, answer the node's fencing counter
    /// for the resource (0 when none yet); -1 when the key is held.
    static let acquireFenced = Script(
        source:
            #"if redis.call("set", KEYS[1], ARGV[1], "NX", "PX", ARGV[2]) then return tonumber(redis.call("get", KEYS[2]) or "0") end return -1"#,
        sha1: "c2a30a0ca858ee44d0369a7efc3250212a162326", setsKeys: true)

    /// Fencing write-back: raise the counter to the token, never lower it, and only while this node
    /// still holds this lock's value (answers 1), else 0.
    static let raiseFence = Script(
        source:
            #"if redis.call("get", KEYS[1]) ~= ARGV[1] then return 0 end if tonumber(ARGV[2]) > tonumber(redis.call("get", KEYS[2]) or "0") then redis.call("set", KEYS[2], ARGV[2]) end return 1"#,
        sha1: "9d5e4e27ff2e4545cb44781f90ec5e5cfece561d")
}
