/* Three leak sites of known sizes among heavy churn that is all freed.
 *
 * Prints "site <name> <address> <objects> <size>" for each leak function, so that a reader of
 * the profile can attribute rows to them (the function's size comes from `nm -S`), then
 * leaks, interleaved with churn, and exits 0 (the final profile is written at exit).
 * argv[1]: mebibytes leaked per site (default 12). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOINLINE __attribute__((noinline, noclone))

void *volatile sink;

/* A small deterministic generator: the program is the same on every run, only the sampler's
 * seed differs. */
static unsigned long rng = 88172645463325252UL;
static unsigned long next(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

NOINLINE void leak_small(size_t n) {
  for (size_t i = 0; i < n; i++) {
    char *p = malloc(48);
    p[0] = (char)i;
    sink = p;
  }
}

NOINLINE void leak_medium(size_t n) {
  for (size_t i = 0; i < n; i++) {
    char *p = malloc(1000);
    p[0] = (char)i;
    sink = p;
  }
}

NOINLINE void leak_large(size_t n) {
  for (size_t i = 0; i < n; i++) {
    char *p = malloc(64 << 10);
    p[0] = (char)i;
    sink = p;
  }
}

/* Mixed sizes (the leak sizes among them), all freed. */
NOINLINE void churn(size_t rounds) {
  enum { SLOTS = 256 };
  static void *slots[SLOTS];
  for (size_t r = 0; r < rounds; r++) {
    unsigned long x = next();
    unsigned i = x % SLOTS;
    free(slots[i]);
    size_t size;
    switch ((x >> 8) % 8) {
    case 0: size = 48; break;
    case 1: size = 1000; break;
    case 2: size = 16 + (x >> 16) % 256; break;
    case 3: size = 256 + (x >> 16) % 4096; break;
    case 4: size = 4096 + (x >> 16) % 60000; break;
    case 5: size = (x >> 16) % 40 == 0 ? 64 << 10 : 32; break;
    default: size = 8 + (x >> 16) % 120; break;
    }
    slots[i] = malloc(size);
    memset(slots[i], 1, size < 64 ? size : 64);
  }
  for (unsigned i = 0; i < SLOTS; i++) {
    free(slots[i]);
    slots[i] = NULL;
  }
}

int main(int argc, char **argv) {
  size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 12;
  size_t bytes = mib << 20;
  size_t n_small = bytes / 48, n_medium = bytes / 1000, n_large = bytes / (64 << 10);
  printf("site leak_small %p %zu 48\n", (void *)leak_small, n_small);
  printf("site leak_medium %p %zu 1000\n", (void *)leak_medium, n_medium);
  printf("site leak_large %p %zu 65536\n", (void *)leak_large, n_large);
  printf("site churn %p 0 0\n", (void *)churn);
  fflush(stdout);
  /* Warm up: a thread's first sample point is drawn at its first tick. */
  churn(20000);
  enum { PARTS = 16 };
  for (int k = 0; k < PARTS; k++) {
    leak_small(n_small / PARTS + (k < (int)(n_small % PARTS)));
    churn(20000);
    leak_medium(n_medium / PARTS + (k < (int)(n_medium % PARTS)));
    churn(20000);
    leak_large(n_large / PARTS + (k < (int)(n_large % PARTS)));
    churn(20000);
  }
  printf("leaks ok\n");
  return 0;
}
