/* Allocates and touches 64 MiB in large blocks (128 x 256 KiB, carved from segments) and huge
 * blocks (8 x 4 MiB, mappings of their own), keeps them live, then reads /proc/self/smaps and
 * prints, for the VMAs that hold any of its blocks: the AnonHugePages of those holding the
 * large blocks (seg_kb), the huge blocks (huge_kb) and both (mixed_kb: the kernel merges
 * neighbouring mappings with the same flags, as with `thp:always`, where segments and huge
 * blocks of whole huge pages are asked alike), and how many of those VMAs carry the `hg`
 * (MADV_HUGEPAGE) and `nh` (MADV_NOHUGEPAGE) flags.
 * With the argument `exit`, a thread allocates the large blocks, frees every other one and
 * exits (the last thread of its arena) before the smaps are read: what its exit gave back
 * (no huge blocks then: the kernel could merge their VMAs with the segments').
 * With `small`, only 4 large blocks (1 MiB) and no huge ones: a small program's heap. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NLARGE 128
#define NHUGE 8
static char *large[NLARGE], *huge[NHUGE];
static int nlarge = NLARGE, nhuge = NHUGE;

static int holds(char **blocks, int n, size_t size, unsigned long lo, unsigned long hi) {
    for (int i = 0; i < n; i++) {
        unsigned long b = (unsigned long)blocks[i];
        if (b && b < hi && b + size > lo)
            return 1;
    }
    return 0;
}

static void *alloc_large(void *half) {
    for (int i = 0; i < nlarge; i++) {
        large[i] = malloc(256 << 10);
        if (!large[i])
            exit(2);
        memset(large[i], i + 1, 256 << 10);
    }
    for (int i = 0; half && i < nlarge; i += 2) {
        free(large[i]);
        large[i] = NULL;
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "small")) {
        nlarge = 4;
        nhuge = 0;
    }
    if (argc > 1 && !strcmp(argv[1], "exit")) {
        pthread_t t;
        nhuge = 0;
        if (pthread_create(&t, NULL, alloc_large, argv[1]) || pthread_join(t, NULL))
            return 4;
    } else {
        alloc_large(NULL);
    }
    for (int i = 0; i < nhuge; i++) {
        huge[i] = malloc(4 << 20);
        if (!huge[i])
            return 2;
        memset(huge[i], i + 1, 4 << 20);
    }
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f)
        return 3;
    char line[4096];
    long seg_kb = 0, huge_kb = 0, mixed_kb = 0;
    int vmas = 0, hg = 0, nh = 0, in_seg = 0, in_huge = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        long kb;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            in_seg = holds(large, NLARGE, 256 << 10, lo, hi);
            in_huge = holds(huge, NHUGE, 4 << 20, lo, hi);
            vmas += in_seg || in_huge;
        } else if (sscanf(line, "AnonHugePages: %ld kB", &kb) == 1) {
            if (in_seg && in_huge)
                mixed_kb += kb;
            else if (in_seg)
                seg_kb += kb;
            else if (in_huge)
                huge_kb += kb;
        } else if (!strncmp(line, "VmFlags:", 8) && (in_seg || in_huge)) {
            hg += strstr(line, " hg") != NULL;
            nh += strstr(line, " nh") != NULL;
        }
    }
    fclose(f);
    printf("vmas=%d seg_kb=%ld huge_kb=%ld mixed_kb=%ld hg=%d nh=%d\n", vmas, seg_kb, huge_kb,
           mixed_kb, hg, nh);
    return 0;
}
