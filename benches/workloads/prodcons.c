/* prodcons.c — producer/consumer: every free is remote.
 *
 * Usage: prodcons [pairs=2] [items_per_producer=3000000] [ring=16384]
 * `pairs` producer threads each allocate blocks of mixed small sizes (16–512 B), fill them and
 * push (pointer, size) through a lock-free single-producer/single-consumer ring (capacity `ring`)
 * to their own consumer thread, which checks the fill and frees the block. So every free happens
 * on a thread other than the allocating one, and the allocator must get freed memory back to the
 * producer side without growing: peak RSS shows whether it does (at most pairs × ring blocks are
 * ever live, ≈ 8.5 MiB with the defaults). A full or empty ring makes the thread yield.
 * One op = one malloc (by a producer) + its free (by a consumer).
 * Prints one RESULT line (see common.h). Build: cc -O2 -pthread prodcons.c -o prodcons
 */
#include "common.h"
#include <sched.h>
#include <stdatomic.h>

typedef struct { void *p; size_t n; } item_t;

typedef struct {
    _Alignas(64) _Atomic size_t head; /* next slot the consumer reads */
    _Alignas(64) _Atomic size_t tail; /* next slot the producer writes */
    _Alignas(64) item_t *slots;
    size_t mask;
    long items;
    int id;
} ring_t;

static void *producer(void *arg) {
    ring_t *r = arg;
    rng_t rng;
    rng_seed(&rng, 77 + (uint64_t)r->id);
    for (long i = 0; i < r->items; i++) {
        size_t n = rng_range(&rng, 16, 512);
        void *p = xmalloc(n);
        block_fill(p, n);
        size_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
        while (t - atomic_load_explicit(&r->head, memory_order_acquire) > r->mask) sched_yield();
        r->slots[t & r->mask] = (item_t){p, n};
        atomic_store_explicit(&r->tail, t + 1, memory_order_release);
    }
    return NULL;
}

static void *consumer(void *arg) {
    ring_t *r = arg;
    for (long i = 0; i < r->items; i++) {
        size_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
        while (atomic_load_explicit(&r->tail, memory_order_acquire) == h) sched_yield();
        item_t it = r->slots[h & r->mask];
        atomic_store_explicit(&r->head, h + 1, memory_order_release);
        block_check("prodcons", it.p, it.n);
        free(it.p);
    }
    return NULL;
}

int main(int argc, char **argv) {
    int pairs = (int)arg_long(argc, argv, 1, 2);
    long items = arg_long(argc, argv, 2, 3000000);
    size_t cap = (size_t)arg_long(argc, argv, 3, 16384);
    if (cap & (cap - 1)) { fprintf(stderr, "ring must be a power of two\n"); return 1; }
    ring_t *rings = aligned_alloc(64, sizeof(ring_t) * (size_t)pairs);
    pthread_t *ts = xmalloc(sizeof(pthread_t) * 2 * (size_t)pairs);
    for (int i = 0; i < pairs; i++) {
        memset(&rings[i], 0, sizeof rings[i]);
        rings[i].slots = xmalloc(sizeof(item_t) * cap);
        memset(rings[i].slots, 0, sizeof(item_t) * cap);
        rings[i].mask = cap - 1;
        rings[i].items = items;
        rings[i].id = i;
    }
    long base = rss_kb();
    double t0 = now_seconds();
    for (int i = 0; i < pairs; i++) {
        pthread_create(&ts[2 * i], NULL, consumer, &rings[i]);
        pthread_create(&ts[2 * i + 1], NULL, producer, &rings[i]);
    }
    for (int i = 0; i < 2 * pairs; i++) pthread_join(ts[i], NULL);
    double t1 = now_seconds();
    long long ops = (long long)pairs * items;
    print_result("prodcons", 2 * pairs, ops, t1 - t0, rss_kb(), "ops_per_sec=%.0f base_rss_kb=%ld",
                 ops / (t1 - t0), base);
    return 0;
}
