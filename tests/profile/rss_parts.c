/* Makes RSS mostly one known kind, for `sampalloc explain` (tests/explain.rs).
 *
 * argv[1] is the mode, argv[2] the mebibytes of the main part (default 64):
 * - keep: that many bytes in 64-byte blocks, all kept (live data);
 * - fragment: the same blocks, then 15 of every 16 freed, so that every page keeps live ones
 *   (free in the allocator);
 * - mmap: an anonymous mapping of that size, touched, beside a few small blocks (outside
 *   malloc).
 * Every block is written, so its page is resident. Prints "<what> <bytes>" lines with the
 * truth: "live", "freed", "mapped". Exits 0 (the final profile is written at exit). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define BLOCK 64

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "keep";
  size_t bytes = (size_t)(argc > 2 ? atoi(argv[2]) : 64) << 20;
  if (strcmp(mode, "mmap") == 0) {
    char *m = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
      perror("mmap");
      return 1;
    }
    memset(m, 1, bytes);
    size_t live = 0;
    for (int i = 0; i < 100; i++) {
      char *p = malloc(100);
      memset(p, 2, 100);
      live += 100;
    }
    printf("mapped %zu\nlive %zu\n", bytes, live);
    return 0;
  }
  size_t n = bytes / BLOCK;
  char **blocks = malloc(n * sizeof *blocks);
  if (!blocks) {
    perror("malloc");
    return 1;
  }
  memset(blocks, 0, n * sizeof *blocks);
  for (size_t i = 0; i < n; i++) {
    blocks[i] = malloc(BLOCK);
    memset(blocks[i], 3, BLOCK);
  }
  size_t live = n * sizeof *blocks + n * BLOCK, freed = 0;
  if (strcmp(mode, "fragment") == 0) {
    for (size_t i = 0; i < n; i++) {
      if (i % 16 != 0) {
        free(blocks[i]);
        blocks[i] = NULL;
        freed += BLOCK;
      }
    }
    live -= freed;
  }
  printf("live %zu\nfreed %zu\n", live, freed);
  return 0;
}
