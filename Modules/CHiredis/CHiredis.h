#ifndef CHIREDIS_H
#define CHIREDIS_H

// Debian's libhiredis-dev 0.14.1: the synchronous API, the reply reader and the async API.
#include <hiredis/hiredis.h>
#include <hiredis/async.h>

// Shims for what the Swift importer cannot reach, named CHiredis_<original>.

/// REDIS_CONNECTED is a macro flag on redisContext.flags.
static inline int CHiredis_REDIS_CONNECTED(const redisAsyncContext *ac) {
    return (ac->c.flags & REDIS_CONNECTED) != 0;
}

/// Runs the callbacks of the replies the reader has complete. Exported by libhiredis 0.14.1
/// (async.c, what redisAsyncHandleRead calls after reading) but not declared in its headers.
void redisProcessCallbacks(redisAsyncContext *ac);

#endif
