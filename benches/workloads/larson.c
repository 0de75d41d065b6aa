/* larson.c — server churn in the style of Larson & Krishnan's benchmark (as in mimalloc-bench).
 *
 * Usage: larson [chains=4] [generations=40] [ops_per_generation=50000] [slots=1000] [seed=4141]
 * `chains` threads run at once. Each holds a slot array of `slots` blocks (16–1024 B, random) and
 * repeatedly frees a random slot and allocates a new block of random size into it. After
 * `ops_per_generation` such replacements the thread hands its array to a new thread it creates
 * and exits ("the thread passes its blocks on"), so most frees are of blocks another, by then
 * exited, thread allocated; thread start/exit and cache return are part of the cost. After
 * `generations` hand-offs a chain frees its blocks and ends. Fixed work: the same request
 * sequence under every allocator. Every block carries a fill tag checked before its free.
 * One op = one free+malloc. Prints one RESULT line (see common.h).
 * Each chain's state (its RNG above all, written at every step) has 128 bytes of its own: in one
 * calloc'd array, two chains shared a cache line, and the row measured the program's own false
 * sharing (4-5x the time of the work itself, varying with where the array landed) rather than
 * the allocator. 128, not 64: the adjacent-line prefetcher moves lines in pairs.
 * Build: cc -O2 -pthread larson.c -o larson
 */
#include "common.h"

typedef struct {
    void **blocks;
    size_t *sizes;
    long generation;
    rng_t rng;
} __attribute__((aligned(128))) chain_t;

static long g_generations, g_ops, g_slots;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_done = PTHREAD_COND_INITIALIZER;
static int g_chains_left;

static size_t pick_size(rng_t *r) { return rng_range(r, 16, 1024); }

static void *generation(void *arg) {
    chain_t *c = arg;
    for (long i = 0; i < g_ops; i++) {
        size_t k = (size_t)(rng_next(&c->rng) % (uint64_t)g_slots);
        block_check("larson", c->blocks[k], c->sizes[k]);
        free(c->blocks[k]);
        size_t n = pick_size(&c->rng);
        c->blocks[k] = xmalloc(n);
        c->sizes[k] = n;
        block_fill(c->blocks[k], n);
    }
    if (++c->generation < g_generations) {
        pthread_t t;
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &a, generation, c) != 0) { perror("pthread_create"); _exit(2); }
        pthread_attr_destroy(&a);
        return NULL;
    }
    for (long k = 0; k < g_slots; k++) {
        block_check("larson", c->blocks[k], c->sizes[k]);
        free(c->blocks[k]);
    }
    pthread_mutex_lock(&g_lock);
    if (--g_chains_left == 0) pthread_cond_signal(&g_done);
    pthread_mutex_unlock(&g_lock);
    return NULL;
}

int main(int argc, char **argv) {
    int chains = (int)arg_long(argc, argv, 1, 4);
    g_generations = arg_long(argc, argv, 2, 40);
    g_ops = arg_long(argc, argv, 3, 50000);
    g_slots = arg_long(argc, argv, 4, 1000);
    long seed = arg_long(argc, argv, 5, 4141);
    chain_t *cs = aligned_alloc(128, (size_t)chains * sizeof *cs);
    if (!cs) { perror("aligned_alloc"); return 2; }
    memset(cs, 0, (size_t)chains * sizeof *cs);
    /* The initial arrays are filled by the main thread: the first generation's frees are remote. */
    for (int i = 0; i < chains; i++) {
        rng_seed(&cs[i].rng, (uint64_t)seed + (uint64_t)i);
        cs[i].blocks = xmalloc(sizeof(void *) * (size_t)g_slots);
        cs[i].sizes = xmalloc(sizeof(size_t) * (size_t)g_slots);
        for (long k = 0; k < g_slots; k++) {
            size_t n = pick_size(&cs[i].rng);
            cs[i].blocks[k] = xmalloc(n);
            cs[i].sizes[k] = n;
            block_fill(cs[i].blocks[k], n);
        }
    }
    g_chains_left = chains;
    double t0 = now_seconds();
    for (int i = 0; i < chains; i++) {
        pthread_t t;
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &a, generation, &cs[i]) != 0) { perror("pthread_create"); return 2; }
        pthread_attr_destroy(&a);
    }
    pthread_mutex_lock(&g_lock);
    while (g_chains_left > 0) pthread_cond_wait(&g_done, &g_lock);
    pthread_mutex_unlock(&g_lock);
    double t1 = now_seconds();
    long long ops = (long long)chains * g_generations * g_ops;
    print_result("larson", chains, ops, t1 - t0, rss_kb(), "ops_per_sec=%.0f generations=%ld",
                 ops / (t1 - t0), g_generations);
    return 0;
}
