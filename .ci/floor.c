/*
 * floor: the bare-C floor for `make bench` (.ci/bench builds it with the system cc; no hiredis).
 *
 * It runs redlock-bench's cycle with nothing around it: for each cycle, SET key value NX PX ttl to
 * every server at once, wait for every reply, then the compare-and-delete script (EVALSHA) to every
 * server at once, wait for every reply. One non-blocking TCP connection per server, poll(2), RESP
 * written and parsed by hand. With C callers (concurrent_C), the callers share those connections
 * and their commands are pipelined, as redlock-bench's tasks share a Redlock's connections.
 *
 *   floor --servers 127.0.0.1:P1,127.0.0.1:P2,... --scenarios sequential,concurrent_64
 *
 * Prints one JSON line per scenario on stdout (the fields redlock-bench prints, where they apply),
 * logs on stderr. The password, when the servers need one, comes from the environment
 * (REDISCLI_AUTH, as for redis-cli; FLOOR_USER for an ACL user name), never from argv.
 * Knobs: REDLOCK_BENCH_TTL_MS, _SEQ_CYCLES, _SEQ_MAX_S, _WARMUP_CYCLES, _WARMUP_S, _DURATION_S,
 * _KEY_PREFIX, _NODE_TIMEOUT_MS (the same variables redlock-bench reads).
 *
 * Differences from redlock-bench that favour the floor: values come from a cheap PRNG (ours reads
 * the CSPRNG), no quorum logic, no timers. One that does not: the lock phase waits for every reply
 * (ours goes on at a quorum); on local servers the replies come within microseconds of each other.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_SERVERS 16
#define RELEASE_SCRIPT \
    "if redis.call(\"get\", KEYS[1]) == ARGV[1] then return redis.call(\"del\", KEYS[1]) else return 0 end"

static void die(const char *format, ...) {
    va_list args;
    va_start(args, format);
    fputs("floor: ", stderr);
    vfprintf(stderr, format, args);
    fputc('\n', stderr);
    va_end(args);
    exit(1);
}

static uint64_t now_ns(void) {
    struct timespec spec;
    clock_gettime(CLOCK_MONOTONIC, &spec);
    return (uint64_t)spec.tv_sec * 1000000000u + (uint64_t)spec.tv_nsec;
}

/* ---- growable byte buffer */

struct buffer {
    char *data;
    size_t length, capacity;
};

static void reserve(struct buffer *buffer, size_t extra) {
    if (buffer->length + extra <= buffer->capacity) return;
    size_t capacity = buffer->capacity ? buffer->capacity : 4096;
    while (capacity < buffer->length + extra) capacity *= 2;
    buffer->data = realloc(buffer->data, capacity);
    if (!buffer->data) die("out of memory");
    buffer->capacity = capacity;
}

static void append(struct buffer *buffer, const char *bytes, size_t count) {
    reserve(buffer, count);
    memcpy(buffer->data + buffer->length, bytes, count);
    buffer->length += count;
}

/* Appends one command in RESP: *argc, then $len and the bytes of each argument. */
static void append_command(struct buffer *buffer, int argc, const char *const *argv, const size_t *lengths) {
    char head[32];
    append(buffer, head, (size_t)snprintf(head, sizeof head, "*%d\r\n", argc));
    for (int i = 0; i < argc; i++) {
        append(buffer, head, (size_t)snprintf(head, sizeof head, "$%zu\r\n", lengths[i]));
        append(buffer, argv[i], lengths[i]);
        append(buffer, "\r\n", 2);
    }
}

/* ---- RESP replies (the simple types and bulk strings: all these commands answer) */

struct reply {
    char type;             /* '+', '-', ':', '$' */
    long long integer;     /* ':' value, '$' length (-1: nil) */
    const char *text;      /* '+', '-', '$' payload (not NUL-terminated) */
    size_t text_length;
};

