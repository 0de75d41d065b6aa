/* layout.c — prints where a fixed sequence of allocations lands, as offsets within the
 * allocator's 4 MiB segments (which absorb address-space randomisation): some blocks stay live,
 * some are freed, of small, large and page-aligned sizes. Two runs that print the same
 * offsets placed every block alike. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static void show(const char *what, void *p) {
    if (!p) {
        printf("%s: out of memory\n", what);
        exit(1);
    }
    printf("%s %#lx\n", what, (unsigned long)((uintptr_t)p & ((1u << 22) - 1)));
}

int main(void) {
    static const size_t sizes[] = {16, 24, 48, 64, 100, 200, 256, 500, 1024, 3000, 4096, 20000, 100000};
    void *live[sizeof sizes / sizeof sizes[0]];
    char what[64];
    for (int round = 0; round < 3; round++) {
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            snprintf(what, sizeof what, "malloc(%zu) round %d", sizes[i], round);
            void *p = malloc(sizes[i]);
            show(what, p);
            if (round == 1) {
                live[i] = p;
            } else {
                free(p);
            }
        }
    }
    void *aligned = NULL;
    if (posix_memalign(&aligned, 4096, 5000) != 0) aligned = NULL;
    show("posix_memalign(4096, 5000)", aligned);
    free(aligned);
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) free(live[i]);
    printf("layout ok\n");
    return 0;
}
