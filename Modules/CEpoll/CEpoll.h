#ifndef CEPOLL_H
#define CEPOLL_H

// Linux's epoll(7), which the Swift Glibc module does not include, and naming the watcher thread
// (prctl is variadic, which Swift cannot call). Part of the C library: nothing to link.
#include <sys/epoll.h>
#include <sys/prctl.h>

/// Names the calling thread (at most 15 bytes are kept). Returns 0, or -1 with errno set.
static inline int CEpoll_setThreadName(const char *name) {
    return prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0);
}

#endif