/* Parses one reply at data[0..length): bytes used, 0 when incomplete, -1 when not understood. */
static long parse_reply(const char *data, size_t length, struct reply *reply) {
    const char *end = memchr(data, '\n', length);
    if (!end) return 0;
    if (end == data || end[-1] != '\r') return -1;
    size_t line = (size_t)(end - data) + 1; /* with CRLF */
    reply->type = data[0];
    reply->text = data + 1;
    reply->text_length = line - 3;
    switch (data[0]) {
    case '+':
    case '-':
        return (long)line;
    case ':':
    case '$': {
        char digits[32];
        if (line - 3 >= sizeof digits) return -1;
        memcpy(digits, data + 1, line - 3);
        digits[line - 3] = 0;
        reply->integer = strtoll(digits, NULL, 10);
        if (data[0] == ':' || reply->integer < 0) return (long)line;
        size_t total = line + (size_t)reply->integer + 2;
        if (length < total) return 0;
        reply->text = data + line;
        reply->text_length = (size_t)reply->integer;
        return (long)total;
    }
    default:
        return -1;
    }
}

/* ---- connections */

struct connection {
    int fd;
    const char *address;
    struct buffer out;   /* commands not yet written */
    size_t out_sent;     /* bytes of `out` already written */
    struct buffer in;    /* bytes read, not yet parsed */
    int *waiting;        /* ring of caller indices, in the order their replies will come */
    size_t ring_size, ring_head, ring_count;
};

static void ring_push(struct connection *c, int caller) {
    if (c->ring_count == c->ring_size) die("reply queue overflow on %s", c->address);
    c->waiting[(c->ring_head + c->ring_count) % c->ring_size] = caller;
    c->ring_count++;
}

static int ring_pop(struct connection *c) {
    if (c->ring_count == 0) die("%s sent a reply nobody waited for", c->address);
    int caller = c->waiting[c->ring_head];
    c->ring_head = (c->ring_head + 1) % c->ring_size;
    c->ring_count--;
    return caller;
}

/* Blocking: sends one command and reads its one reply (set-up only). */
static struct reply call(struct connection *c, int argc, const char *const *argv, const size_t *lengths) {
    struct buffer out = {0};
    append_command(&out, argc, argv, lengths);
    for (size_t sent = 0; sent < out.length;) {
        ssize_t n = write(c->fd, out.data + sent, out.length - sent);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) die("write to %s: %s", c->address, strerror(errno));
        sent += (size_t)n;
    }
    free(out.data);
    c->in.length = 0;
    for (;;) {
        struct reply reply;
        long used = parse_reply(c->in.data ? c->in.data : "", c->in.length, &reply);
        if (used < 0) die("unreadable reply from %s", c->address);
        if (used > 0) return reply; /* points into c->in: valid until the next read */
        reserve(&c->in, 4096);
        ssize_t n = read(c->fd, c->in.data + c->in.length, c->in.capacity - c->in.length);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) die("read from %s: %s", c->address, n == 0 ? "connection closed" : strerror(errno));
        c->in.length += (size_t)n;
    }
}

