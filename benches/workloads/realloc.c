/* realloc.c — single-threaded realloc growth.
 *
 * Usage: realloc [rounds]
 * Each round grows one buffer from 16 B to 1 MiB in +64 B steps (16 384 reallocs), and another
 * from 16 B to 64 MiB by doubling (22 reallocs), writing a known byte pattern into every newly
 * added part and checking the whole content after growing (exit 3 if a realloc lost data).
 * glibc grows in place when the next chunk (or the heap top) is free, so this row rewards an
 * allocator that does too (or mremaps huge blocks). One op = one realloc.
 * Prints one RESULT line (see common.h). Build: cc -O2 -pthread realloc.c -o realloc
 */
#include "common.h"

static unsigned char pattern(size_t i) { return (unsigned char)(i * 131u + (i >> 9)); }

static void check_all(const unsigned char *p, size_t n) {
    uint64_t sum = 0, want = 0;
    for (size_t i = 0; i < n; i += 61) { sum += p[i]; want += pattern(i); }
    if (sum != want || p[n - 1] != pattern(n - 1)) die_corrupt("realloc", p, n);
}

/* Grows one buffer from 16 B to `limit`: by `step` bytes, or doubling when `step` is 0. Writes
 * the pattern into every added part, checks the whole at the end and frees it. Returns the
 * number of reallocs, or -1 if one failed. */
static long grow(size_t limit, size_t step) {
    size_t n = 16;
    long ops = 0;
    unsigned char *p = xmalloc(n);
    for (size_t i = 0; i < n; i++) p[i] = pattern(i);
    while (n < limit) {
        size_t m = step ? n + step : n * 2;
        p = realloc(p, m);
        if (!p) return -1;
        for (size_t i = n; i < m; i++) p[i] = pattern(i);
        n = m;
        ops++;
    }
    check_all(p, n);
    free(p);
    return ops;
}

int main(int argc, char **argv) {
    long rounds = arg_long(argc, argv, 1, 12);
    long long ops = 0;
    double t0 = now_seconds();
    for (long round = 0; round < rounds; round++) {
        long small = grow(1u << 20, 64);      /* small steps */
        long doubling = grow(64u << 20, 0);   /* doubling, touching every page of the new half */
        if (small < 0 || doubling < 0) { fprintf(stderr, "realloc failed\n"); return 2; }
        ops += small + doubling;
    }
    double t1 = now_seconds();
    print_result("realloc", 1, ops, t1 - t0, rss_kb(), "ops_per_sec=%.0f", ops / (t1 - t0));
    return 0;
}
