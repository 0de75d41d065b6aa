/* rounds.c — thread rounds: short-lived threads in waves, part of each wave's data outliving it.
 *
 * Usage: rounds [rounds=40] [threads=16] [blocks=10000] [seed=13]
 * Each round starts `threads` threads and joins them all before the next round starts (a pool of
 * workers started per batch of requests). Each thread allocates `blocks` blocks: 16 B–2 KiB
 * (99.5 %) and a few of 4–512 KiB (0.5 %, log-uniform), every page of every block touched. While
 * it allocates, it frees the blocks a thread of the previous round handed over to it (one for
 * every three it allocates). Of its own blocks, 3 % go into a table shared by all threads (each
 * replaces a random slot, whose old block the thread frees), a quarter of the rest live into the
 * next round, where a new thread frees them, and the others are freed before the thread exits.
 * So every round's threads find the previous round's memory freed (by themselves, or by the
 * previous round before exiting): an allocator that gives it back to the kernel when a round
 * ends faults it in again at the next.
 * Reports: seconds (all rounds), peak_rss_kb, final_rss_kb (right after the last round, its
 * handed-over quarter and the shared table still allocated), settled_rss_kb (after 1.5 s and a
 * little allocation activity, as frag.c does), live_kb (bytes still allocated at the end),
 * ops_per_sec (allocations per second).
 * Every block carries a fill tag checked before its free (exit 3 on corruption).
 * Prints one RESULT line (see common.h). Build: cc -O2 -pthread rounds.c -o rounds
 */
#include "common.h"

#define TABLE 4096
#define SHARED_PER_1000 30 /* 3 % */
#define LARGE_PER_1000 5   /* 0.5 % */

static long g_rounds, g_threads, g_blocks, g_seed;

typedef struct {
    void *p;
    size_t n;
} blk_t;

/* The shared table: TABLE slots under one lock. */
static blk_t g_table[TABLE];
static pthread_mutex_t g_table_lock = PTHREAD_MUTEX_INITIALIZER;

/* handed[i]: the blocks thread i of the current round hands over; the next round's thread i frees
 * those of thread (i + 1) % threads of this round (another thread, on another arena if the
 * allocator assigns them by thread). */
typedef struct {
    blk_t *b;
    long n;
} handover_t;

typedef struct {
    int id;
    long round;
    handover_t *in;  /* to free (previous round's), may be empty */
    handover_t *out; /* to fill */
} thread_t;

static size_t pick_size(rng_t *r) {
    if (rng_next(r) % 1000 < LARGE_PER_1000) {
        /* log-uniform in 4–512 KiB: a power of two from 2^12 to 2^18, then up to twice that */
        size_t lo = (size_t)4096 << rng_range(r, 0, 6);
        return rng_range(r, lo, 2 * lo);
    }
    return rng_range(r, 16, 2048);
}

static void *alloc_filled(size_t n) {
    char *p = xmalloc(n);
    for (size_t off = 4096; off < n; off += 4096) p[off] = 1; /* touch every page */
    block_fill(p, n);
    return p;
}

static void free_checked(blk_t b) {
    block_check("rounds", b.p, b.n);
    free(b.p);
}

static void *worker(void *arg) {
    thread_t *t = arg;
    rng_t r;
    blk_t *mine = xmalloc(sizeof(blk_t) * (size_t)g_blocks);
    long nmine = 0, next_in = 0;
    rng_seed(&r, (uint64_t)g_seed * 1000003 + (uint64_t)t->round * 1000 + (uint64_t)t->id);
    for (long i = 0; i < g_blocks; i++) {
        size_t n = pick_size(&r);
        blk_t b = {alloc_filled(n), n};
        if (rng_next(&r) % 1000 < SHARED_PER_1000) {
            size_t k = (size_t)(rng_next(&r) % TABLE);
            pthread_mutex_lock(&g_table_lock);
            blk_t old = g_table[k];
            g_table[k] = b;
            pthread_mutex_unlock(&g_table_lock);
            if (old.p) free_checked(old);
        } else {
            mine[nmine++] = b;
        }
        if (i % 3 == 0 && next_in < t->in->n) free_checked(t->in->b[next_in++]);
    }
    while (next_in < t->in->n) free_checked(t->in->b[next_in++]);
    free(t->in->b);
    t->in->b = NULL;
    t->in->n = 0;
    /* A quarter (every fourth block) lives on; the others are freed now. */
    blk_t *out = xmalloc(sizeof(blk_t) * (size_t)(nmine / 4 + 1));
    long nout = 0;
    for (long i = 0; i < nmine; i++) {
        if (i % 4 == 0) out[nout++] = mine[i];
        else free_checked(mine[i]);
    }
    free(mine);
    t->out->b = out;
    t->out->n = nout;
    return NULL;
}

static size_t handed_bytes(handover_t *h, long threads) {
    size_t s = 0;
    for (long i = 0; i < threads; i++)
        for (long k = 0; k < h[i].n; k++) s += h[i].b[k].n;
    return s;
}

int main(int argc, char **argv) {
    g_rounds = arg_long(argc, argv, 1, 40);
    g_threads = arg_long(argc, argv, 2, 16);
    g_blocks = arg_long(argc, argv, 3, 10000);
    g_seed = arg_long(argc, argv, 4, 13);
    if (g_rounds < 1 || g_threads < 1 || g_blocks < 1) {
        fprintf(stderr, "usage: %s [rounds>=1] [threads>=1] [blocks>=1] [seed]\n", argv[0]);
        return 1;
    }
    pthread_t *ts = xmalloc(sizeof(pthread_t) * (size_t)g_threads);
    thread_t *td = calloc((size_t)g_threads, sizeof *td);
    handover_t *prev = calloc((size_t)g_threads, sizeof *prev);
    handover_t *cur = calloc((size_t)g_threads, sizeof *cur);
    if (!td || !prev || !cur) { fprintf(stderr, "out of memory\n"); return 2; }
    double t0 = now_seconds();
    for (long round = 0; round < g_rounds; round++) {
        for (long i = 0; i < g_threads; i++) {
            td[i].id = (int)i;
            td[i].round = round;
            td[i].in = &prev[(i + 1) % g_threads];
            td[i].out = &cur[i];
            if (pthread_create(&ts[i], NULL, worker, &td[i]) != 0) {
                fprintf(stderr, "pthread_create failed\n");
                return 2;
            }
        }
        for (long i = 0; i < g_threads; i++) pthread_join(ts[i], NULL);
        handover_t *tmp = prev;
        prev = cur;
        cur = tmp;
    }
    double t1 = now_seconds();
    long final_rss = rss_kb();
    long settled = settled_rss_kb();
    size_t live = handed_bytes(prev, g_threads);
    for (int k = 0; k < TABLE; k++) live += g_table[k].n;
    for (long i = 0; i < g_threads; i++) {
        for (long k = 0; k < prev[i].n; k++) free_checked(prev[i].b[k]);
        free(prev[i].b);
    }
    for (int k = 0; k < TABLE; k++)
        if (g_table[k].p) free_checked(g_table[k]);
    long long ops = (long long)g_rounds * g_threads * g_blocks;
    print_result("rounds", (int)g_threads, ops, t1 - t0, final_rss,
                 "rounds=%ld settled_rss_kb=%ld live_kb=%zu ops_per_sec=%.0f", g_rounds, settled,
                 live / 1024, ops / (t1 - t0));
    return 0;
}
