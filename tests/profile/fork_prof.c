/* Four threads allocate with profiling on while the main thread forks 20 times. Each child
 * allocates (leaking a little), and leaves through exit(0) so that its final profile is
 * written. Prints "child <pid>" for each child. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile int stop;
void *volatile sink;

static void *churn(void *arg) {
  unsigned x = (unsigned)(size_t)arg;
  void *slots[128] = {0};
  while (!stop) {
    x = x * 1103515245 + 12345;
    unsigned i = (x >> 8) % 128;
    free(slots[i]);
    size_t n = (x >> 16) % 5 == 0 ? (x >> 4) % 100000 : (x >> 16) % 2000;
    slots[i] = malloc(n);
    if (slots[i]) memset(slots[i], 1, n < 64 ? n : 64);
  }
  for (int i = 0; i < 128; i++) free(slots[i]);
  return NULL;
}

__attribute__((noinline)) static void child_work(void) {
  void *v[1000];
  for (int r = 0; r < 4; r++) {
    for (int i = 0; i < 1000; i++) v[i] = malloc((size_t)(i * 37 % 9000));
    for (int i = 0; i < 1000; i++) free(v[i]);
  }
  for (int i = 0; i < 2000; i++) sink = malloc(1000); /* leaked: 2 MB */
}

int main(void) {
  enum { T = 4, FORKS = 20 };
  pthread_t t[T];
  printf("parent %d\n", (int)getpid());
  for (int i = 0; i < T; i++)
    if (pthread_create(&t[i], NULL, churn, (void *)(size_t)(i + 1))) return 3;
  for (int f = 0; f < FORKS; f++) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) return 5;
    if (pid == 0) {
      child_work();
      exit(0);
    }
    printf("child %d\n", (int)pid);
    int st;
    if (waitpid(pid, &st, 0) != pid) return 6;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      fprintf(stderr, "child %d failed: status 0x%x\n", f, st);
      return 1;
    }
  }
  stop = 1;
  for (int i = 0; i < T; i++) pthread_join(t[i], NULL);
  printf("fork ok\n");
  return 0;
}
