/* demo/leaky.c: a program that leaks in three places among churn, for `./demo.sh` and the
 * `sampalloc run` test. The leaks: about 8 MiB, 4 MiB and 1 MiB. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOINLINE __attribute__((noinline))

void *volatile kept[64 << 10];
static int nkept;

NOINLINE void leak_request_buffers(void) {
  for (int i = 0; i < 2048; i++) {
    char *p = malloc(4096);
    memset(p, 1, 64);
    kept[nkept++] = p;
  }
}

NOINLINE void leak_session_cache(void) {
  for (int i = 0; i < 20000; i++) {
    char *p = malloc(200);
    memset(p, 2, 16);
    kept[nkept++] = p;
  }
}

NOINLINE void leak_config_strings(void) {
  char line[1000];
  memset(line, 'x', sizeof line - 1);
  line[sizeof line - 1] = 0;
  for (int i = 0; i < 1000; i++) {
    char *p = malloc(sizeof line);
    memcpy(p, line, sizeof line);
    kept[nkept++] = p;
  }
}

NOINLINE void churn(int rounds) {
  void *held[64];
  for (int r = 0; r < rounds; r++) {
    for (int j = 0; j < 64; j++) held[j] = malloc(16 + (r * 7 + j * 131) % 5000);
    for (int j = 0; j < 64; j++) free(held[j]);
  }
}

int main(void) {
  churn(2000);
  leak_request_buffers();
  churn(2000);
  leak_session_cache();
  leak_config_strings();
  churn(2000);
  printf("leaky: done; about 13 MiB were never freed, in three functions\n");
  return 0;
}
