// Counting this process's descriptors (Linux: /proc/self/fd), for the leak checks of tests and soaks.

import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// How many file descriptors this process has open (entries of /proc/self/fd). Other work in the
/// process (tests running in parallel) moves it too; `socketsConnected(toPort:)` is exact.
public func openDescriptorCount() -> Int {
    ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []).count
}

/// How many of this process's descriptors are TCP sockets connected to a peer on `port`, found with
/// getpeername. Every descriptor counts, so a socket with two duplicates counts three times.
public func socketsConnected(toPort port: Int) -> Int {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
    var count = 0
    for entry in entries {
        guard let descriptor = Int32(entry) else { continue }
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let found = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                getpeername(descriptor, $0, &length) == 0
            }
        }
        if found, address.sin_family == sa_family_t(AF_INET), Int(UInt16(bigEndian: address.sin_port)) == port
        {
            count += 1
        }
    }
    return count
}
