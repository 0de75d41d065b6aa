/* dlopen / call / dlclose of a plugin 200 times while another thread allocates, under a small
 * sample interval. argv[1]: the plugin's path. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static volatile int stop;

static void *churn(void *arg) {
  (void)arg;
  void *slots[256] = {0};
  unsigned x = 1;
  while (!stop) {
    x = x * 1103515245 + 12345;
    unsigned i = (x >> 8) % 256;
    free(slots[i]);
    slots[i] = malloc((x >> 16) % 5000);
  }
  for (int i = 0; i < 256; i++) free(slots[i]);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 2) return 2;
  pthread_t t;
  if (pthread_create(&t, NULL, churn, NULL)) return 3;
  for (int i = 0; i < 200; i++) {
    void *h = dlopen(argv[1], RTLD_NOW | (i % 2 ? RTLD_LOCAL : RTLD_GLOBAL));
    if (!h) {
      fprintf(stderr, "dlopen: %s\n", dlerror());
      return 1;
    }
    char *(*work)(int) = (char *(*)(int))dlsym(h, "plugin_work");
    if (!work) {
      fprintf(stderr, "dlsym: %s\n", dlerror());
      return 1;
    }
    char *s = work(50 + i % 50);
    if (strlen(s) != 63) {
      fprintf(stderr, "bad plugin result\n");
      return 1;
    }
    free(s);
    if (dlclose(h)) {
      fprintf(stderr, "dlclose: %s\n", dlerror());
      return 1;
    }
  }
  stop = 1;
  pthread_join(t, NULL);
  printf("dlopen loop ok\n");
  return 0;
}
