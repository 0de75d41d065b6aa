/* A steady allocator, for `sampalloc push`: for argv[1] milliseconds (default 2600), allocate
 * 128 KiB a millisecond in 4 KiB blocks from steady_alloc, keeping the last 1024 of them
 * (4 MiB live) and freeing the older ones: equal allocation in equal times, flat live bytes.
 * Behind on the clock (a slow tick, a busy machine), it catches up, so the volume follows time. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define RING 1024
#define BLOCK 4096
#define PER_MS 32

static char *ring[RING];

__attribute__((noinline)) char *steady_alloc(unsigned tag) {
  char *p = malloc(BLOCK);
  p[0] = (char)tag;
  return p;
}

static long elapsed_ms(const struct timespec *t0) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (t.tv_sec - t0->tv_sec) * 1000 + (t.tv_nsec - t0->tv_nsec) / 1000000;
}

int main(int argc, char **argv) {
  long duration = argc > 1 ? atol(argv[1]) : 2600;
  struct timespec t0, pause = {0, 500 * 1000};
  clock_gettime(CLOCK_MONOTONIC, &t0);
  unsigned long done = 0;
  for (;;) {
    long now = elapsed_ms(&t0);
    if (now >= duration) break;
    unsigned long due = (unsigned long)(now + 1) * PER_MS;
    for (; done < due; done++) {
      unsigned i = done % RING;
      free(ring[i]);
      ring[i] = steady_alloc((unsigned)done);
    }
    nanosleep(&pause, NULL);
  }
  printf("steady done %lu blocks\n", done);
  return 0;
}
