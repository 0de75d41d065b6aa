/* Allocations made through library code built without frame pointers: a qsort comparator that
 * allocates (called from inside glibc's qsort), strdup (glibc calls malloc), and zlib's
 * deflateInit2_ (zalloc -> malloc) called many times without deflateEnd. All of it is leaked,
 * so the final profile shows the stacks. Link with -lz. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define NOINLINE __attribute__((noinline, noclone))

void *volatile sink;
static long compares;

/* Compares ints, leaking a 64-byte block per comparison. */
NOINLINE int leaky_compare(const void *a, const void *b) {
  char *p = malloc(64);
  compares++;
  p[0] = 1;
  sink = p;
  int x = *(const int *)a, y = *(const int *)b;
  return (x > y) - (x < y);
}

NOINLINE void sort_with_leaky_comparator(int rounds) {
  enum { N = 2000 };
  static int v[N];
  for (int r = 0; r < rounds; r++) {
    for (int i = 0; i < N; i++) v[i] = (i * 7919 + r) % N;
    qsort(v, N, sizeof v[0], leaky_compare);
    for (int i = 1; i < N; i++)
      if (v[i - 1] > v[i]) abort();
  }
}

NOINLINE void duplicate_strings(int n) {
  char text[128];
  memset(text, 'x', sizeof text - 1);
  text[sizeof text - 1] = 0;
  for (int i = 0; i < n; i++) {
    text[i % 100] = (char)('a' + i % 26);
    sink = strdup(text);
  }
}

NOINLINE void start_deflaters(int n) {
  for (int i = 0; i < n; i++) {
    z_stream *s = calloc(1, sizeof *s);
    if (deflateInit2(s, 6, Z_DEFLATED, 15, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
      fprintf(stderr, "deflateInit2 failed\n");
      exit(1);
    }
    sink = s; /* never deflateEnd */
  }
}

/* A thread's first sample point is drawn at its first tick (1 MiB allocated): get past it. The
 * blocks go through a volatile store, so the compiler cannot drop the malloc/free pairs. */
NOINLINE void warm_up(void) {
  for (int i = 0; i < 256; i++) {
    sink = malloc(16 << 10);
    free(sink);
  }
}

int main(void) {
  warm_up();
  sort_with_leaky_comparator(8);
  duplicate_strings(50000);
  start_deflaters(100);
  printf("compares %ld\n", compares);
  printf("libs ok\n");
  return 0;
}
