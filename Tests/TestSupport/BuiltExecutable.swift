import Foundation
import Testing

/// The package's executables (`redlock`, `redlock-bench`, `multiredlock-service-example`) built with
/// these tests.
package enum BuiltExecutable {
    /// `name`'s path: `$MULTIREDLOCK_<NAME>` (upper case, `-` as `_`, e.g. MULTIREDLOCK_REDLOCK) when
    /// set; else next to the test bundle (the same build folder); else in the package's most
    /// recently built `.build*/debug` folder; nil when none is executable.
    package static func path(_ name: String) -> String? {
        let variable = "MULTIREDLOCK_" + name.uppercased().replacingOccurrences(of: "-", with: "_")
        if let path = ProcessInfo.processInfo.environment[variable], !path.isEmpty { return path }
        let bundleDirectory = (CommandLine.arguments[0] as NSString).deletingLastPathComponent
        // <package>/Tests/TestSupport/BuiltExecutable.swift → <package>
        let package =
            (((#filePath as NSString).deletingLastPathComponent as NSString)
            .deletingLastPathComponent as NSString).deletingLastPathComponent
        let scratch = (try? FileManager.default.contentsOfDirectory(atPath: package)) ?? []
        let built = scratch.filter { $0.hasPrefix(".build") }.map { "\(package)/\($0)/debug/\(name)" }
            .filter { FileManager.default.isExecutableFile(atPath: $0) }
            .sorted { modificationDate($0) > modificationDate($1) }
        return ([bundleDirectory + "/" + name] + built).first {
            FileManager.default.isExecutableFile(atPath: $0)
        }
    }

    /// `path(name)`, or a failed requirement.
    package static func require(_ name: String, sourceLocation: SourceLocation = #_sourceLocation) throws
        -> String
    {
        try #require(
            path(name),
            "\(name) was not found next to the test bundle nor in .build*/debug (set MULTIREDLOCK_\(name.uppercased().replacingOccurrences(of: "-", with: "_")))",
            sourceLocation: sourceLocation)
    }

    private static func modificationDate(_ path: String) -> Date {
        let attributes = try? FileManager.default.attributesOfItem(atPath: path)
        return attributes?[.modificationDate] as? Date ?? .distantPast
    }
}
