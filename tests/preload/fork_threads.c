/* Forks from a process whose threads are allocating; each child allocates, frees, starts a
 * thread of its own and exits cleanly. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile int stop;

static void *churn(void *arg) {
  unsigned x = (unsigned)(size_t)arg;
  void *slots[128] = {0};
  while (!stop) {
    x = x * 1103515245 + 12345;
    unsigned i = (x >> 8) % 128;
    free(slots[i]);
    size_t n = (x >> 16) % 3 == 0 ? (x >> 4) % 300000 : (x >> 16) % 2000;
    slots[i] = malloc(n);
    if (slots[i]) memset(slots[i], 1, n < 64 ? n : 64);
  }
  for (int i = 0; i < 128; i++) free(slots[i]);
  return NULL;
}

static void *child_thread(void *arg) {
  char *p = malloc(1000);
  strcpy(p, arg);
  return p;
}

static int child(void) {
  void *v[1000];
  for (int r = 0; r < 5; r++) {
    for (int i = 0; i < 1000; i++) v[i] = malloc((size_t)(i * 37 % 9000));
    for (int i = 0; i < 1000; i++) free(v[i]);
  }
  void *big = malloc(8 << 20);
  memset(big, 3, 8 << 20);
  free(big);
  pthread_t t;
  if (pthread_create(&t, NULL, child_thread, "hello")) return 3;
  void *res;
  pthread_join(t, &res);
  int ok = strcmp(res, "hello") == 0;
  free(res);
  return ok ? 0 : 4;
}

int main(void) {
  enum { T = 4 };
  pthread_t t[T];
  for (int i = 0; i < T; i++)
    if (pthread_create(&t[i], NULL, churn, (void *)(size_t)(i + 1))) return 3;
  for (int f = 0; f < 40; f++) {
    pid_t pid = fork();
    if (pid < 0) return 5;
    if (pid == 0) _exit(child());
    int st;
    if (waitpid(pid, &st, 0) != pid) return 6;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      fprintf(stderr, "child %d failed: status 0x%x\n", f, st);
      return 1;
    }
  }
  /* One child that returns through exit() so that its atexit handlers run too. */
  pid_t pid = fork();
  if (pid == 0) exit(child());
  int st;
  waitpid(pid, &st, 0);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) return 1;
  stop = 1;
  for (int i = 0; i < T; i++) pthread_join(t[i], NULL);
  printf("fork ok\n");
  return 0;
}
