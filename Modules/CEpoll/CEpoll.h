#ifndef CEPOLL_H
#define CEPOLL_H

// Linux's epoll(7), which the Swift Glibc module does not include. Part of the C library: nothing
// to link.
#include <sys/epoll.h>

#endif
