#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// A bare socket to a redis server for tests that must see exactly what goes over the wire: no client
/// library, no reconnects, no authentication unless you send AUTH yourself (LocalRedis's servers
/// require `RedisServerConfiguration.defaultPassword` by default: `RedisServerProcess.rawConnection()`
/// connects and authenticates). Every operation is bounded by a timeout. Not thread-safe: use one connection from one thread (or task) at a time.
public final class RawRedisConnection {
    private var fd: Int32
    private var buffer: [UInt8] = []

    /// Connects to `host`:`port` (an IPv4 address, 127.0.0.1 by default).
    /// Throws `.connectionFailed` with `errno` set (e.g. ECONNREFUSED when nothing listens).
    public init(port: Int, host: String = "127.0.0.1", timeout: Duration = .seconds(2)) throws {
        var address = sockaddr_in()
        #if canImport(Darwin)
            address.sin_len = UInt8(MemoryLayout<sockaddr_in>.size)
        #endif
        address.sin_family = sa_family_t(AF_INET)
        guard (0...65_535).contains(port) else {
            throw LocalRedisError(.connectionFailed, "invalid port \(port)")
        }
        address.sin_port = in_port_t(UInt16(port)).bigEndian
        guard inet_pton(AF_INET, host, &address.sin_addr) == 1 else {
            throw LocalRedisError(.connectionFailed, "\(host) is not an IPv4 address")
        }
        // Connect before self.fd is set: a failed init must not run deinit's close().
        let descriptor = try openSocket(domain: AF_INET)
        try withUnsafeBytes(of: &address) { bytes in
            try connectSocket(descriptor, bytes, endpoint: "\(host):\(port)", timeout: timeout)
        }
        fd = descriptor
    }

