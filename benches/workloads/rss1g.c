/* rss1g.c — does RSS come back after freeing 1 GiB?
 *
 * Usage: rss1g [threads=2] [mib=1024]
 * `threads` threads together allocate `mib` MiB in small blocks (64–4096 B, random), writing
 * every byte, then each thread frees the blocks of the *next* thread (cross-thread frees, as a
 * server's worker pool does) in shuffled order. The program then sleeps 2 s (sampalloc's default
 * decay is 1 s) and does a little allocation activity, as a real program would (4000 small pairs
 * and 16 × 256 KiB); allocators that purge lazily, on allocation activity, get their chance.
 * Reports: seconds (allocation + free), peak_rss_kb, freed_rss_kb (right after the frees),
 * final_rss_kb (after the pause and the activity), start_rss_kb (before the first allocation),
 * retained_kb = final − start: what the allocator kept of the freed GiB.
 * Every block's fill tag is checked before its free (exit 3 on corruption).
 * Prints one RESULT line (see common.h). Build: cc -O2 -pthread rss1g.c -o rss1g
 */
#include "common.h"

typedef struct {
    int id;
    size_t bytes;
    void **blocks;
    size_t *sizes;
    size_t count;
} part_t;

static part_t *g_parts;
static int g_threads;
static pthread_barrier_t g_barrier;

static void *worker(void *arg) {
    part_t *me = arg;
    rng_t r;
    rng_seed(&r, 99 + (uint64_t)me->id);
    size_t cap = me->bytes / 64 + 1, total = 0;
    me->blocks = xmalloc(sizeof(void *) * cap);
    me->sizes = xmalloc(sizeof(size_t) * cap);
    me->count = 0;
    while (total < me->bytes) {
        size_t n = rng_range(&r, 64, 4096);
        char *p = xmalloc(n);
        memset(p, (int)(n & 0xff), n);
        block_fill(p, n);
        me->blocks[me->count] = p;
        me->sizes[me->count] = n;
        me->count++;
        total += n;
    }
    pthread_barrier_wait(&g_barrier);
    /* free the next thread's blocks, in shuffled order */
    part_t *other = &g_parts[(me->id + 1) % g_threads];
    size_t n = other->count;
    for (size_t i = n - 1; i > 0; i--) {
        size_t j = (size_t)(rng_next(&r) % (uint64_t)(i + 1));
        void *tp = other->blocks[i]; other->blocks[i] = other->blocks[j]; other->blocks[j] = tp;
        size_t ts = other->sizes[i]; other->sizes[i] = other->sizes[j]; other->sizes[j] = ts;
    }
    for (size_t i = 0; i < n; i++) {
        block_check("rss1g", other->blocks[i], other->sizes[i]);
        free(other->blocks[i]);
    }
    return NULL;
}

int main(int argc, char **argv) {
    g_threads = (int)arg_long(argc, argv, 1, 2);
    long mib = arg_long(argc, argv, 2, 1024);
    g_parts = calloc((size_t)g_threads, sizeof *g_parts);
    pthread_t *ts = xmalloc(sizeof(pthread_t) * (size_t)g_threads);
    pthread_barrier_init(&g_barrier, NULL, (unsigned)g_threads);
    long start = rss_kb();
    double t0 = now_seconds();
    for (int i = 0; i < g_threads; i++) {
        g_parts[i].id = i;
        g_parts[i].bytes = ((size_t)mib << 20) / (size_t)g_threads;
        pthread_create(&ts[i], NULL, worker, &g_parts[i]);
    }
    for (int i = 0; i < g_threads; i++) pthread_join(ts[i], NULL);
    double t1 = now_seconds();
    long freed = rss_kb();
    for (int i = 0; i < g_threads; i++) { free(g_parts[i].blocks); free(g_parts[i].sizes); }
    sleep(2);
    for (int i = 0; i < 4000; i++) { void *p = xmalloc(64 + (size_t)(i % 64) * 16); free(p); }
    for (int i = 0; i < 16; i++) { char *big = xmalloc(256 * 1024); big[0] = 1; free(big); }
    long final = rss_kb();
    print_result("rss1g", g_threads, (long long)mib, t1 - t0, final,
                 "start_rss_kb=%ld freed_rss_kb=%ld retained_kb=%ld", start, freed, final - start);
    return 0;
}
