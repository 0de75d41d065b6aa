/* common.h — shared helpers of the workload programs in benches/workloads/.
 *
 * Every workload is a plain C program built with `cc -O2 -pthread` and run unchanged under each
 * allocator (glibc, or another malloc through LD_PRELOAD). This header gives them:
 *   - a monotonic clock (now_seconds),
 *   - resident memory read from the kernel: current RSS from /proc/self/statm, peak (VmHWM) from
 *     /proc/self/status, anonymous memory backed by transparent huge pages (AnonHugePages of
 *     /proc/self/smaps_rollup), all in KiB,
 *   - a small per-thread PRNG (xorshift64*), so every allocator sees the same request sequence,
 *   - fill patterns: a block's first and last 8 bytes hold a tag derived from its address and size,
 *     checked before it is freed; a mismatch means the allocator handed out overlapping memory or
 *     corrupted a live block, and the program exits with status 3,
 *   - print_result: the one machine-readable line the runner (run.py) parses:
 *       RESULT name=larson threads=4 ops=... seconds=... peak_rss_kb=... final_rss_kb=...
 *              anon_huge_kb=... [k=v ...]
 */
#ifndef WORKLOADS_COMMON_H
#define WORKLOADS_COMMON_H

#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static inline double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Current resident set size in KiB (second field of /proc/self/statm, in pages). */
static inline long rss_kb(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, resident = 0;
    if (!f) return -1;
    if (fscanf(f, "%ld %ld", &size, &resident) != 2) resident = -1;
    fclose(f);
    return resident < 0 ? -1 : resident * (sysconf(_SC_PAGESIZE) / 1024);
}

/* Peak resident set size in KiB (VmHWM of /proc/self/status). */
static inline long peak_rss_kb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0) { kb = atol(line + 6); break; }
    fclose(f);
    return kb;
}

/* Anonymous memory backed by transparent huge pages, in KiB (AnonHugePages of
 * /proc/self/smaps_rollup, summed over all mappings; -1 when unreadable). Read with open/read into
 * a stack buffer, so the allocator under test sees no allocation from here. */
static inline long anon_huge_kb(void) {
    char buf[4096];
    const char *key = "AnonHugePages:";
    size_t klen = strlen(key), len = 0;
    ssize_t n;
    int fd = open("/proc/self/smaps_rollup", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    while (len < sizeof buf - 1 && (n = read(fd, buf + len, sizeof buf - 1 - len)) > 0) len += (size_t)n;
    close(fd);
    buf[len] = '\0';
    char *line = buf;
    while (line != NULL) {
        if (strncmp(line, key, klen) == 0) return atol(line + klen);
        line = strchr(line, '\n');
        if (line != NULL) line++;
    }
    return -1;
}

/* xorshift64*: fast, good enough for choosing sizes and slots, and seedable per thread. */
typedef struct { uint64_t s; } rng_t;
static inline void rng_seed(rng_t *r, uint64_t seed) {
    r->s = seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
    if (r->s == 0) r->s = 1;
}
static inline uint64_t rng_next(rng_t *r) {
    uint64_t x = r->s;
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    r->s = x;
    return x * 0x2545F4914F6CDD1Dull;
}
/* Uniform in [lo, hi]. */
static inline size_t rng_range(rng_t *r, size_t lo, size_t hi) {
    return lo + (size_t)(rng_next(r) % (uint64_t)(hi - lo + 1));
}

/* Tags for fill patterns: a function of the block's address and size, so a block handed out twice
 * or overwritten by a neighbour fails its check. Blocks must be at least 8 bytes (below 16 only
 * the first 8 carry the tag). */
static inline uint64_t block_tag(const void *p, size_t size) {
    return ((uint64_t)(uintptr_t)p * 0x9E3779B97F4A7C15ull) ^ (uint64_t)size ^ 0xA5A5A5A55A5A5A5Aull;
}
static inline void block_fill(void *p, size_t size) {
    uint64_t t = block_tag(p, size);
    memcpy(p, &t, 8);
    if (size >= 16) memcpy((char *)p + size - 8, &t, 8);
}
static void die_corrupt(const char *what, const void *p, size_t size) {
    fprintf(stderr, "CORRUPTION: %s: block %p of %zu bytes failed its fill check\n", what, p, size);
    fflush(stderr);
    _exit(3);
}
static inline void block_check(const char *what, const void *p, size_t size) {
    uint64_t t = block_tag(p, size), a, b;
    memcpy(&a, p, 8);
    b = t;
    if (size >= 16) memcpy(&b, (const char *)p + size - 8, 8);
    if (a != t || b != t) die_corrupt(what, p, size);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n);
    if (!p) { fprintf(stderr, "out of memory (%zu bytes)\n", n); _exit(2); }
    return p;
}

/* Prints "RESULT name=... threads=... ops=... seconds=... peak_rss_kb=... final_rss_kb=...
 * anon_huge_kb=..." plus optional extra "key=value" pairs given as a printf format (may be NULL).
 * anon_huge_kb is read here, at result time (after the workload's own final RSS reading). */
/* RSS (KiB) once a running program has let a 1 s decay pass: waits 1.5 s, then allocates a
 * little (small pairs and 256 KiB blocks), as a program that keeps running would; allocators that
 * purge lazily, on allocation activity, get their chance. */
static inline long settled_rss_kb(void) {
    usleep(1500 * 1000);
    for (int i = 0; i < 2000; i++) { void *p = xmalloc(64 + (size_t)(i % 32) * 16); free(p); }
    for (int i = 0; i < 16; i++) { char *big = xmalloc(256 * 1024); big[0] = 1; free(big); }
    return rss_kb();
}

static void print_result(const char *name, int threads, long long ops, double seconds,
                         long final_rss, const char *extra_fmt, ...) {
    long huge = anon_huge_kb();
    printf("RESULT name=%s threads=%d ops=%lld seconds=%.6f peak_rss_kb=%ld final_rss_kb=%ld anon_huge_kb=%ld",
           name, threads, ops, seconds, peak_rss_kb(), final_rss, huge);
    if (extra_fmt) {
        va_list ap;
        va_start(ap, extra_fmt);
        putchar(' ');
        vprintf(extra_fmt, ap);
        va_end(ap);
    }
    putchar('\n');
    fflush(stdout);
}

/* Integer argument argv[i] or a default. */
static long arg_long(int argc, char **argv, int i, long dflt) {
    return argc > i ? atol(argv[i]) : dflt;
}

#endif
