import LocalRedis
import Testing

// Issue 14: a configuration's passwords never show in how it prints, however it is printed.
@Suite("LocalRedis configuration descriptions")
struct ConfigurationDescriptionTests {
    @Test func passwordsAreMaskedInEveryDescription() {
        let configuration = RedisServerConfiguration(
            password: "default-pw-4711",
            aclUsers: [ACLUser(name: "alice", password: "alice-pw-4712")],
            enableDebugCommand: true,
            extraConfig: ["user bob on >bob-pw-4713 ~* +@all"])
        var dumped = ""
        dump(configuration, to: &dumped)
        var dumpedUser = ""
        dump(configuration.aclUsers[0], to: &dumpedUser)
        let texts = [
            "\(configuration)", String(describing: configuration), String(reflecting: configuration),
            dumped, "\(configuration.aclUsers)", String(reflecting: configuration.aclUsers[0]), dumpedUser,
            "\(Mirror(reflecting: configuration).children.map { "\($0.label ?? ""): \($0.value)" })",
        ]
        for text in texts {
            for secret in ["default-pw-4711", "alice-pw-4712", "bob-pw-4713"] {
                #expect(!text.contains(secret), "\(secret) shown in: \(text)")
            }
        }
        // What is not secret still shows.
        #expect("\(configuration)".contains("password: ***"))
        #expect("\(configuration)".contains("alice"))
        #expect(dumped.contains("enableDebugCommand: true"), "\(dumped)")
    }
}
