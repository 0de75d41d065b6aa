/* cache.c — false-sharing checks, after Hoard's cache-scratch and cache-thrash (mimalloc-bench).
 *
 * Usage: cache scratch [threads=2] [iterations=1000] [objsize=8] [repetitions=20000]
 *        cache thrash  [threads=2] [iterations=1000] [objsize=8] [repetitions=20000]
 * scratch (passive false sharing): the main thread allocates one small object per thread, all
 *   adjacent; each thread frees the one it is given, then `iterations` times allocates an object
 *   of the same size, writes every byte of it `repetitions` times, and frees it. An allocator that
 *   hands the freed (main-thread) object back to the thread that freed it puts several threads'
 *   objects in one cache line, and the writes slow down by an order of magnitude.
 * thrash (active false sharing): each thread allocates its own objects directly; objects of
 *   different threads must not share cache lines.
 * The RESULT line's shared_line_pairs counts pairs of threads whose first or last objects shared a
 * 64-byte line: a verdict that does not depend on both threads really running at once (on a busy
 * 2-core machine they often do not, and the time then hides the false sharing).
 * Each thread checks the final contents of every object it wrote (exit 3 on a mismatch).
 * Report: time (lower is better). Prints one RESULT line (see common.h).
 * Build: cc -O2 -pthread cache.c -o cache
 */
#include "common.h"

static long g_iterations, g_objsize, g_reps;

typedef struct { char *given; int id; uintptr_t first, last; } arg_t;

static void *worker(void *varg) {
    arg_t *a = varg;
    if (a->given) free(a->given);
    for (long i = 0; i < g_iterations; i++) {
        volatile char *p = xmalloc((size_t)g_objsize);
        if (i == 0) a->first = (uintptr_t)p;
        a->last = (uintptr_t)p;
        for (long k = 0; k < g_objsize; k++) p[k] = 0;
        for (long j = 0; j < g_reps; j++)
            for (long k = 0; k < g_objsize; k++) p[k] = (char)(p[k] + 1);
        for (long k = 0; k < g_objsize; k++)
            if (p[k] != (char)g_reps) die_corrupt("cache", (const void *)p, (size_t)g_objsize);
        free((void *)p);
    }
    return NULL;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "scratch";
    int scratch = strcmp(mode, "scratch") == 0;
    if (!scratch && strcmp(mode, "thrash") != 0) {
        fprintf(stderr, "usage: %s scratch|thrash [threads] [iterations] [objsize] [reps]\n", argv[0]);
        return 1;
    }
    int threads = (int)arg_long(argc, argv, 2, 2);
    g_iterations = arg_long(argc, argv, 3, 1000);
    g_objsize = arg_long(argc, argv, 4, 8);
    g_reps = arg_long(argc, argv, 5, 20000);
    pthread_t *ts = xmalloc(sizeof(pthread_t) * (size_t)threads);
    arg_t *args = xmalloc(sizeof(arg_t) * (size_t)threads);
    for (int i = 0; i < threads; i++) {
        args[i].id = i;
        args[i].given = scratch ? xmalloc((size_t)g_objsize) : NULL;
    }
    double t0 = now_seconds();
    for (int i = 0; i < threads; i++) pthread_create(&ts[i], NULL, worker, &args[i]);
    for (int i = 0; i < threads; i++) pthread_join(ts[i], NULL);
    double t1 = now_seconds();
    long long ops = (long long)threads * g_iterations;
    /* Deterministic verdict, independent of timing noise: pairs of threads whose first or last
     * objects shared a 64-byte cache line. */
    int shared = 0;
    for (int i = 0; i < threads; i++)
        for (int j = i + 1; j < threads; j++) {
            uintptr_t a[2] = {args[i].first >> 6, args[i].last >> 6};
            uintptr_t b[2] = {args[j].first >> 6, args[j].last >> 6};
            if (a[0] == b[0] || a[0] == b[1] || a[1] == b[0] || a[1] == b[1]) shared++;
        }
    print_result(scratch ? "cache-scratch" : "cache-thrash", threads, ops, t1 - t0, rss_kb(),
                 "shared_line_pairs=%d", shared);
    return 0;
}
