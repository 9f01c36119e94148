import Foundation
import LocalRedis

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

// Issue 14, item 7: the tests' own files live where no other user can read them or plant a link.

package enum PrivateFiles {
    package struct Failure: Error, CustomStringConvertible {
        package var description: String
    }

    /// The directory exit tests share with their parent process: `$MULTIREDLOCK_TEST_DIR` (made by
    /// `make` with mktemp -d), else `$TMPDIR/multiredlock-exit-tests-UID`, made with mode 0700 and
    /// refused unless it is a real directory of this user that nobody else can enter.
    package static func exitTestDirectory(environment: [String: String]) throws -> String {
        if let root = environment["MULTIREDLOCK_TEST_DIR"], !root.isEmpty { return root }
        let base = environment["TMPDIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
        let path = base + "/multiredlock-exit-tests-\(getuid())"
        if mkdir(path, 0o700) != 0 && errno != EEXIST {
            throw Failure(description: "mkdir \(path): \(String(cString: strerror(errno)))")
        }
        var info = stat()
        guard lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFDIR, info.st_uid == getuid(),
            info.st_mode & 0o077 == 0
        else {
            throw Failure(description: "\(path) is not a directory of this user with mode 0700: refusing it")
        }
        return path
    }

    /// One directory per test process for child processes' output, beside the servers' directories.
    package static func childOutputDirectory() throws -> String {
        try outputDirectory.get()
    }

    private static let outputDirectory = Result { try makeScratchDirectory(prefix: "child-output") }

    /// Creates `path` with mode 0600; fails if it exists (even as a symbolic link).
    package static func create(_ path: String, contents: String = "") throws {
        let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            throw Failure(description: "cannot create \(path): \(String(cString: strerror(errno)))")
        }
        defer { close(descriptor) }
        var bytes = Array(contents.utf8)[...]
        while !bytes.isEmpty {
            let written = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
            if written < 0 && errno == EINTR { continue }
            guard written > 0 else { throw Failure(description: "cannot write \(path)") }
            bytes = bytes.dropFirst(written)
        }
    }

    /// The permission bits and owner of `path` (not following a link), or nil.
    package static func mode(of path: String) -> (mode: mode_t, isDirectory: Bool, owner: uid_t)? {
        var info = stat()
        guard lstat(path, &info) == 0 else { return nil }
        return (info.st_mode & 0o7777, info.st_mode & S_IFMT == S_IFDIR, info.st_uid)
    }
}
