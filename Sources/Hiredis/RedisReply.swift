import CHiredis

/// A Redis reply, copied out of hiredis's `redisReply` while its callback runs.
///
/// hiredis frees a reply as soon as its callback returns, so the wrapper never keeps a
/// `redisReply *`: every reply reaches Swift as this value.
public enum RedisReply: Sendable, Hashable {
    /// A simple string (`+OK`).
    case status(String)
    /// An error reply (`-ERR …`), with the server's message.
    case error(String)
    /// An integer reply (`:1`).
    case integer(Int64)
    /// A bulk string (`$3\r\nfoo`): binary safe.
    case bulkString([UInt8])
    /// A null bulk string or null array (`$-1`, `*-1`).
    case null
    /// An array reply, possibly nested.
    indirect case array([RedisReply])
}

extension RedisReply {
    /// Copies a hiredis reply, recursively, into a Swift value.
    init(copying reply: UnsafePointer<redisReply>) {
        let raw = reply.pointee
        func text() -> String {
            guard let str = raw.str else { return "" }
            return String(decoding: UnsafeRawBufferPointer(start: str, count: raw.len), as: UTF8.self)
        }
        switch raw.type {
        case REDIS_REPLY_STATUS:
            self = .status(text())
        case REDIS_REPLY_ERROR:
            self = .error(text())
        case REDIS_REPLY_INTEGER:
            self = .integer(Int64(raw.integer))
        case REDIS_REPLY_STRING:
            guard let str = raw.str else {
                self = .bulkString([])
                return
            }
            self = .bulkString(Array(UnsafeRawBufferPointer(start: str, count: raw.len)))
        case REDIS_REPLY_ARRAY:
            var elements: [RedisReply] = []
            elements.reserveCapacity(raw.elements)
            for index in 0..<raw.elements {
                if let element = raw.element[index] {
                    elements.append(RedisReply(copying: element))
                } else {
                    elements.append(.null)
                }
            }
            self = .array(elements)
        default:
            // REDIS_REPLY_NIL, and any type a newer reader might add.
            self = .null
        }
    }

    /// The text of a status, error or bulk-string reply (bulk strings decoded as UTF-8).
    public var string: String? {
        switch self {
        case .status(let text), .error(let text): text
        case .bulkString(let bytes): String(decoding: bytes, as: UTF8.self)
        default: nil
        }
    }

    /// The value of an integer reply.
    public var integer: Int64? {
        if case .integer(let value) = self { value } else { nil }
    }

    /// Whether this is an error reply.
    public var isError: Bool {
        if case .error = self { true } else { false }
    }
}
