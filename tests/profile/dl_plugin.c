/* A small plugin that allocates in its constructor and in its functions, freeing some of it and
 * leaking the rest (so the profile keeps stacks into code that is later unloaded). */
#include <stdlib.h>
#include <string.h>

void *volatile plugin_sink;
static char *held[8];

__attribute__((constructor)) static void plugin_init(void) {
  for (int i = 0; i < 8; i++) {
    held[i] = malloc((size_t)100 << i);
    memset(held[i], i, (size_t)100 << i);
  }
  plugin_sink = malloc(300); /* leaked */
}

__attribute__((destructor)) static void plugin_fini(void) {
  for (int i = 0; i < 8; i++) free(held[i]);
}

__attribute__((noinline)) static char *plugin_block(size_t n) {
  char *p = malloc(n);
  memset(p, 'a', n);
  return p;
}

/* Allocates `rounds` blocks of mixed sizes, frees most of them, and returns one to the caller. */
char *plugin_work(int rounds) {
  for (int i = 0; i < rounds; i++) {
    char *p = plugin_block(16 + (size_t)(i * 97) % 3000);
    if (i % 7 == 0)
      plugin_sink = p; /* leaked */
    else
      free(p);
  }
  char *s = plugin_block(64);
  s[63] = 0;
  return s;
}
