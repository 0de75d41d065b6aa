/* bigloop.c — multi-MiB blocks freed and allocated again in a loop (a guard for decay changes:
 * memory freed and reused at once must not be purged and faulted back in).
 *
 * One thread keeps 20 slots of 5–25 MiB blocks; each step frees one slot and allocates a new
 * block, writing every page of it. Page faults (perf stat -e page-faults, or /usr/bin/time -v)
 * then count what the allocator made the program fault in again.
 *   bigloop [steps=2000] [slots=20] [min_mib=5] [max_mib=25]
 */
#include "common.h"

int main(int argc, char **argv) {
    long steps = arg_long(argc, argv, 1, 2000);
    long slots = arg_long(argc, argv, 2, 20);
    size_t min_bytes = (size_t)arg_long(argc, argv, 3, 5) << 20;
    size_t max_bytes = (size_t)arg_long(argc, argv, 4, 25) << 20;
    rng_t r;
    rng_seed(&r, 42);
    char **blocks = calloc((size_t)slots, sizeof *blocks);
    size_t *sizes = calloc((size_t)slots, sizeof *sizes);
    double start = now_seconds();
    for (long s = 0; s < steps; s++) {
        long i = (long)rng_range(&r, 0, (size_t)slots - 1);
        if (blocks[i]) {
            block_check("free", blocks[i], sizes[i]);
            free(blocks[i]);
        }
        sizes[i] = rng_range(&r, min_bytes, max_bytes);
        blocks[i] = xmalloc(sizes[i]);
        for (size_t k = 0; k < sizes[i]; k += 4096) blocks[i][k] = (char)k;
        block_fill(blocks[i], sizes[i]);
    }
    double secs = now_seconds() - start;
    long final = rss_kb();
    for (long i = 0; i < slots; i++) free(blocks[i]);
    print_result("bigloop", 1, steps, secs, final, NULL);
    return 0;
}
