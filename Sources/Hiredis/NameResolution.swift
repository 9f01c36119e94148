#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

// Name resolution for TCP servers, apart from the connection's state machine: ConnectionCore calls
// `resolve` on a global queue (getaddrinfo blocks) unless the host is already a numeric address.

/// Whether `host` is a numeric IPv4 or IPv6 address (no lookup needed).
func isNumericAddress(_ host: String) -> Bool {
    var buffer = in6_addr()
    return inet_pton(AF_INET, host, &buffer) == 1 || inet_pton(AF_INET6, host, &buffer) == 1
}

struct ResolveFailure: Error {
    var message: String
}

/// Resolves a host name to a numeric address with getaddrinfo (blocking: call off the connection's queue).
func resolve(_ host: String) -> Result<String, ResolveFailure> {
    var hints = addrinfo()
    hints.ai_family = AF_UNSPEC
    #if canImport(Glibc)
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
    #else
        hints.ai_socktype = SOCK_STREAM
    #endif
    var results: UnsafeMutablePointer<addrinfo>?
    let status = getaddrinfo(host, nil, &hints, &results)
    guard status == 0, let first = results else {
        return .failure(ResolveFailure(message: String(cString: gai_strerror(status))))
    }
    defer { freeaddrinfo(results) }
    var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
    let family = first.pointee.ai_family
    let converted: UnsafePointer<CChar>?
    if family == AF_INET {
        var address = first.pointee.ai_addr.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
            $0.pointee.sin_addr
        }
        converted = inet_ntop(family, &address, &buffer, socklen_t(buffer.count))
    } else {
        var address = first.pointee.ai_addr.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) {
            $0.pointee.sin6_addr
        }
        converted = inet_ntop(family, &address, &buffer, socklen_t(buffer.count))
    }
    guard converted != nil else {
        return .failure(ResolveFailure(message: "inet_ntop failed"))
    }
    return .success(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
}
