/* churn_decay.c — busy threads with overlapping block lifetimes, the shape that kept dirty pages
 * from decaying (issue 20: a JVM looping GZIP streams and Unsafe.allocateMemory/freeMemory).
 *
 * Each of T threads keeps a window of W live blocks of log-uniform sizes in [min, max] bytes; a
 * step frees a random one of them and allocates a new one in its place, writing every page of it.
 * Nothing leaks: the live set stays near T * W * mean size throughout. The main thread prints the
 * RSS every 2 s, so a good allocator shows a flat line after warm-up.
 *   churn_decay [seconds=25] [threads=16] [window=64] [min=16] [max=1048576] [pause_us=0]
 * pause_us > 0 sleeps that long after each step, for a slower request rate (a JVM doing work
 * between its allocations) at which most freed pages sit longer than a decay window.
 * Output: "t=<s> rss_kb=<kb>" lines, then the RESULT line (see common.h) with the mean and last
 * RSS samples after the first 4 s. The program then exits with its threads still alive and their
 * blocks still allocated, as a busy server stopped mid-run would: an allocator's exit report
 * (SAMPALLOC_CONF=stats_print:true) then shows what busy arenas hold, not what was returned at
 * thread exit.
 */
#include "common.h"
#include <math.h>
#include <stdatomic.h>

static atomic_int stop;
static long window, min_size, max_size, pause_us;
static atomic_llong total_ops;
static atomic_int stopped;

static size_t log_uniform(rng_t *r) {
    double lo = log((double)min_size), hi = log((double)max_size);
    double u = (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
    size_t n = (size_t)exp(lo + u * (hi - lo));
    return n < 16 ? 16 : n;
}

static void touch(char *p, size_t n) {
    for (size_t i = 0; i < n; i += 4096) p[i] = (char)i;
    block_fill(p, n);
}

static void *worker(void *arg) {
    rng_t r;
    rng_seed(&r, (uint64_t)(uintptr_t)arg + 1);
    char **blocks = calloc((size_t)window, sizeof *blocks);
    size_t *sizes = calloc((size_t)window, sizeof *sizes);
    for (long i = 0; i < window; i++) {
        sizes[i] = log_uniform(&r);
        blocks[i] = xmalloc(sizes[i]);
        touch(blocks[i], sizes[i]);
    }
    long long ops = 0;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        long i = (long)rng_range(&r, 0, (size_t)window - 1);
        block_check("free", blocks[i], sizes[i]);
        free(blocks[i]);
        sizes[i] = log_uniform(&r);
        blocks[i] = xmalloc(sizes[i]);
        touch(blocks[i], sizes[i]);
        ops++;
        if (pause_us > 0) usleep((useconds_t)pause_us);
    }
    atomic_fetch_add(&total_ops, ops);
    atomic_fetch_add(&stopped, 1);
    for (;;) pause();
    return NULL;
}

int main(int argc, char **argv) {
    long seconds = arg_long(argc, argv, 1, 25);
    int threads = (int)arg_long(argc, argv, 2, 16);
    window = arg_long(argc, argv, 3, 64);
    min_size = arg_long(argc, argv, 4, 16);
    max_size = arg_long(argc, argv, 5, 1 << 20);
    pause_us = arg_long(argc, argv, 6, 0);
    pthread_t *t = calloc((size_t)threads, sizeof *t);
    double start = now_seconds();
    for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)i);
    long sum = 0, n = 0, last = 0;
    for (long s = 2; s <= seconds; s += 2) {
        double wake = start + (double)s;
        while (now_seconds() < wake) usleep(20000);
        last = rss_kb();
        printf("t=%ld rss_kb=%ld\n", s, last);
        fflush(stdout);
        if (s > 4) { sum += last; n++; }
    }
    atomic_store(&stop, 1);
    while (atomic_load(&stopped) < threads) usleep(1000);
    print_result("churn_decay", threads, atomic_load(&total_ops), now_seconds() - start,
                 rss_kb(), "mean_rss_kb=%ld last_rss_kb=%ld", n ? sum / n : 0, last);
    return 0;
}
