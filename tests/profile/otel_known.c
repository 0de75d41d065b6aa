/* Known allocations for the OpenTelemetry probe test (tests/otel_probes.rs): ROUNDS rounds of
 * COUNT blocks of mixed sizes (16 B to 4 KB), each round freed, then four huge blocks (their own
 * mappings), one of them grown by realloc until it moves. Prints the bytes it asked for. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define COUNT 4096
#define ROUNDS 8

int main(void) {
    static void *blocks[COUNT];
    unsigned long total = 0;
    for (int r = 0; r < ROUNDS; r++) {
        for (int i = 0; i < COUNT; i++) {
            size_t size = 16 + (size_t)((i * 7919 + r * 104729) % 4000);
            blocks[i] = malloc(size);
            if (!blocks[i])
                return 1;
            memset(blocks[i], r, size);
            total += size;
        }
        for (int i = 0; i < COUNT; i++)
            free(blocks[i]);
    }
    for (int i = 0; i < 4; i++) {
        size_t size = (size_t)(3 + i) << 20;
        char *p = malloc(size);
        if (!p)
            return 1;
        p[0] = 1;
        total += size;
        if (i == 3) {
            /* Grown far past its mapping. If it moves, the probes say so as a free of the old
             * address and an allocation at the new one of the sample's first size. */
            char *q = realloc(p, (size_t)64 << 20);
            if (!q)
                return 1;
            if (q != p)
                total += size;
            p = q;
        }
        free(p);
    }
    printf("allocated %lu\n", total);
    return 0;
}
