/* A cache beside a leak, for `sampalloc trend`. Over STEPS steps (argv[1], default 400) of
 * equal allocation volume:
 *   cache_insert  fills a cache of 768 entries of 64 KiB (48 MiB) during the first quarter,
 *                 then only replaces entries (8 a step, chosen at random): its live bytes level
 *   leak_record   leaks 16 MiB in 1 KiB blocks, the same amount every step: linear growth
 * argv[2]: microseconds to sleep each step (default 0), to spread the run out in time. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ENTRIES 768
#define ENTRY (64 << 10)
#define PER_STEP 8

static char *cache[ENTRIES];
void *volatile sink;

__attribute__((noinline)) char *cache_insert(unsigned tag) {
  char *p = malloc(ENTRY);
  p[0] = (char)tag;
  p[ENTRY - 1] = (char)tag;
  return p;
}

__attribute__((noinline)) void leak_record(size_t bytes) {
  for (size_t done = 0; done < bytes; done += 1024) {
    char *p = malloc(1024);
    p[0] = 1;
    sink = p;
  }
}

int main(int argc, char **argv) {
  long steps = argc > 1 ? atol(argv[1]) : 400;
  long pause = argc > 2 ? atol(argv[2]) : 0;
  if (steps < 8) return 2;
  long fill_steps = steps / 4;
  size_t leak_per_step = ((size_t)16 << 20) / (size_t)steps;
  unsigned filled = 0, seed = 12345;
  for (long s = 0; s < steps; s++) {
    if (s < fill_steps) {
      unsigned target = (unsigned)((s + 1) * ENTRIES / fill_steps);
      while (filled < target) cache[filled] = cache_insert(filled), filled++;
    } else {
      for (int k = 0; k < PER_STEP; k++) {
        seed = seed * 1103515245u + 12345u;
        unsigned i = (seed >> 8) % ENTRIES;
        free(cache[i]);
        cache[i] = cache_insert(i);
      }
    }
    leak_record(leak_per_step);
    if (pause > 0) usleep((useconds_t)pause);
  }
  printf("cache_and_leak done\n");
  return 0;
}
