/* batchq.c — remote frees through a queue of batches: producers allocate, consumers free.
 *
 * Usage: batchq [pairs=2] [objects_per_producer=8000000] [size=64] [batch=4096] [odd=0]
 * `pairs` producer threads each allocate `objects_per_producer` objects of `size` bytes, fill
 * them, and hand them over in batches of `batch` pointers through one mutex-protected queue (at
 * most 64 batches waiting; a full queue makes producers wait, an empty one consumers); `pairs`
 * consumer threads take batches, check every object's fill and free it. So every object is freed
 * by a thread other than the one that allocated it, in bulk, as in a server whose workers hand
 * requests to a pool (the shape of mimalloc-bench's xmalloc-test, which counts frees in a fixed
 * time; this one does a fixed amount of work). One op = one malloc + its free on another thread.
 * With `odd` > 0, one object in `odd` (at random, the same positions under every allocator) is
 * twice `size`: a queue of mostly one size, as real ones are. The counts at which a producer
 * refills its cache and a consumer flushes its own then stop matching batch by batch.
 * Reports: seconds, peak_rss_kb, ops_per_sec.
 * Prints one RESULT line (see common.h). Build: cc -O2 -pthread batchq.c -o batchq
 */
#include "common.h"

#define QUEUE 64

typedef struct {
    size_t n;
    void *objects[];
} batch_t;

static long g_pairs, g_objects, g_batch, g_odd;
static size_t g_size;

static batch_t *g_queue[QUEUE];
static int g_head, g_count, g_done;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_not_full = PTHREAD_COND_INITIALIZER, g_not_empty = PTHREAD_COND_INITIALIZER;

static void put(batch_t *b) {
    pthread_mutex_lock(&g_lock);
    while (g_count == QUEUE) pthread_cond_wait(&g_not_full, &g_lock);
    g_queue[(g_head + g_count) % QUEUE] = b;
    g_count++;
    pthread_cond_signal(&g_not_empty);
    pthread_mutex_unlock(&g_lock);
}

/* The next batch, or NULL once the producers are done and the queue is empty. */
static batch_t *take(void) {
    pthread_mutex_lock(&g_lock);
    while (g_count == 0 && !g_done) pthread_cond_wait(&g_not_empty, &g_lock);
    batch_t *b = NULL;
    if (g_count > 0) {
        b = g_queue[g_head];
        g_head = (g_head + 1) % QUEUE;
        g_count--;
        pthread_cond_signal(&g_not_full);
    }
    pthread_mutex_unlock(&g_lock);
    return b;
}

static void *producer(void *arg) {
    rng_t rng;
    rng_seed(&rng, (uint64_t)(uintptr_t)arg);
    for (long made = 0; made < g_objects;) {
        long n = g_objects - made < g_batch ? g_objects - made : g_batch;
        batch_t *b = xmalloc(sizeof *b + (size_t)n * sizeof(void *));
        b->n = (size_t)n;
        for (long i = 0; i < n; i++) {
            int odd = g_odd > 0 && rng_next(&rng) % (uint64_t)g_odd == 0;
            b->objects[i] = xmalloc(odd ? 2 * g_size : g_size);
            block_fill(b->objects[i], g_size);
        }
        made += n;
        put(b);
    }
    return NULL;
}

static void *consumer(void *arg) {
    (void)arg;
    batch_t *b;
    while ((b = take())) {
        for (size_t i = 0; i < b->n; i++) {
            block_check("free", b->objects[i], g_size);
            free(b->objects[i]);
        }
        free(b);
    }
    return NULL;
}

int main(int argc, char **argv) {
    g_pairs = arg_long(argc, argv, 1, 2);
    g_objects = arg_long(argc, argv, 2, 8000000);
    g_size = (size_t)arg_long(argc, argv, 3, 64);
    g_batch = arg_long(argc, argv, 4, 4096);
    g_odd = arg_long(argc, argv, 5, 0);
    if (g_pairs < 1 || g_pairs > 64 || g_objects < 1 || g_size < 16 || g_batch < 1 || g_odd < 0) {
        fprintf(stderr, "usage: batchq [pairs 1-64] [objects>0] [size>=16] [batch>0] [odd>=0]\n");
        return 1;
    }
    pthread_t prod[64], cons[64];
    double start = now_seconds();
    for (long i = 0; i < g_pairs; i++) pthread_create(&cons[i], NULL, consumer, NULL);
    for (long i = 0; i < g_pairs; i++) pthread_create(&prod[i], NULL, producer, (void *)(i + 1));
    for (long i = 0; i < g_pairs; i++) pthread_join(prod[i], NULL);
    pthread_mutex_lock(&g_lock);
    g_done = 1;
    pthread_cond_broadcast(&g_not_empty);
    pthread_mutex_unlock(&g_lock);
    for (long i = 0; i < g_pairs; i++) pthread_join(cons[i], NULL);
    double secs = now_seconds() - start;
    long long ops = (long long)g_pairs * g_objects;
    print_result("batchq", (int)(2 * g_pairs), ops, secs, rss_kb(), "ops_per_sec=%.0f", ops / secs);
    return 0;
}
