/* Workloads for the dump triggers. argv[1]:
 *   churn        allocate and free 256 MiB in 64 KiB blocks (interval dumps)
 *   grow         keep 12 blocks of 8 MiB, one after another (high-water dumps)
 *   signal DIR   print "ready <pid>", then allocate a little every few milliseconds until a
 *                signal dump appears in DIR (at most 20 s), and a little more after it
 *   leak         leak 4 MiB from leaky_function (leak summary) and exit */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void *volatile sink;

__attribute__((noinline)) void churn(size_t total) {
  for (size_t done = 0; done < total; done += 64 << 10) {
    sink = malloc(64 << 10);
    free(sink);
  }
}

__attribute__((noinline)) void grow(void) {
  for (int i = 0; i < 12; i++) {
    char *p = malloc(8 << 20);
    memset(p, 1, 8 << 20);
    sink = p;
    churn(2 << 20); /* ticks serve the pending dump */
  }
}

static int has_signal_dump(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return 0;
  struct dirent *e;
  int found = 0;
  while ((e = readdir(d)) != NULL)
    if (strstr(e->d_name, ".s.heap")) found = 1;
  closedir(d);
  return found;
}

__attribute__((noinline)) void leaky_function(void) {
  for (int i = 0; i < 4096; i++) {
    char *p = malloc(1024);
    p[0] = 1;
    sink = p;
  }
}

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  if (!strcmp(argv[1], "churn")) {
    churn((size_t)256 << 20);
  } else if (!strcmp(argv[1], "grow")) {
    grow();
  } else if (!strcmp(argv[1], "signal") && argc == 3) {
    churn(4 << 20);
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    struct timespec ts = {0, 5 * 1000 * 1000};
    int i = 0;
    for (; i < 4000 && !has_signal_dump(argv[2]); i++) {
      churn(256 << 10);
      nanosleep(&ts, NULL);
    }
    if (i == 4000) {
      fprintf(stderr, "no signal dump appeared\n");
      return 1;
    }
    churn(4 << 20);
  } else if (!strcmp(argv[1], "leak")) {
    churn(4 << 20);
    leaky_function();
  } else {
    return 2;
  }
  printf("triggers %s ok\n", argv[1]);
  return 0;
}