    /// Connects to a unix socket.
    public init(unixSocketPath: String, timeout: Duration = .seconds(2)) throws {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = Array(unixSocketPath.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard pathBytes.count < capacity else {
            throw LocalRedisError(.connectionFailed, "unix socket path too long: \(unixSocketPath)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: pathBytes)
            raw[pathBytes.count] = 0
        }
        #if canImport(Darwin)
            address.sun_len = UInt8(MemoryLayout<sockaddr_un>.size)
        #endif
        let descriptor = try openSocket(domain: AF_UNIX)
        try withUnsafeBytes(of: &address) { bytes in
            try connectSocket(descriptor, bytes, endpoint: unixSocketPath, timeout: timeout)
        }
        fd = descriptor
    }

    deinit {
        close()
    }

    /// Closes the socket. Idempotent.
    public func close() {
        if fd >= 0 {
            _ = closeDescriptor(fd)
            fd = -1
        }
    }

    /// Sends one command as a RESP array of bulk strings, e.g. `send("AUTH", "alice", "secret")`.
    public func send(_ arguments: String...) throws {
        try send(arguments: arguments)
    }

    /// Sends one command as a RESP array of bulk strings.
    public func send(arguments: [String], timeout: Duration = .seconds(2)) throws {
        var bytes = Array("*\(arguments.count)\r\n".utf8)
        for argument in arguments {
            let utf8 = Array(argument.utf8)
            bytes += Array("$\(utf8.count)\r\n".utf8) + utf8 + [13, 10]
        }
        try sendBytes(bytes, timeout: timeout)
    }

    /// Sends text as is (an inline command needs its own "\r\n", e.g. `sendRaw("PING\r\n")`).
    public func sendRaw(_ text: String, timeout: Duration = .seconds(2)) throws {
        try sendBytes(Array(text.utf8), timeout: timeout)
    }

    /// Reads one reply line without its "\r\n" (e.g. "+PONG", "-NOAUTH Authentication required.",
    /// "$3" followed by a second line "bar"). Returns nil if no full line arrives within `timeout`.
    /// Throws `.connectionIO` if the server closed the connection.
    public func readLine(timeout: Duration) throws -> String? {
        let deadline = Deadline(after: timeout)
        while true {
            if let line = takeLine() { return line }
            guard fd >= 0 else { throw LocalRedisError(.connectionIO, "connection is closed") }
            var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&entry, 1, Int32(deadline.remaining.milliseconds))
            if ready < 0 {
                if errno == EINTR { continue }
                throw LocalRedisError(.connectionIO, "poll failed: \(errnoDescription(errno))", errno: errno)
            }
            if ready == 0 {
                if deadline.hasPassed { return nil }
                continue
            }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count > 0 {
                buffer += chunk[0..<count]
            } else if count == 0 {
                throw LocalRedisError(.connectionIO, "the server closed the connection")
            } else if errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK {
                throw LocalRedisError(.connectionIO, "recv failed: \(errnoDescription(errno))", errno: errno)
            }
        }
    }

    /// `send(arguments)` followed by `readLine(timeout:)`.
    public func request(_ arguments: String..., timeout: Duration = .seconds(2)) throws -> String? {
        try send(arguments: arguments, timeout: timeout)
        return try readLine(timeout: timeout)
    }

    private func takeLine() -> String? {
        guard buffer.count >= 2 else { return nil }
        for index in 0..<(buffer.count - 1) where buffer[index] == 13 && buffer[index + 1] == 10 {
            let line = String(decoding: buffer[0..<index], as: UTF8.self)
            buffer.removeFirst(index + 2)
            return line
        }
        return nil
    }

    private func sendBytes(_ bytes: [UInt8], timeout: Duration) throws {
        guard fd >= 0 else { throw LocalRedisError(.connectionIO, "connection is closed") }
        let deadline = Deadline(after: timeout)
        var sent = 0
        while sent < bytes.count {
            let count = bytes.withUnsafeBytes { raw in
                sendNoSignal(fd, raw.baseAddress! + sent, raw.count - sent)
            }
            if count >= 0 {
                sent += count
                continue
            }
            if errno == EINTR { continue }
            guard errno == EAGAIN || errno == EWOULDBLOCK else {
                throw LocalRedisError(.connectionIO, "send failed: \(errnoDescription(errno))", errno: errno)
            }
            if deadline.hasPassed {
                throw LocalRedisError(.timeout, "send did not complete within \(timeout.humanReadable)")
            }
            var entry = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            _ = poll(&entry, 1, Int32(min(deadline.remaining.milliseconds, 100)))
        }
    }
}

// MARK: - Socket helpers

private func closeDescriptor(_ fd: Int32) -> Int32 {
    #if canImport(Glibc)
        return Glibc.close(fd)
    #elseif canImport(Musl)
        return Musl.close(fd)
    #else
        return Darwin.close(fd)
    #endif
}

/// A non-blocking, close-on-exec stream socket (SIGPIPE suppressed on Darwin).
func openSocket(domain: Int32) throws -> Int32 {
    #if os(Linux)
        let fd = socket(domain, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    #else
        let fd = socket(domain, SOCK_STREAM, 0)
    #endif
    guard fd >= 0 else {
        throw LocalRedisError(.system, "socket failed: \(errnoDescription(errno))", errno: errno)
    }
    #if !os(Linux)
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        var one: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, socklen_t(MemoryLayout<Int32>.size))
    #endif
    _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    return fd
}

/// send(2) that never raises SIGPIPE when the peer is gone.
func sendNoSignal(_ fd: Int32, _ pointer: UnsafeRawPointer, _ count: Int) -> Int {
    #if os(Linux)
        return send(fd, pointer, count, Int32(MSG_NOSIGNAL))
    #else
        return send(fd, pointer, count, 0)
    #endif
}

/// Connects a non-blocking socket within `timeout`; closes it and throws on failure.
private func connectSocket(
    _ fd: Int32,
    _ address: UnsafeRawBufferPointer,
    endpoint: String,
    timeout: Duration
) throws {
    func fail(_ code: Int32) -> LocalRedisError {
        _ = closeDescriptor(fd)
        return LocalRedisError(
            .connectionFailed,
            "cannot connect to \(endpoint): \(errnoDescription(code))",
            errno: code
        )
    }
    let pointer = address.baseAddress!.assumingMemoryBound(to: sockaddr.self)
    if connect(fd, pointer, socklen_t(address.count)) == 0 { return }
    guard errno == EINPROGRESS || errno == EINTR else { throw fail(errno) }
    let deadline = Deadline(after: timeout)
    while true {
        var entry = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
        let ready = poll(&entry, 1, Int32(deadline.remaining.milliseconds))
        if ready < 0 && errno == EINTR { continue }
        if ready < 0 { throw fail(errno) }
        if ready == 0 {
            if deadline.hasPassed { throw fail(ETIMEDOUT) }
            continue
        }
        var error: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) == 0 else { throw fail(errno) }
        if error != 0 { throw fail(error) }
        return
    }
}

/// Asks the kernel for a free port on 127.0.0.1 (bind to port 0, read it back, close).
func kernelChosenLoopbackPort() throws -> Int {
    let (fd, port) = try bindLoopbackSocket()
    _ = closeDescriptor(fd)
    return port
}

/// A close-on-exec TCP socket bound to 127.0.0.1 on a port the kernel chose, listening with
/// `backlog` when given (a proxy's listener), else only bound (a port that refuses connections and
/// that no server can take while it is held). The caller closes the descriptor.
public func bindLoopbackSocket(listening backlog: Int32? = nil) throws -> (descriptor: Int32, port: Int) {
    let fd = try openSocket(domain: AF_INET)
    var address = sockaddr_in()
    #if canImport(Darwin)
        address.sin_len = UInt8(MemoryLayout<sockaddr_in>.size)
    #endif
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = 0
    address.sin_addr.s_addr = in_addr_t(0x7f00_0001).bigEndian
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let step = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { generic -> String? in
            if bind(fd, generic, length) != 0 { return "bind 127.0.0.1:0" }
            if let backlog, listen(fd, backlog) != 0 { return "listen" }
            if getsockname(fd, generic, &length) != 0 { return "getsockname" }
            return nil
        }
    }
    if let step {
        let code = errno
        _ = closeDescriptor(fd)
        throw LocalRedisError(.system, "\(step) failed: \(errnoDescription(code))", errno: code)
    }
    return (fd, Int(UInt16(bigEndian: address.sin_port)))
}
