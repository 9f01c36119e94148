import Foundation
import LocalRedis
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

// Issue 14, item 7: the tests' own files (TestSupport's `PrivateFiles`) live where no other user can
// read them or plant a link.

@Suite("the tests' temporary files")
struct PrivateFilesTests {
    /// Without `make`'s directory, exit tests use a directory only this user can enter, not /tmp.
    @Test func theExitTestPortsFileIsInAPrivateDirectory() throws {
        let path = try Failover.BadInput.exitTestPortsFile(for: getpid(), environment: [:])
        let directory = (path as NSString).deletingLastPathComponent
        let info = try #require(PrivateFiles.mode(of: directory), "\(directory)")
        #expect(info.isDirectory && info.owner == getuid(), "\(directory)")
        #expect(info.mode & 0o077 == 0, "\(directory) has mode \(String(info.mode, radix: 8))")
    }

    /// A planted symbolic link is not followed, and an existing file is not reused.
    @Test func aPrivateFileIsNeverALinkNorReused() throws {
        let directory = try makeScratchDirectory(prefix: "private-files")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let target = directory + "/target"
        let link = directory + "/link"
        try PrivateFiles.create(target, contents: "original")
        #expect(symlink(target, link) == 0)
        #expect(throws: PrivateFiles.Failure.self) { try PrivateFiles.create(link, contents: "x") }
        #expect(throws: PrivateFiles.Failure.self) { try PrivateFiles.create(target, contents: "x") }
        #expect(try String(contentsOfFile: target, encoding: .utf8) == "original")
        #expect(PrivateFiles.mode(of: target)?.mode == 0o600)
    }

    /// A child's output files: mode 0600, in the run's scratch directory (removed by `make`'s trap
    /// even when the test process crashes), not in the shared /tmp.
    @Test func aChildsOutputFilesArePrivate() async throws {
        let child = try Subprocess("/bin/sh", ["-c", "echo out; echo err >&2"])
        let result = await child.outcome(timeout: .seconds(10))
        #expect(result.stdout == "out\n" && result.stderr == "err\n", "\(result)")
        for path in [child.stdoutPath, child.stderrPath] {
            let info = try #require(PrivateFiles.mode(of: path), "\(path)")
            #expect(info.mode & 0o077 == 0, "\(path) has mode \(String(info.mode, radix: 8))")
            let directory = (path as NSString).deletingLastPathComponent
            #expect(
                directory != "/tmp" && (directory as NSString).lastPathComponent.hasPrefix("child-output-"))
            #expect(PrivateFiles.mode(of: directory).map { $0.mode & 0o077 == 0 } == true, "\(directory)")
        }
    }
}
