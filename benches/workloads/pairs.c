/* pairs.c — single-threaded small-object churn: "pairs", "random", "stamp" and "batches".
 *
 * Usage: pairs pairs   [rounds]   — malloc+free pairs, cycling sizes 16, 64, 256, 1024, 4096 and a
 *                                   fixed pseudo-random size table (16–512 B); one op = one pair.
 *        pairs random  [rounds]   — malloc+free pairs whose size changes at every pair: a round
 *                                   walks a table of 256 pseudo-random sizes (16–512 B) once;
 *                                   one op = one pair.
 *        pairs batches [rounds]   — 1000 mallocs then 1000 frees: in allocation order for each
 *                                   fixed size, in shuffled order for mixed sizes (8 B–4 KiB);
 *                                   one op = one malloc+free.
 *        pairs stamp   [rounds]   — "random", but the program stores one byte at the block's
 *                                   start just before its free (a flag, a string's terminator):
 *                                   a free that loads a wider word there waits for that store.
 * Mirrors the rows of the criterion benchmark benches/alloc_pairs.rs, but through the C ABI so
 * every allocator (glibc, LD_PRELOADed jemalloc/mimalloc/tcmalloc/sampalloc) is called the same
 * way. Every block gets a fill tag checked before its free (exit 3 on corruption).
 * Prints one RESULT line (see common.h). Build: cc -O2 -pthread pairs.c -o pairs
 */
#include "common.h"

#define BATCH 1000

static const size_t FIXED[] = {16, 64, 256, 1024, 4096};
#define NFIXED (sizeof FIXED / sizeof FIXED[0])

/* One malloc+free pair of `n` bytes, the block filled and checked in between. */
static inline __attribute__((always_inline)) void one_pair(const char *what, size_t n) {
    void *p = xmalloc(n);
    block_fill(p, n);
    block_check(what, p, n);
    free(p);
}

/* A table of 256 pseudo-random sizes of 16-512 B. */
static void random_sizes(size_t sizes[256], uint64_t seed) {
    rng_t r;
    rng_seed(&r, seed);
    for (int i = 0; i < 256; i++) sizes[i] = rng_range(&r, 16, 512);
}

static long long run_pairs(long rounds) {
    size_t mixed[256];
    long long ops = 0;
    random_sizes(mixed, 1);
    for (long round = 0; round < rounds; round++) {
        for (size_t k = 0; k < NFIXED; k++) {
            for (int i = 0; i < 200; i++) one_pair("pairs", FIXED[k]);
            ops += 200;
        }
        for (int i = 0; i < 256; i++) one_pair("pairs", mixed[i]);
        ops += 256;
    }
    return ops;
}

static long long run_random(long rounds) {
    size_t sizes[256];
    long long ops = 0;
    random_sizes(sizes, 3);
    for (long round = 0; round < rounds; round++) {
        for (int i = 0; i < 256; i++) one_pair("random", sizes[i]);
        ops += 256;
    }
    return ops;
}

static long long run_stamp(long rounds) {
    size_t sizes[256];
    long long ops = 0;
    random_sizes(sizes, 3);
    for (long round = 0; round < rounds; round++) {
        for (int i = 0; i < 256; i++) {
            volatile char *p = xmalloc(sizes[i]);
            p[0] = (char)i;
            free((void *)p);
        }
        ops += 256;
    }
    return ops;
}

static long long run_batches(long rounds) {
    void *blocks[BATCH];
    size_t sizes[BATCH];
    int order[BATCH];
    rng_t r;
    long long ops = 0;
    rng_seed(&r, 2);
    for (int i = 0; i < BATCH; i++) { sizes[i] = rng_range(&r, 8, 4096); order[i] = i; }
    for (int i = BATCH - 1; i > 0; i--) {
        int j = (int)rng_range(&r, 0, (size_t)i), t = order[i];
        order[i] = order[j]; order[j] = t;
    }
    for (long round = 0; round < rounds; round++) {
        for (size_t k = 0; k < NFIXED; k++) {
            size_t n = FIXED[k];
            for (int i = 0; i < BATCH; i++) { blocks[i] = xmalloc(n); block_fill(blocks[i], n); }
            for (int i = 0; i < BATCH; i++) { block_check("batches", blocks[i], n); free(blocks[i]); }
            ops += BATCH;
        }
        for (int i = 0; i < BATCH; i++) {
            size_t n = sizes[i] < 8 ? 8 : sizes[i];
            blocks[i] = xmalloc(n);
            block_fill(blocks[i], n);
        }
        for (int i = 0; i < BATCH; i++) {
            int j = order[i];
            block_check("batches", blocks[j], sizes[j] < 8 ? 8 : sizes[j]);
            free(blocks[j]);
        }
        ops += BATCH;
    }
    return ops;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "pairs";
    long long ops;
    double t0, t1;
    if (strcmp(mode, "pairs") == 0) {
        long rounds = arg_long(argc, argv, 2, 20000);
        t0 = now_seconds(); ops = run_pairs(rounds); t1 = now_seconds();
    } else if (strcmp(mode, "random") == 0) {
        long rounds = arg_long(argc, argv, 2, 100000);
        t0 = now_seconds(); ops = run_random(rounds); t1 = now_seconds();
    } else if (strcmp(mode, "stamp") == 0) {
        long rounds = arg_long(argc, argv, 2, 100000);
        t0 = now_seconds(); ops = run_stamp(rounds); t1 = now_seconds();
    } else if (strcmp(mode, "batches") == 0) {
        long rounds = arg_long(argc, argv, 2, 4000);
        t0 = now_seconds(); ops = run_batches(rounds); t1 = now_seconds();
    } else {
        fprintf(stderr, "usage: %s pairs|random|stamp|batches [rounds]\n", argv[0]);
        return 1;
    }
    print_result(mode, 1, ops, t1 - t0, rss_kb(), "ops_per_sec=%.0f", ops / (t1 - t0));
    return 0;
}
