/* churn.c — the allocation-heavy service shape that prices the profiler (issue 13, item 6).
 *
 * Usage: churn [threads=2] [steps=20000000] [slots=2000] [seed=77]
 * Each thread holds `slots` live blocks and repeats a step: free a random slot and allocate a new
 * block into it, of a size drawn as a busy C or C++ service draws them: 88 % 8–263 B, 11 %
 * 0.5–16 KiB, 1 % 64–320 KiB. The first and last 8 bytes of every block are written and checked
 * before its free. At the default sample interval (512 KiB) the large blocks make this a
 * sample-heavy program: about one sample per 170 steps, so the cost of a sample shows plainly
 * in `prof:true` against `prof:false`. One op = one free + malloc. Prints one RESULT line.
 * Build: cc -O2 -pthread churn.c -o churn
 */
#include "common.h"

static long g_steps, g_slots, g_seed;

static size_t pick_size(rng_t *r) {
    uint64_t roll = rng_next(r) % 100;
    if (roll < 88) return rng_range(r, 8, 263);
    if (roll < 99) return rng_range(r, 512, 16 << 10);
    return rng_range(r, 64 << 10, 320 << 10);
}

static void *worker(void *arg) {
    long id = (long)(intptr_t)arg;
    rng_t r;
    rng_seed(&r, (uint64_t)g_seed * 1000003u + (uint64_t)id);
    void **blocks = xmalloc((size_t)g_slots * sizeof *blocks);
    size_t *sizes = xmalloc((size_t)g_slots * sizeof *sizes);
    for (long k = 0; k < g_slots; k++) {
        sizes[k] = pick_size(&r);
        blocks[k] = xmalloc(sizes[k]);
        block_fill(blocks[k], sizes[k]);
    }
    for (long i = 0; i < g_steps; i++) {
        size_t k = (size_t)(rng_next(&r) % (uint64_t)g_slots);
        block_check("churn", blocks[k], sizes[k]);
        free(blocks[k]);
        sizes[k] = pick_size(&r);
        blocks[k] = xmalloc(sizes[k]);
        block_fill(blocks[k], sizes[k]);
    }
    for (long k = 0; k < g_slots; k++) free(blocks[k]);
    free(blocks);
    free(sizes);
    return NULL;
}

int main(int argc, char **argv) {
    int threads = (int)arg_long(argc, argv, 1, 2);
    g_steps = arg_long(argc, argv, 2, 20000000);
    g_slots = arg_long(argc, argv, 3, 2000);
    g_seed = arg_long(argc, argv, 4, 77);
    if (threads < 1 || threads > 256 || g_steps < 1 || g_slots < 1) {
        fprintf(stderr, "usage: %s [threads] [steps] [slots] [seed]\n", argv[0]);
        return 1;
    }
    pthread_t tids[256];
    double t0 = now_seconds();
    for (int t = 0; t < threads; t++)
        if (pthread_create(&tids[t], NULL, worker, (void *)(intptr_t)t) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            return 2;
        }
    for (int t = 0; t < threads; t++) pthread_join(tids[t], NULL);
    double t1 = now_seconds();
    long long ops = (long long)threads * g_steps;
    print_result("churn", threads, ops, t1 - t0, rss_kb(), "ops_per_sec=%.0f", ops / (t1 - t0));
    return 0;
}
