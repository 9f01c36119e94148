// TEMPORARY stub used only by the lead to compile while RedisServer.swift is written.
public struct RedisServer: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int = 6379
    public var unixSocketPath: String?
    public var password: String?
    public var username: String?
    public var database: Int?
    public init(host: String, port: Int = 6379, password: String? = nil, username: String? = nil, database: Int? = nil) {
        self.host = host; self.port = port; self.password = password; self.username = username; self.database = database
    }
    public var description: String { "\(host):\(port)" }
    public func validate() throws(RedisAddressError) {}
}
public struct RedisAddressError: Error, Sendable { public var reason: String }
