/// The version of this package: the one place it is written. The `redlock` tool's `--version`
/// prints it, and CHANGELOG.md has an entry for it.
public enum MultiRedlockVersion {
    /// The release, as `MAJOR.MINOR.PATCH` (semantic versioning).
    public static let current = "1.0.0"
}