static void open_connection(struct connection *c, const char *address, char *sha, size_t ring_size) {
    memset(c, 0, sizeof *c);
    c->address = address;
    if (address[0] == '/' || strncmp(address, "unix:", 5) == 0) {
        /* A unix socket: /path or unix:/path (the bench's servers listen on sockets in 0700 dirs). */
        const char *path = address[0] == '/' ? address : address + 5;
        struct sockaddr_un local = {.sun_family = AF_UNIX};
        if (strlen(path) >= sizeof local.sun_path) die("server %s: socket path too long", address);
        memcpy(local.sun_path, path, strlen(path) + 1);
        c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&local, sizeof local) != 0)
            die("connect to %s: %s", address, strerror(errno));
    } else {
        const char *colon = strrchr(address, ':');
        if (!colon) die("server %s: expected host:port or a unix socket path", address);
        char host[256];
        size_t host_length = (size_t)(colon - address);
        if (host_length == 0 || host_length >= sizeof host) die("server %s: bad host", address);
        memcpy(host, address, host_length);
        host[host_length] = 0;
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *found;
        int status = getaddrinfo(host, colon + 1, &hints, &found);
        if (status != 0) die("server %s: %s", address, gai_strerror(status));
        c->fd = socket(found->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (c->fd < 0 || connect(c->fd, found->ai_addr, found->ai_addrlen) != 0)
            die("connect to %s: %s", address, strerror(errno));
        freeaddrinfo(found);
        int on = 1; /* as hiredis does */
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    }

    const char *password = getenv("REDISCLI_AUTH");
    if (password && *password) {
        const char *user = getenv("FLOOR_USER");
        const char *argv[3] = {"AUTH", user, password};
        size_t lengths[3] = {4, user ? strlen(user) : 0, strlen(password)};
        struct reply reply;
        if (user && *user) {
            reply = call(c, 3, argv, lengths);
        } else {
            argv[1] = password;
            lengths[1] = lengths[2];
            reply = call(c, 2, argv, lengths);
        }
        /* The server's message only: it never contains the password. */
        if (reply.type != '+') die("AUTH on %s failed: %.*s", address, (int)reply.text_length, reply.text);
    }
    const char *load[3] = {"SCRIPT", "LOAD", RELEASE_SCRIPT};
    size_t load_lengths[3] = {6, 4, strlen(RELEASE_SCRIPT)};
    struct reply reply = call(c, 3, load, load_lengths);
    if (reply.type != '$' || reply.text_length != 40)
        die("SCRIPT LOAD on %s: %.*s", address, (int)reply.text_length, reply.text);
    memcpy(sha, reply.text, 40);
    sha[40] = 0;
    c->in.length = 0;
    if (fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK) != 0) die("fcntl: %s", strerror(errno));
    c->ring_size = ring_size;
    c->waiting = calloc(ring_size, sizeof *c->waiting);
    if (!c->waiting) die("out of memory");
}

/* ---- callers and the event loop */

struct usage {
    double cpu_s;
    long switches;
};

