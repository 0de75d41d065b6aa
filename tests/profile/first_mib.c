/* Leaks made in a thread's first mebibyte of allocation. argv[1]:
 *   main     the main thread leaks 768 KiB in 1000-byte blocks first thing, then allocates and
 *            frees 8 MiB more
 *   threads  16 threads each leak 512 KiB in 1000-byte blocks and exit
 * Prints "leaked <bytes>". */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void *volatile sink;

__attribute__((noinline)) void early_leak(size_t bytes) {
  for (size_t done = 0; done + 1000 <= bytes; done += 1000) {
    char *p = malloc(1000);
    p[0] = 1;
    sink = p;
  }
}

static void *thread_main(void *arg) {
  (void)arg;
  early_leak(512 << 10);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 2) return 2;
  size_t leaked;
  if (!strcmp(argv[1], "main")) {
    early_leak(768 << 10);
    for (int i = 0; i < 128; i++) {
      sink = malloc(64 << 10);
      free(sink);
    }
    leaked = (768 << 10) / 1000 * 1000;
  } else if (!strcmp(argv[1], "threads")) {
    enum { T = 16 };
    pthread_t t[T];
    for (int i = 0; i < T; i++)
      if (pthread_create(&t[i], NULL, thread_main, NULL)) return 3;
    for (int i = 0; i < T; i++) pthread_join(t[i], NULL);
    leaked = (size_t)T * ((512 << 10) / 1000 * 1000);
  } else {
    return 2;
  }
  printf("leaked %zu\n", leaked);
  return 0;
}
