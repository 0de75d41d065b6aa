/* Threads that allocate, grow (realloc, huge blocks moved by mremap) and free blocks that start
 * with a marker, while the profiler dumps with prof_peek on (lg_prof_interval): the dumps read
 * sampled blocks that other threads are freeing or moving (tests/peek.rs). Usage:
 * peek_churn SECONDS */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define THREADS 4
#define SLOTS 64
#define MARKER "PEEK-CHURN"

static double seconds;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static size_t pick(uint64_t *s) {
  static const size_t sizes[] = {24, 200, 4096, 70000, 300000, 3 << 20};
  *s = *s * 6364136223846793005ull + 1442695040888963407ull;
  return sizes[(*s >> 33) % (sizeof sizes / sizeof sizes[0])];
}

static void mark(char *p, size_t n) {
  if (n >= sizeof MARKER) memcpy(p, MARKER, sizeof MARKER);
}

static void *work(void *arg) {
  uint64_t s = (uintptr_t)arg * 0x9e3779b97f4a7c15ull + 1;
  char *slot[SLOTS] = {0};
  size_t size[SLOTS] = {0};
  double end = now() + seconds;
  unsigned long ops = 0;
  while (now() < end) {
    for (int k = 0; k < 256; k++, ops++) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      int i = (s >> 40) % SLOTS;
      if (slot[i] && (s >> 20) % 3 == 0) {
        size_t n = size[i] * 2;
        char *q = realloc(slot[i], n);
        if (!q) abort();
        memset(q + size[i], 'z', n - size[i]);
        slot[i] = q;
        size[i] = n;
      } else {
        free(slot[i]);
        size[i] = pick(&s);
        slot[i] = malloc(size[i]);
        if (!slot[i]) abort();
        memset(slot[i], 'z', size[i] < 512 ? size[i] : 512);
        mark(slot[i], size[i]);
      }
      if (size[i] > (16u << 20)) {
        free(slot[i]);
        slot[i] = 0;
        size[i] = 0;
      }
    }
  }
  for (int i = 0; i < SLOTS; i++) free(slot[i]);
  return (void *)ops;
}

int main(int argc, char **argv) {
  seconds = argc > 1 ? atof(argv[1]) : 2.0;
  pthread_t t[THREADS];
  for (uintptr_t i = 0; i < THREADS; i++) pthread_create(&t[i], 0, work, (void *)(i + 1));
  unsigned long total = 0;
  for (int i = 0; i < THREADS; i++) {
    void *ops;
    pthread_join(t[i], &ops);
    total += (unsigned long)ops;
  }
  /* Keep a few marked blocks live for the final dump. */
  for (int i = 0; i < 200; i++) mark(malloc(4096), 4096);
  printf("peek churn done %lu ops\n", total);
  return 0;
}