static struct usage usage_now(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return (struct usage){
        usage.ru_utime.tv_sec + usage.ru_stime.tv_sec + (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6,
        usage.ru_nvcsw + usage.ru_nivcsw};
}

enum phase { IDLE, LOCKING, RELEASING };

struct caller {
    enum phase phase;
    int pending;       /* replies still to come in this phase */
    int failed;        /* a reply in this cycle was not the expected one */
    long index;        /* cycles started */
    uint64_t start;
    char key[160];
    size_t key_length;
    char value[96];
    size_t value_length;
};

struct run {
    struct connection *connections;
    int servers;
    char sha[41];
    long long ttl_ms;
    const char *prefix;
    char run_id[9];
    uint64_t rng;
    int node_timeout_ms;
    /* what a scenario collects */
    struct caller *callers;
    int caller_count;
    uint64_t window_start, window_end; /* cycles finishing in [start, end] count */
    int accept_new;                    /* callers start new cycles while set */
    long limit;                        /* cycles to start, in all (sequential); <0: none */
    long started;
    uint32_t *latencies;
    size_t latency_count, latency_capacity;
    long errors;
    const char *scenario;
    struct usage usage_start, usage_end; /* CPU when the window opened and when it closed */
    int usage_start_taken;
};

static uint64_t next_random(struct run *run) { /* xorshift64* */
    run->rng ^= run->rng >> 12;
    run->rng ^= run->rng << 25;
    run->rng ^= run->rng >> 27;
    return run->rng * 2685821657736338717ull;
}

static void send_to_all(struct run *run, int caller_index, int argc, const char **argv, size_t *lengths) {
    struct caller *caller = &run->callers[caller_index];
    caller->pending = run->servers;
    for (int s = 0; s < run->servers; s++) {
        append_command(&run->connections[s].out, argc, argv, lengths);
        ring_push(&run->connections[s], caller_index);
    }
}

static void start_cycle(struct run *run, int caller_index) {
    struct caller *caller = &run->callers[caller_index];
    if (!run->accept_new || (run->limit >= 0 && run->started >= run->limit)) {
        caller->phase = IDLE;
        return;
    }
    run->started++;
    caller->start = now_ns();
    caller->failed = 0;
    caller->key_length = (size_t)snprintf(caller->key, sizeof caller->key, "%sfloor:%s:%s:%d:%ld", run->prefix,
                                          run->run_id, run->scenario, caller_index, caller->index++);
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    unsigned long long high = next_random(run), low = next_random(run);
    caller->value_length = (size_t)snprintf(caller->value, sizeof caller->value, "redlock-bench_%lld_%016llx%016llx",
                                            (long long)wall.tv_sec * 1000 + wall.tv_nsec / 1000000, high, low);
    char ttl[24];
    size_t ttl_length = (size_t)snprintf(ttl, sizeof ttl, "%lld", run->ttl_ms);
    const char *argv[6] = {"SET", caller->key, caller->value, "NX", "PX", ttl};
    size_t lengths[6] = {3, caller->key_length, caller->value_length, 2, 2, ttl_length};
    caller->phase = LOCKING;
    send_to_all(run, caller_index, 6, argv, lengths);
}

static void record(struct run *run, uint64_t latency) {
    if (run->latency_count == run->latency_capacity) {
        run->latency_capacity = run->latency_capacity ? run->latency_capacity * 2 : 4096;
        run->latencies = realloc(run->latencies, run->latency_capacity * sizeof *run->latencies);
        if (!run->latencies) die("out of memory");
    }
    run->latencies[run->latency_count++] = latency > UINT32_MAX ? UINT32_MAX : (uint32_t)latency;
}

static void on_reply(struct run *run, int caller_index, const struct reply *reply) {
    struct caller *caller = &run->callers[caller_index];
    if (caller->phase == LOCKING) {
        if (reply->type != '+') caller->failed = 1; /* $-1: refused; -ERR: failed */
    } else if (reply->type != ':' || reply->integer != 1) {
        caller->failed = 1;
    }
    if (--caller->pending > 0) return;
    if (caller->phase == LOCKING) {
        const char *argv[5] = {"EVALSHA", run->sha, "1", caller->key, caller->value};
        size_t lengths[5] = {7, 40, 1, caller->key_length, caller->value_length};
        caller->phase = RELEASING;
        send_to_all(run, caller_index, 5, argv, lengths);
        return;
    }
    uint64_t finished = now_ns();
    if (finished >= run->window_start && finished <= run->window_end) {
        if (caller->failed) {
            run->errors++;
        } else {
            record(run, finished - caller->start);
        }
    }
    start_cycle(run, caller_index);
}

/* Writes what is queued on every connection, as far as the sockets take it. */
static void flush_all(struct run *run) {
    for (int s = 0; s < run->servers; s++) {
        struct connection *c = &run->connections[s];
        while (c->out_sent < c->out.length) {
            ssize_t n = write(c->fd, c->out.data + c->out_sent, c->out.length - c->out_sent);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
            if (n <= 0) die("write to %s: %s", c->address, strerror(errno));
            c->out_sent += (size_t)n;
        }
        if (c->out_sent == c->out.length) c->out.length = c->out_sent = 0;
    }
}

static int busy(struct run *run) {
    for (int i = 0; i < run->caller_count; i++)
        if (run->callers[i].phase != IDLE) return 1;
    return 0;
}

/* Runs the loop until every caller is idle, or `until` (monotonic ns) has passed. */
static void loop(struct run *run, uint64_t until) {
    struct pollfd fds[MAX_SERVERS];
    uint64_t last_progress = now_ns();
    while (busy(run)) {
        flush_all(run);
        for (int s = 0; s < run->servers; s++) {
            struct connection *c = &run->connections[s];
            fds[s].fd = c->fd;
            fds[s].events = POLLIN | (c->out_sent < c->out.length ? POLLOUT : 0);
            fds[s].revents = 0;
        }
        int ready = poll(fds, (nfds_t)run->servers, run->node_timeout_ms);
        if (ready < 0 && errno == EINTR) continue;
        if (ready < 0) die("poll: %s", strerror(errno));
        uint64_t now = now_ns();
        if (ready == 0) {
            if (now - last_progress > 5000000000ull) die("%s: no reply for 5 s", run->scenario);
            continue;
        }
        last_progress = now;
        for (int s = 0; s < run->servers; s++) {
            if (!(fds[s].revents & (POLLIN | POLLERR | POLLHUP))) continue;
            struct connection *c = &run->connections[s];
            for (;;) {
                reserve(&c->in, 16384);
                ssize_t n = read(c->fd, c->in.data + c->in.length, c->in.capacity - c->in.length);
                if (n < 0 && errno == EINTR) continue;
                if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
                if (n <= 0) die("read from %s: %s", c->address, n == 0 ? "connection closed" : strerror(errno));
                c->in.length += (size_t)n;
                if (c->in.length < c->in.capacity) break; /* drained */
            }
            size_t offset = 0;
            for (;;) {
                struct reply reply;
                long used = parse_reply(c->in.data + offset, c->in.length - offset, &reply);
                if (used < 0) die("unreadable reply from %s", c->address);
                if (used == 0) break;
                offset += (size_t)used;
                on_reply(run, ring_pop(c), &reply);
            }
            memmove(c->in.data, c->in.data + offset, c->in.length - offset);
            c->in.length -= offset;
        }
        now = now_ns();
        if (!run->usage_start_taken && now >= run->window_start) {
            run->usage_start = usage_now();
            run->usage_start_taken = 1;
        }
        if (until && now >= until && run->accept_new) {
            run->accept_new = 0;
            run->usage_end = usage_now();
        }
    }
}

static int compare_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static double percentile_us(struct run *run, double percentile) {
    if (run->latency_count == 0) return 0;
    size_t rank = (size_t)(percentile / 100.0 * (double)run->latency_count + 0.5);
    if (rank < 1) rank = 1;
    if (rank > run->latency_count) rank = run->latency_count;
    return run->latencies[rank - 1] / 1000.0;
}

static long env_long(const char *name, long fallback) {
    const char *text = getenv(name);
    if (!text || !*text) return fallback;
    char *end;
    long value = strtol(text, &end, 10);
    if (*end || value < 0) die("%s=%s is not a non-negative integer", name, text);
    return value;
}

static double env_double(const char *name, double fallback) {
    const char *text = getenv(name);
    if (!text || !*text) return fallback;
    char *end;
    double value = strtod(text, &end);
    if (*end || value < 0) die("%s=%s is not a non-negative number", name, text);
    return value;
}

static void reset(struct run *run, int callers, const char *scenario) {
    free(run->callers);
    run->callers = calloc((size_t)callers, sizeof *run->callers);
    if (!run->callers) die("out of memory");
    run->caller_count = callers;
    run->latency_count = 0;
    run->errors = 0;
    run->started = 0;
    run->scenario = scenario;
    run->accept_new = 1;
    run->usage_start_taken = 0;
}

static void emit(struct run *run, const char *scenario, int tasks, long cycles, double seconds,
                 struct usage before, struct usage after) {
    qsort(run->latencies, run->latency_count, sizeof *run->latencies, compare_u32);
    long work = cycles + run->errors;
    double cpu = after.cpu_s - before.cpu_s;
    printf("{\"scenario\":\"%s\",\"servers\":%d,\"tasks\":%d,\"cycles_per_s\":%.1f,\"p50_us\":%.1f,"
           "\"p99_us\":%.1f,\"cycles\":%ld,\"errors\":%ld,\"duration_s\":%.3f,\"cpu_s\":%.3f,"
           "\"cpu_us_per_cycle\":%.1f,\"context_switches_per_cycle\":%.2f}\n",
           scenario, run->servers, tasks, seconds > 0 ? cycles / seconds : 0, percentile_us(run, 50),
           percentile_us(run, 99), cycles, run->errors, seconds, cpu, work > 0 ? cpu * 1e6 / work : 0,
           work > 0 ? (double)(after.switches - before.switches) / work : 0);
    fflush(stdout);
    fprintf(stderr, "floor: %s: %ld cycles, %ld errors in %.3f s\n", scenario, cycles, run->errors, seconds);
}

static void sequential(struct run *run) {
    long warmup = env_long("REDLOCK_BENCH_WARMUP_CYCLES", 200);
    long cycles = env_long("REDLOCK_BENCH_SEQ_CYCLES", 2000);
    double max_s = env_double("REDLOCK_BENCH_SEQ_MAX_S", 30);
    reset(run, 1, "sequential");
    run->limit = warmup;
    run->window_start = run->window_end = 0; /* nothing counts */
    start_cycle(run, 0);
    loop(run, now_ns() + (uint64_t)(max_s * 1e9));
    reset(run, 1, "sequential");
    run->limit = cycles;
    run->window_start = 0;
    run->window_end = UINT64_MAX;
    struct usage before = usage_now();
    uint64_t start = now_ns();
    start_cycle(run, 0);
    loop(run, start + (uint64_t)(max_s * 1e9));
    double seconds = (now_ns() - start) / 1e9;
    emit(run, "sequential", 1, (long)run->latency_count, seconds, before, usage_now());
}

static void concurrent(struct run *run, int callers, const char *scenario) {
    double warmup_s = env_double("REDLOCK_BENCH_WARMUP_S", 1);
    double duration_s = env_double("REDLOCK_BENCH_DURATION_S", 5);
    if (duration_s <= 0) die("REDLOCK_BENCH_DURATION_S must be positive");
    reset(run, callers, scenario);
    run->limit = -1;
    run->window_start = now_ns() + (uint64_t)(warmup_s * 1e9);
    run->window_end = run->window_start + (uint64_t)(duration_s * 1e9);
    for (int i = 0; i < callers; i++) start_cycle(run, i);
    /* The loop reads the CPU time when the window opens and when it closes (then callers stop). */
    loop(run, run->window_end);
    emit(run, scenario, callers, (long)run->latency_count, duration_s, run->usage_start, run->usage_end);
}

int main(int argc, char **argv) {
    const char *servers = NULL, *scenarios = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--servers") && i + 1 < argc) {
            servers = argv[++i];
        } else if (!strcmp(argv[i], "--scenarios") && i + 1 < argc) {
            scenarios = argv[++i];
        } else {
            fprintf(stderr, "usage: floor --servers host:port or /socket/path,... --scenarios sequential,concurrent_C,...\n"
                            "  password (if any) from REDISCLI_AUTH, user from FLOOR_USER\n");
            return 2;
        }
    }
    if (!servers || !scenarios) die("--servers and --scenarios are required");

    struct run run = {0};
    run.ttl_ms = env_long("REDLOCK_BENCH_TTL_MS", 10000);
    if (run.ttl_ms <= 0) die("REDLOCK_BENCH_TTL_MS must be positive");
    run.node_timeout_ms = (int)env_long("REDLOCK_BENCH_NODE_TIMEOUT_MS", 1000);
    run.prefix = getenv("REDLOCK_BENCH_KEY_PREFIX") ? getenv("REDLOCK_BENCH_KEY_PREFIX") : "redlock-bench:";
    if (getrandom(&run.rng, sizeof run.rng, 0) != sizeof run.rng || run.rng == 0) run.rng = now_ns() | 1;
    snprintf(run.run_id, sizeof run.run_id, "%08x", (unsigned)(next_random(&run) >> 32));

    /* The most callers any scenario has: the reply rings need room for two commands each. */
    long most = 1;
    char *list = strdup(scenarios);
    for (char *item = strtok(list, ","); item; item = strtok(NULL, ","))
        if (!strncmp(item, "concurrent_", 11) && atol(item + 11) > most) most = atol(item + 11);
    free(list);

    char *addresses = strdup(servers);
    static struct connection connections[MAX_SERVERS];
    for (char *item = strtok(addresses, ","); item; item = strtok(NULL, ",")) {
        if (run.servers == MAX_SERVERS) die("at most %d servers", MAX_SERVERS);
        char sha[41];
        open_connection(&connections[run.servers], item, sha, (size_t)most * 2 + 8);
        if (run.servers > 0 && strcmp(sha, run.sha)) die("servers disagree on the script's sha1");
        memcpy(run.sha, sha, sizeof sha);
        run.servers++;
    }
    if (run.servers == 0) die("no server given");
    run.connections = connections;

    long errors = 0;
    list = strdup(scenarios);
    for (char *item = strtok(list, ","); item; item = strtok(NULL, ",")) {
        if (!strcmp(item, "sequential")) {
            sequential(&run);
        } else if (!strncmp(item, "concurrent_", 11) && atol(item + 11) > 0) {
            concurrent(&run, (int)atol(item + 11), item);
        } else {
            die("unknown scenario %s (sequential, concurrent_C)", item);
        }
        errors += run.errors;
    }
    free(list);
    return errors > 0 ? 1 : 0;
}
