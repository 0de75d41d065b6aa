/* Fork from a threaded process (no profiling needed): while four threads allocate and free, the
 * main thread forks; each child allocates and frees a little and exits. A child must never see
 * a block twice: before thread caches published their shortened stacks ahead of returning
 * blocks, about one fork in a thousand aborted with "free(): double free".
 * argv[1]: what children allocate: 0 small and large blocks up to 9000 bytes, 1 one 8 MiB
 * block, 2 large blocks of 20-300 KB. argv[2]: forks. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
static volatile int stop;
static int mode;
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
static int child(void) {
  if (mode == 0) {
    void *v[1000];
    for (int r = 0; r < 5; r++) {
      for (int i = 0; i < 1000; i++) v[i] = malloc((size_t)(i * 37 % 9000));
      for (int i = 0; i < 1000; i++) free(v[i]);
    }
  } else if (mode == 1) {
    void *big = malloc(8 << 20);
    memset(big, 3, 8 << 20);
    free(big);
  } else {
    void *v[200];
    for (int r = 0; r < 5; r++) {
      for (int i = 0; i < 200; i++) v[i] = malloc(20000 + (size_t)(i * 1237 % 280000));
      for (int i = 0; i < 200; i++) free(v[i]);
    }
  }
  return 0;
}
int main(int argc, char **argv) {
  if (argc != 3) return 2;
  int forks = atoi(argv[2]);
  mode = atoi(argv[1]);
  pthread_t t[4];
  for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, churn, (void *)(size_t)(i + 1));
  for (int f = 0; f < forks; f++) {
    pid_t pid = fork();
    if (pid == 0) _exit(child());
    int st;
    waitpid(pid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) { fprintf(stderr, "child %d failed: status 0x%x\n", f, st); return 1; }
  }
  stop = 1;
  for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
  printf("fork ok\n");
  return 0;
}
