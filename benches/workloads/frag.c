/* frag.c — fragmentation: many threads, mixed lifetimes and sizes; RSS against live data.
 *
 * Usage: frag [threads=8] [ops_per_thread=300000] [long_slots=4000] [seed=7]
 * Each thread runs `ops_per_thread` operations. Most allocations are short-lived: they go into a
 * ring of 512 slots and are freed 512 allocations later. One in 24 is long-lived: it replaces a
 * random slot of the thread's long-lived array (`long_slots` blocks of 16 B–4 KiB), so the
 * long-lived set is replaced slowly and its blocks end up scattered among short-lived ones.
 * Short-lived sizes: 75 % 16–256 B, 20 % 256 B–4 KiB, 4.5 % 4–64 KiB, 0.5 % 64–512 KiB; the
 * small range drifts between four phases (what a service's request mix does over a day), so
 * pages that held one phase's sizes are needed for another's. Eight times per run each thread
 * makes a burst: 6000 extra blocks held at once, then freed (a big request), during which it also
 * replaces long-lived blocks (one per 16 burst blocks): those pin the burst's memory in an
 * allocator that cannot reuse or return the holes. Every page of every block is touched.
 * At the end the threads free their short-lived blocks and hand their long-lived arrays to the
 * main thread, which keeps them allocated.
 * Reports: seconds (the churn), peak_rss_kb, final_rss_kb (right after the churn, long-lived set
 * still allocated), settled_rss_kb (after 1.5 s and a little allocation activity — 2000 small
 * pairs and 16 × 256 KiB, about 4.5 MiB — as a real program would do, so decay-based purging can
 * act), live_kb (the long-lived bytes requested).
 * Every block carries a fill tag checked before its free (exit 3 on corruption).
 * Prints one RESULT line (see common.h). Build: cc -O2 -pthread frag.c -o frag
 */
#include "common.h"

#define RING 512
#define BURST 6000
#define LONG_ONE_IN 24

static long g_ops, g_long_slots, g_seed;

typedef struct {
    int id;
    void **lblocks;
    size_t *lsizes;
    size_t live_bytes;
} thread_t;

static size_t pick_size(rng_t *r, int phase) {
    uint64_t x = rng_next(r) % 1000;
    /* the small range drifts: phase 0: 16–128, 1: 96–256, 2: 16–64 and 160–256, 3: 48–192 */
    static const size_t lo[4] = {16, 96, 16, 48}, hi[4] = {128, 256, 256, 192};
    if (x < 750) {
        size_t n = rng_range(r, lo[phase], hi[phase]);
        if (phase == 2 && n > 64 && n < 160) n += 96;
        return n;
    }
    if (x < 950) return rng_range(r, 257, 4096);
    if (x < 995) return rng_range(r, 4097, 65536);
    return rng_range(r, 65537, 512 * 1024);
}

/* Long-lived blocks: 16 B–4 KiB, the small range of the current phase three times in four. */
static size_t pick_long_size(rng_t *r, int phase) {
    size_t n = pick_size(r, phase);
    return n > 4096 ? rng_range(r, 257, 4096) : n;
}

static void *alloc_filled(size_t n) {
    char *p = xmalloc(n);
    for (size_t off = 4096; off < n; off += 4096) p[off] = 1; /* touch every page */
    block_fill(p, n);
    return p;
}

static void replace_long(thread_t *t, rng_t *r, int phase) {
    size_t k = (size_t)(rng_next(r) % (uint64_t)g_long_slots);
    size_t n = pick_long_size(r, phase);
    block_check("frag", t->lblocks[k], t->lsizes[k]);
    free(t->lblocks[k]);
    t->live_bytes -= t->lsizes[k];
    t->lblocks[k] = alloc_filled(n);
    t->lsizes[k] = n;
    t->live_bytes += n;
}

static void *worker(void *arg) {
    thread_t *t = arg;
    rng_t r;
    void *ring[RING] = {0};
    size_t rsize[RING] = {0};
    void **burst = xmalloc(sizeof(void *) * BURST);
    size_t *bsize = xmalloc(sizeof(size_t) * BURST);
    rng_seed(&r, (uint64_t)g_seed * 1000 + (uint64_t)t->id);
    t->lblocks = xmalloc(sizeof(void *) * (size_t)g_long_slots);
    t->lsizes = xmalloc(sizeof(size_t) * (size_t)g_long_slots);
    t->live_bytes = 0;
    for (long k = 0; k < g_long_slots; k++) {
        t->lsizes[k] = pick_long_size(&r, 0);
        t->lblocks[k] = alloc_filled(t->lsizes[k]);
        t->live_bytes += t->lsizes[k];
    }
    long burst_every = g_ops / 8 > 0 ? g_ops / 8 : 1;
    for (long i = 0; i < g_ops; i++) {
        int phase = (int)((i * 4) / g_ops);
        if (rng_next(&r) % LONG_ONE_IN == 0) {
            replace_long(t, &r, phase);
        } else {
            size_t n = pick_size(&r, phase);
            int k = (int)(i % RING);
            if (ring[k]) { block_check("frag", ring[k], rsize[k]); free(ring[k]); }
            ring[k] = alloc_filled(n);
            rsize[k] = n;
        }
        if (i % burst_every == burst_every / 2) {
            for (int b = 0; b < BURST; b++) {
                bsize[b] = pick_size(&r, phase);
                burst[b] = alloc_filled(bsize[b]);
                if (b % 16 == 0) replace_long(t, &r, phase);
            }
            for (int b = 0; b < BURST; b++) { block_check("frag", burst[b], bsize[b]); free(burst[b]); }
        }
    }
    for (int k = 0; k < RING; k++)
        if (ring[k]) { block_check("frag", ring[k], rsize[k]); free(ring[k]); }
    free(burst);
    free(bsize);
    return NULL;
}

int main(int argc, char **argv) {
    int threads = (int)arg_long(argc, argv, 1, 8);
    g_ops = arg_long(argc, argv, 2, 300000);
    g_long_slots = arg_long(argc, argv, 3, 4000);
    g_seed = arg_long(argc, argv, 4, 7);
    pthread_t *ts = xmalloc(sizeof(pthread_t) * (size_t)threads);
    thread_t *td = calloc((size_t)threads, sizeof *td);
    double t0 = now_seconds();
    for (int i = 0; i < threads; i++) {
        td[i].id = i;
        pthread_create(&ts[i], NULL, worker, &td[i]);
    }
    for (int i = 0; i < threads; i++) pthread_join(ts[i], NULL);
    double t1 = now_seconds();
    long final_rss = rss_kb();
    long settled = settled_rss_kb();
    size_t live = 0;
    for (int i = 0; i < threads; i++) {
        for (long k = 0; k < g_long_slots; k++) block_check("frag", td[i].lblocks[k], td[i].lsizes[k]);
        live += td[i].live_bytes;
    }
    long long ops = (long long)threads * g_ops;
    print_result("frag", threads, ops, t1 - t0, final_rss,
                 "settled_rss_kb=%ld live_kb=%zu ops_per_sec=%.0f", settled, live / 1024,
                 ops / (t1 - t0));
    return 0;
}
