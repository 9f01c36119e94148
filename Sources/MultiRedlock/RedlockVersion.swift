/// The version of this package: the one place it is written. The `redlock` tool's `--version`
/// prints it, and CHANGELOG.md has an entry for it.
// Not `MultiRedlockVersion`: the symbol graph (and so DocC) leaves out a type whose name begins
// with the module's name.
public enum RedlockVersion: Sendable {
    /// The release, as `MAJOR.MINOR.PATCH` (semantic versioning).
    public static let current = "0.3.0"
}
