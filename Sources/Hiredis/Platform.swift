// multiredlock builds and is tested on Linux only: the socket watcher (SocketWatcher.swift) waits on
// epoll(7), which the CEpoll module maps. Say so at once instead of failing on a missing header.
#if !os(Linux)
    #error("multiredlock supports Linux only: its socket watcher is built on epoll(7)")
#endif
