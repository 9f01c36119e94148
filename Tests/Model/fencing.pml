/*
 * Fencing tokens across a Redlock quorum, as multiredlock issues them (RedlockOptions.fencingTokens).
 *
 * Each node keeps, per resource, the lock key's owner and a fencing counter. A client
 *   1. grants: on each node, SET NX PX the lock key and read the counter (one Lua script, atomic);
 *   2. with a quorum of grants, takes token = max(counters read) + 1;
 *   3. writes the token back: on each node, raises the counter to the token only while the node still
 *      holds this client's lock (one Lua script, atomic); the token is issued once a quorum took it;
 *   4. releases (compare-and-delete).
 * Faults: at any moment a lock key may vanish (its ttl ran out, the holder was paused, the node
 * restarted): ownership is lost, counters are kept (nodes persist them: appendfsync always).
 *
 * Property: an attempt that starts after a token t was issued is issued a token greater than t.
 * (A holder that starts later never holds a smaller token, so storage that rejects tokens lower than
 * one it has seen rejects every stale holder.)
 *
 * `spin -a fencing.pml` checks the protocol; `spin -DNO_WRITE_BACK -a fencing.pml` checks a broken
 * variant without step 3, for which spin must find a counterexample.
 */
#define N 3
#define QUORUM 2
#define CLIENTS 2
#define ATTEMPTS 2

byte owner[N];          /* 0: free; else the client holding the lock key there */
byte counter[N];        /* the node's fencing counter (kept across restarts) */
byte maxIssued = 0;     /* the largest token issued so far */

proctype Client(byte me) {
    byte attempt = 0;
    byte i;
    byte granted;
    byte written;
    byte token;
    byte floor;
    bool issued;
    do
    :: attempt < ATTEMPTS ->
        attempt++;
        granted = 0;
        token = 0;
        issued = false;
        floor = maxIssued;                      /* what was issued before this attempt began */
        /* 1. grant, node by node, in any interleaving with the others; a node may not answer */
        i = 0;
        do
        :: i < N ->
            if
            :: atomic {
                   owner[i] == 0 -> owner[i] = me; granted++;
                   if
                   :: counter[i] > token -> token = counter[i]
                   :: else -> skip
                   fi
               }
            :: atomic { owner[i] != 0 -> skip }     /* held: refused */
            :: skip                                  /* no answer (timeout) */
            fi;
            i++
        :: else -> break
        od;
        if
        :: granted >= QUORUM ->
            token = token + 1;                   /* 2. max + 1 */
#ifdef NO_WRITE_BACK
            atomic { assert(token > floor); if :: token > maxIssued -> maxIssued = token :: else -> skip fi }
#else
            /* 3. write-back; issued when a quorum took it */
            written = 0;
            i = 0;
            do
            :: i < N ->
                if
                :: atomic {
                       owner[i] == me ->
                       if
                       :: counter[i] < token -> counter[i] = token
                       :: else -> skip
                       fi;
                       written++;
                       if
                       :: written == QUORUM ->
                           assert(token > floor);
                           issued = true;
                           if :: token > maxIssued -> maxIssued = token :: else -> skip fi
                       :: else -> skip
                       fi
                   }
                :: atomic { owner[i] != me -> skip }
                :: skip
                fi;
                i++
            :: else -> break
            od
#endif
        :: else -> skip
        fi;
        /* 4. release on every node (compare-and-delete) */
        i = 0;
        do
        :: i < N -> atomic { if :: owner[i] == me -> owner[i] = 0 :: else -> skip fi }; i++
        :: else -> break
        od
    :: else -> break
    od
}

/* Lock keys vanish at any moment: ttl expiry, a paused holder, a node restart that kept its data. */
proctype Expiry() {
    do
    :: atomic { owner[0] != 0 -> owner[0] = 0 }
    :: atomic { owner[1] != 0 -> owner[1] = 0 }
    :: atomic { owner[2] != 0 -> owner[2] = 0 }
    :: break
    od
}

init {
    atomic {
        run Client(1);
        run Client(2);
        run Expiry()
    }
}
