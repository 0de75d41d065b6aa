/* A small shared library that allocates in its constructor and frees in its destructor; the
 * dlopen test loads and unloads it many times. */
#include <stdlib.h>
#include <string.h>

static char *buffers[16];

__attribute__((constructor)) static void plugin_init(void) {
  for (int i = 0; i < 16; i++) {
    buffers[i] = malloc(64 << i);
    memset(buffers[i], i, 64 << i);
  }
}

__attribute__((destructor)) static void plugin_fini(void) {
  for (int i = 0; i < 16; i++) free(buffers[i]);
}

/* Returns a malloc'd copy of the checksum string for the caller to free. */
char *plugin_work(int n) {
  unsigned long sum = 0;
  for (int i = 0; i < 16; i++) sum += (unsigned char)buffers[i][(64 << i) - 1];
  char *s = malloc(32 + n);
  memset(s, 'x', 31 + n);
  s[31 + n] = 0;
  s[0] = (char)('0' + sum % 10);
  return s;
}
